"""`--model echomimic` / `--model echomimic-acc`: EchoMimic's files (tiny, in its key layout, written by
the test) -> download from an emulated hub -> convert -> load -> render; the face rule; the context
windows' averaging; random weights end to end.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.models.bundle import WHISPER_FILE, AvatarModels, random_whisper_checkpoint
from avatar_cli.models.presets import WHISPER_DIMS
from tests.conftest import ffmpeg, probe
from tests.hub import FakeHub, serving
from tests.models.test_echomimic import echomimic_states

REPO, COMMIT = "BadToBest/EchoMimic", "e" * 40
VAE_REPO, VAE_COMMIT = "stabilityai/sd-vae-ft-mse", "f" * 40


def _release_files(tmp: Path) -> dict[str, bytes]:
    """EchoMimic's acc release, tiny: the fixture's tensors in EchoMimic's key layout, split into its files."""
    states = echomimic_states()
    unet = states["denoising_unet"]
    parts = {"reference_unet.pth": states["reference_unet"], "face_locator.pth": states["face_locator"],
             "denoising_unet_acc.pth": {k: v for k, v in unet.items() if ".motion_modules." not in k},
             "motion_module_acc.pth": {k: v for k, v in unet.items() if ".motion_modules." in k},
             "audio_processor/whisper_tiny.pt": random_whisper_checkpoint(WHISPER_DIMS["tiny"], seed=4)}
    files = {}
    for name, state in parts.items():
        path = tmp / name.replace("/", "_")
        torch.save(state, path)
        files[name] = path.read_bytes()
    config = {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64], "layers_per_block": 1,
              "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 8, "cross_attention_dim": 768,
              "in_channels": 4, "out_channels": 4, "use_linear_projection": False}
    files["sd-image-variations-diffusers/unet/config.json"] = json.dumps(config).encode()
    return files


def _vae_files(tmp: Path) -> dict[str, bytes]:
    from diffusers import AutoencoderKL

    from avatar_cli.models.presets import preset

    with torch.random.fork_rng():
        torch.manual_seed(5)
        AutoencoderKL(**preset("tiny")["vae"]).save_pretrained(tmp / "vae")
    return {p.name: p.read_bytes() for p in (tmp / "vae").iterdir()}


@pytest.fixture()
def echo_hub(tmp_path, monkeypatch):
    files, vae = _release_files(tmp_path), _vae_files(tmp_path)
    hub = FakeHub()
    hub.add(REPO, COMMIT, files)
    hub.add(VAE_REPO, VAE_COMMIT, vae)
    lines = []
    for name, repo, commit, content in (("echomimic-acc", REPO, None, files), ("sd-vae-ft-mse", VAE_REPO, VAE_COMMIT, vae)):
        lines += [f"[{name}]", f'description = "{name}, small stand-in"', f'repo_id = "{repo}"',
                  f'revision = "{commit or "main"}"'] + (['revision_note = "no commit known"'] if commit is None else []) + \
                 ['licence = "Apache-2.0"', f'used_by = ["{name}"]', "available = true",
                  'sha256_note = "trust on first use"', "files = ["]
        lines += [f'  {{ path = "{p}", size = {len(d)} }},' for p, d in content.items()] + ["]", ""]
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("\n".join(lines))
    with serving(hub, monkeypatch, tmp_path):
        yield hub, files, manifest, tmp_path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _speech(test_data, tmp_path, seconds: float) -> Path:
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", str(seconds), str(speech))
    return speech


def test_download_convert_load_and_render_echomimic_acc(echo_hub, capsys, test_data):
    hub, files, manifest, tmp = echo_hub
    code, out, err = _run(capsys, "weights", "download", "echomimic-acc", "sd-vae-ft-mse", "--manifest", manifest, "--quiet")
    assert code == 0, err
    assert f"resolved to commit {COMMIT}" in err
    code, out, err = _run(capsys, "weights", "convert", "--from", "echomimic", "--acc", "--arch", "tiny",
                          "--manifest", manifest, "--json")
    assert code == 0, err
    report = json.loads(out)
    out_dir = Path(report["output"])
    assert out_dir == tmp / "home" / "converted" / "echomimic-acc"
    states = echomimic_states()
    loaded = {c["name"].split()[0]: c for c in report["components"]}
    assert all(c["missing"] == 0 and c["unexpected"] == [] for c in loaded.values())
    # every tensor of the files landed (AnimateDiff's second position table per module is reported as ignored)
    tables = sum(k.endswith("attention_blocks.1.pos_encoder.pe") for k in states["denoising_unet"])
    assert loaded["reference_net"]["loaded"] == len(states["reference_unet"])
    assert loaded["denoising_unet"]["loaded"] == len(states["denoising_unet"]) - tables
    assert loaded["face_locator"]["loaded"] == len(states["face_locator"])
    assert list(report["ignored"].values()) == [tables]
    assert report["notes"]["whisper_dims"] == WHISPER_DIMS["tiny"]
    index = json.loads((out_dir / "avatar_index.json").read_text())
    assert index["settings"]["default_method"] == "echomimic-acc" and index["settings"]["audio_encoder"] == "whisper"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["audio_encoder", "avatar_index.json", "denoising_unet", "face_locator", "reference_net", "scheduler", "vae"])
    assert (out_dir / "audio_encoder" / WHISPER_FILE).read_bytes() == files["audio_processor/whisper_tiny.pt"]

    # the folder loads; the published tensors are the ones in the networks
    models = AvatarModels.from_pretrained(out_dir)
    assert models.image_projector is None and models.audio_projector is None
    ref = models.reference_net.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in states["reference_unet"].items()) and len(ref) == len(states["reference_unet"])
    assert models.scheduler_config["prediction_type"] == "v_prediction"

    # --model echomimic-acc renders from the converted folder without --weights
    speech = _speech(test_data, tmp, 0.4)
    out_mp4 = tmp / "acc.mp4"
    code, out, err = _run(capsys, "render", test_data / "astronaut.png", speech, "--model", "echomimic-acc", "--size", "64",
                          "--face-box", "90,35,50,55", "-o", out_mp4, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "echomimic-acc" and result["method"] == "echomimic-acc"
    info = probe(out_mp4)
    assert info["frames"] == 10 and info["fps"] == 25 and (info["width"], info["height"]) == (64, 64)
    assert info["audio_streams"] == 1


def test_convert_refuses_a_stray_key_and_writes_nothing(echo_hub, capsys, tmp_path):
    hub, files, manifest, tmp = echo_hub
    assert _run(capsys, "weights", "download", "echomimic-acc", "sd-vae-ft-mse", "--manifest", manifest, "--quiet")[0] == 0
    folder = Path(_run(capsys, "weights", "path", "echomimic-acc", "--manifest", manifest)[1].strip())
    vae = Path(_run(capsys, "weights", "path", "sd-vae-ft-mse", "--manifest", manifest)[1].strip())
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    state = torch.load(copy / "denoising_unet_acc.pth", weights_only=True)
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"] = torch.zeros(4, 4)
    (copy / "denoising_unet_acc.pth").unlink()
    torch.save(state, copy / "denoising_unet_acc.pth")
    code, out, err = _run(capsys, "weights", "convert", "--from", "echomimic", copy, "--acc", "--vae", vae,
                          "--arch", "tiny", "-o", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "attn_temp" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # the base files are not in an acc snapshot: one line naming the first one missing
    code, out, err = _run(capsys, "weights", "convert", "--from", "echomimic", copy, "--vae", vae, "--arch", "tiny",
                          "-o", tmp_path / "base")
    assert code == 2 and "denoising_unet.pth" in err and not (tmp_path / "base").exists()


def test_random_weights_echomimic_acc_end_to_end(capsys, test_data, tmp_path):
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak_48k.wav"), "-t", "0.7", str(speech))
    out_mp4 = tmp_path / "r.mp4"
    code, out, err = _run(capsys, "render", test_data / "astronaut.png", speech, "--random-weights", "--arch", "tiny",
                          "--model", "echomimic-acc", "--size", "64", "--face-box", "90,35,50,55", "--fps", "24",
                          "--steps", "3", "-o", out_mp4, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["weights"] == "random:tiny:echomimic" and result["nfe"] == 3
    frames = int(0.7 * 24 + 0.5)  # 16.8 -> 17
    # 17 frames in windows of 12 overlapping by 3: 2 windows a step, 3 steps
    assert result["evaluations"] == 3 * 2
    info = probe(out_mp4)
    assert info["frames"] == frames and info["fps"] == 24 and (info["width"], info["height"]) == (64, 64)
    assert info["audio_streams"] == 1 and abs(info["duration_s"] - frames / 24) < 1e-6


def test_echomimic_face_rule_by_hand():
    from avatar_cli.media.face import echomimic_face

    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 4, y * 4, np.zeros_like(x)], axis=-1).astype(np.uint8)
    face = echomimic_face(image, (20, 10, 20, 30))  # x0, y0, x1, y1 = 20, 10, 40, 40
    # crop: box dilated by 0.5 (w 20 -> +-10, h 30 -> +-15), clipped: x 10..50, y 0..55; the centred square of
    # the shorter side (40) about (30, 27): x 10..50, y 7..47; resized 40 -> 64 (bilinear, half-pixel centres)
    assert tuple(face.image[0, 0]) == (10 * 4, 7 * 4, 0)
    assert tuple(face.image[-1, -1]) == (49 * 4, 46 * 4, 0)
    # mask: box dilated by 0.1 (int(3.0) rows, int(2.0) columns): frame rows 7..42, columns 18..41 -> crop rows
    # 0..35, columns 8..31 -> x1.6 on the 64 grid
    mask = face.mask_image[0]
    assert face.mask_image.shape == (1, 64, 64) and face.embedding is None and face.region_masks is None
    assert mask[30, 32] == 1 and mask[0, 0] == 0 and mask[30, 5] == 0 and mask[62, 32] == 0
    assert mask[2, 20] == 1 and mask[30, 52] == 0
    # no face: the frame as it is, a mask of ones
    none = echomimic_face(image, None, found=False)
    assert none.image is image and bool((none.mask_image == 1).all()) and none.source == "whole frame"


def test_windowed_denoiser_averages_over_the_windows_that_hold_a_frame():
    from avatar_cli.sampling.context_windows import WindowedDenoiser

    class Scale:  # a denoiser: latents times a per-window factor, counting its calls
        def __init__(self, factor):
            self.factor, self.evaluations = factor, 0

        def __call__(self, latents, t):
            self.evaluations += 1
            return latents * self.factor

    made = []

    def make(index):
        made.append(index)
        return Scale(float(len(made)))

    plan = {0: [[0, 1, 2], [2, 3, 0]], 1: [[1, 2, 3], [3, 0, 1]]}
    denoiser = WindowedDenoiser(make, lambda step: plan[step])
    x = torch.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1)
    step0 = denoiser(x, 999)[0, 0, :, 0, 0].tolist()
    # frames 0 and 2 in both windows (factors 1 and 2): 1.5x; frame 1 only in the first (1x), frame 3 in the second (2x)
    assert step0 == [1.5 * 1, 1 * 2, 1.5 * 3, 2 * 4]
    step1 = denoiser(x, 500)[0, 0, :, 0, 0].tolist()  # new windows (factors 3 and 4): frames 1 and 3 in both
    assert step1 == [4 * 1, 3.5 * 2, 3 * 3, 3.5 * 4]
    assert made == [[0, 1, 2], [2, 3, 0], [1, 2, 3], [3, 0, 1]] and denoiser.evaluations == 4
    with pytest.raises(ValueError, match="without a prediction"):
        WindowedDenoiser(make, lambda step: [[0, 1]])(x, 1)


def test_random_echomimic_models_save_and_load(tmp_path):
    models = AvatarModels.from_preset("tiny", family="echomimic", seed=3)
    assert models.image_projector is None and models.face_locator.config.conditioning_channels == 1
    assert not models.reference_net.config.cross_attention and models.denoising_unet.config.audio_attention == "attn2"
    models.save_pretrained(tmp_path / "w")
    assert (tmp_path / "w" / "audio_encoder" / WHISPER_FILE).is_file()
    assert not (tmp_path / "w" / "image_projector").exists()
    again = AvatarModels.from_pretrained(tmp_path / "w")
    for name in ("reference_net", "denoising_unet", "face_locator", "vae"):
        a, b = getattr(models, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.settings == models.settings
    from avatar_cli.pipelines import choose_model

    assert choose_model(tmp_path / "w") == "echomimic-acc"


def test_face_detectors_in_order(monkeypatch):
    """--face-box, else EchoMimic's MTCNN (mtcnn extra), else MediaPipe (face extra), else the whole frame."""
    from avatar_cli.media import echomimic_face as face_mod  # echomimic_face looks both detectors up there

    image = np.zeros((64, 64, 3), np.uint8)

    def missing(image):
        raise ImportError("not installed")

    warnings = []
    monkeypatch.setattr(face_mod, "detect_face_mtcnn", missing)
    monkeypatch.setattr(face_mod, "detect_face", lambda image: ((20.0, 10.0, 20.0, 30.0), (25.0, 30.0, 10.0, 5.0)))
    assert face_mod.echomimic_face(image, warn=warnings.append).source == "mediapipe"
    monkeypatch.setattr(face_mod, "detect_face_mtcnn", lambda image: (21.0, 11.0, 20.0, 30.0))
    found = face_mod.echomimic_face(image, warn=warnings.append)
    assert found.source == "mtcnn" and found.face_box == (21.0, 11.0, 20.0, 30.0)
    assert face_mod.echomimic_face(image, (1, 2, 30, 30)).source == "face-box option"
    monkeypatch.setattr(face_mod, "detect_face_mtcnn", missing)
    monkeypatch.setattr(face_mod, "detect_face", missing)
    none = face_mod.echomimic_face(image, warn=warnings.append)
    assert none.source == "whole frame" and warnings and "avatar-cli[mtcnn]" in warnings[-1]


def test_mtcnn_finds_the_astronaut_and_no_face_on_the_cat(test_data):
    pytest.importorskip("facenet_pytorch")
    from PIL import Image

    from avatar_cli.media.face import detect_face_mtcnn

    box = detect_face_mtcnn(np.asarray(Image.open(test_data / "astronaut.png").convert("RGB")))
    # measured with facenet-pytorch 2.5.3 (torch 2.13, torchvision 0.28), upstream's settings, BGR input
    np.testing.assert_allclose(box, (90.83, 32.01, 133.98 - 90.83, 87.37 - 32.01), atol=0.5)
    assert detect_face_mtcnn(np.asarray(Image.open(test_data / "cat_chelsea.png").convert("RGB"))) is None


def test_render_before_conversion_names_the_command(echo_hub, capsys, test_data, tmp_path):
    hub, files, manifest, tmp = echo_hub
    assert _run(capsys, "weights", "download", "echomimic-acc", "sd-vae-ft-mse", "--manifest", manifest, "--quiet")[0] == 0
    from avatar_cli.weights import load_manifest, missing_for

    assert missing_for("echomimic-acc", load_manifest(manifest)) == [
        "echomimic-acc: downloaded but not converted; run 'avatar weights convert --from echomimic --acc'"]
    assert missing_for("echomimic", load_manifest(manifest))[0].startswith("echomimic: not in the manifest")
