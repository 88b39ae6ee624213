"""Hallo's weights as a distillation teacher (``--teacher hallo:DIR``), at tiny scale.

The Hallo family conditions on a face: the dataset keeps each video's face and lip boxes, and the
training conditions carry the face-locator features and audio-region masks built from them, with
Hallo's unconditional branch (no face-locator features) as the null condition.
"""

from __future__ import annotations

import json

import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.media.face import face_mask_image, lip_box_from_face, region_masks
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.training.conditioning import Conditioner
from avatar_cli.training.data import ClipDataset

from ..conftest import probe
from .synthetic import make_video

CLIP = 8
COMMON = ["--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def hallo(tmp_path_factory):
    """Tiny random-weight Hallo-family weights and a one-video dataset prepared with them."""
    root = tmp_path_factory.mktemp("hallo-teacher")
    weights = root / "hallo"
    AvatarModels.from_preset("tiny", family="hallo").save_pretrained(weights)
    video = make_video(root / "talk.mp4", 2.0, seed=7)
    with pytest.MonkeyPatch.context() as patch:  # no face detector, with or without the face extra
        patch.setattr("avatar_cli.media.face.detect_face", lambda image: None)
        assert main(["data", "prepare", str(video), "-o", str(root / "data"), "--weights", str(weights),
                     "--size", "64", *COMMON]) == 0
    return root, weights


def test_prepare_keeps_the_face_and_lip_boxes(hallo):
    root, _ = hallo
    entry = json.loads((root / "data" / "index.jsonl").read_text().splitlines()[0])
    # no face found: the whole frame, with Hallo's lip proportions
    assert entry["face_box"] == [0.0, 0.0, 64.0, 64.0]
    assert entry["lip_box"] == [round(v, 2) for v in lip_box_from_face((0.0, 0.0, 64.0, 64.0))]


def test_conditions_carry_the_face_locator_features_and_region_masks(hallo):
    root, weights = hallo
    models = AvatarModels.from_pretrained(weights)
    dataset = ClipDataset(root / "data", CLIP, models.denoising_unet.config.num_motion_frames)
    example = dataset.sample(torch.Generator().manual_seed(0))
    example["face_box"] = torch.tensor([[16.0, 8.0, 32.0, 40.0]])  # a face box the masks can show
    example["lip_box"] = torch.tensor([[24.0, 34.0, 16.0, 8.0]])
    conditioner = Conditioner(models, torch.device("cpu"), torch.float32)
    cond = conditioner(example)
    with torch.no_grad():
        expected = models.face_locator(face_mask_image((16.0, 8.0, 32.0, 40.0), 64)[None])
    assert cond.conditioning_features.shape == (1, expected.shape[1], CLIP, 8, 8)
    for f in range(CLIP):
        torch.testing.assert_close(cond.conditioning_features[:, :, f], expected)
    masks = region_masks((16.0, 8.0, 32.0, 40.0), (24.0, 34.0, 16.0, 8.0), 64, 8)
    assert set(cond.region_masks) == {"full", "face", "lip"}
    for name, levels in masks.items():
        assert [tuple(m.shape) for m in cond.region_masks[name]] == [(1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 1, 1)]
        for ours, level in zip(cond.region_masks[name], levels):
            torch.testing.assert_close(ours[0], level)
    null = conditioner.null(cond)
    assert null.conditioning_features is None and null.region_masks is cond.region_masks  # Hallo's null branch
    assert torch.count_nonzero(null.audio_embeds) == 0


def test_distill_osa_lcm_from_a_hallo_teacher_and_render_the_student(hallo, test_data, tmp_path):
    root, weights = hallo
    out = tmp_path / "student"
    assert main(["distill", "osa-lcm", "--teacher", f"hallo:{weights}", "--data", str(root / "data"), "-o", str(out),
                 "--max-steps", "2", "--clip-frames", str(CLIP), "--checkpoint-every", "0", "--cpu", "--json", "-q"]) == 0
    student = AvatarModels.from_pretrained(out / "weights")
    assert student.face_locator is not None and student.scheduler_config["prediction_type"] == "v_prediction"
    video = tmp_path / "talk.mp4"
    assert main(["render", str(test_data / "astronaut.png"), str(root / "talk.mp4"), "--weights",
                 str(out / "weights"), "--model", "osa-lcm", "--size", "64", "--no-face-embedding", "-o", str(video),
                 *COMMON]) == 0
    assert probe(video)["frames"] == 50


def test_teacher_option_checks(hallo, tmp_path, monkeypatch, capsys):
    root, weights = hallo
    data = str(root / "data")
    assert main(["distill", "fada", "--teacher", f"hallo:{weights}", "--data", data, "-o", str(tmp_path / "f"),
                 "--max-steps", "1", "--cpu", "-q"]) == 2
    assert "predicts v_prediction" in capsys.readouterr().err
    plain = tmp_path / "plain"
    AvatarModels.from_preset("tiny").save_pretrained(plain)
    assert main(["distill", "osa-lcm", "--teacher", f"hallo:{plain}", "--data", data, "-o", str(tmp_path / "o"),
                 "--cpu", "-q"]) == 2
    assert "holds no Hallo weights" in capsys.readouterr().err
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    assert main(["distill", "osa-lcm", "--teacher", "hallo", "--data", data, "-o", str(tmp_path / "o"),
                 "--cpu", "-q"]) == 2
    assert "avatar weights convert --from hallo" in capsys.readouterr().err
