"""``--model ditto`` end to end: random tiny weights through the CLI, Ditto's released folder layout
(six ``.pth`` files, the cfg pickle, the HuBERT ONNX interface) through ``from_pretrained``, and the
seed's effect. The networks and the motion path are checked against Ditto's own code elsewhere
(tests/models/ditto, tests/motion); here the pieces are checked to be wired together."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.cli import main
from avatar_cli.models.ditto import DittoModels
from avatar_cli.options import RenderOptions
from avatar_cli.pipelines.ditto import DittoPipeline
from tests.conftest import probe
from tests.models.ditto.test_loaders import write_release
from tests.test_safe_pickle import ditto_cfg

DATA = Path(__file__).resolve().parents[1] / "data"
FACE_BOX = "100,60,120,140"  # x,y,w,h in the 320x240 portrait's pixels


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ditto-media")
    square = synthetic_portrait(folder / "square.png", 320)
    Image.open(square).crop((0, 40, 320, 280)).save(folder / "portrait.png")  # 320 x 240, not square
    synthetic_speech(folder / "speech.wav", 0.5)
    return folder


def _seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_cli_renders_the_portrait_size_with_speech(media, tmp_path, capsys):
    out = tmp_path / "talk.mp4"
    code = main(["render", str(media / "portrait.png"), str(media / "speech.wav"), "--model", "ditto",
                 "--random-weights", "--arch", "tiny", "--face-box", FACE_BOX, "--steps", "2", "--device", "cpu",
                 "--render-batch", "5", "-o", str(out), "--json", "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    frames = math.ceil(_seconds(media / "speech.wav") * 25)  # Ditto's frame count
    info = probe(out)
    assert (info["width"], info["height"]) == (320, 240)
    assert info["frames"] == frames == result["frames"] and info["fps"] == 25
    assert info["audio_streams"] == 1 and abs(info["audio_duration_s"] - _seconds(media / "speech.wav")) < 0.05
    assert result["model"] == result["method"] == "ditto" and result["num_inference_steps"] == 2
    windows = 1  # 13 frames fit one 80-frame window
    assert result["evaluations"] == 2 * 2 * windows  # CFG: two DiT calls per step
    assert set(result["stages"]) == {"crop", "audio", "motion", "warp", "decode", "paste", "write"}
    assert result["weights"] == "random:tiny"
    assert result["renderer"]["render_batch"] == 5 and result["renderer"]["sized_by"] == "flag"  # the batch used


def test_ditto_refuses_u_net_options(media, tmp_path, capsys):
    code = main(["render", str(media / "portrait.png"), str(media / "speech.wav"), "--model", "ditto",
                 "--method", "osa-lcm", "--random-weights", "--arch", "tiny", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--method osa-lcm does not apply to --model ditto" in err[0]
    assert not (tmp_path / "x.mp4").exists()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A folder laid out as the hub snapshot of digital-avatar/ditto-talkinghead, tiny networks."""
    root = tmp_path_factory.mktemp("ditto-release")
    models = DittoModels.from_preset("tiny", seed=5)
    (root / "ditto_pytorch").mkdir()
    write_release(models, root / "ditto_pytorch" / "models")
    aux = root / "ditto_pytorch" / "aux_models"
    aux.mkdir(parents=True)
    shutil.copy(DATA / "tiny_hubert_interface.onnx", aux / "hubert_streaming_fix_kv.onnx")
    cfg = ditto_cfg()
    cfg["default_kwargs"]["overlap_v2"] = 30
    (root / "ditto_cfg").mkdir()
    (root / "ditto_cfg" / "v0.4_hubert_cfg_pytorch.pkl").write_bytes(pickle.dumps(cfg, protocol=4))
    (root / "avatar_index.json").write_text(json.dumps({"family": "ditto", "preset": "tiny"}))
    return root, models, cfg


def test_from_pretrained_reads_the_release_layout_and_its_cfg_pickle(release, media):
    pytest.importorskip("onnxruntime")
    root, models, cfg = release
    pipe = DittoPipeline.from_pretrained(root, device="cpu", dtype="float32")
    ref = models.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in pipe.models.state_dict().items())
    assert pipe.config.overlap_v2 == 30 and pipe.config.fade_type == "d0"
    np.testing.assert_array_equal(pipe.config.delta_eye_arr, cfg["default_kwargs"]["delta_eye_arr"])
    image = np.asarray(Image.open(media / "portrait.png").convert("RGB"))
    from avatar_cli.media.audio import load_speech

    waveform = load_speech(media / "speech.wav")
    frames = np.concatenate(list(pipe.generate(image, waveform, RenderOptions(model="ditto", num_inference_steps=2),
                                               source=pipe.source_state(image, (100, 60, 120, 140)))))
    assert frames.shape == (math.ceil(waveform.shape[0] / 640), 240, 320, 3) and frames.dtype == np.uint8


def test_same_seed_same_frames_another_seed_other_frames(media):
    pipe = DittoPipeline.from_preset("tiny", device="cpu", dtype="float32", seed=1)
    image = np.asarray(Image.open(media / "portrait.png").convert("RGB"))
    t = np.arange(8000) / 16000
    waveform = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    source = pipe.source_state(image, (100, 60, 120, 140))

    def motion(seed: int) -> np.ndarray:
        from avatar_cli.motion.hubert_windows import offline_features

        return pipe.motion(offline_features(waveform, pipe.encoder), source,
                           RenderOptions(model="ditto", num_inference_steps=3, seed=seed))

    first, again, other = motion(4), motion(4), motion(5)
    assert first.shape == (13, 265)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_without_weights_the_downloaded_snapshot_is_used_as_it_is(release, tmp_path, monkeypatch):
    """`avatar weights download ditto` then `avatar render ... --model ditto`: no conversion step."""
    pytest.importorskip("onnxruntime")
    import avatar_cli.weights as weights
    from avatar_cli.errors import InputError
    from avatar_cli.models.catalog import MODELS
    from avatar_cli.pipelines import load_pipeline

    root, _, _ = release
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))  # no converted folder there
    monkeypatch.setattr(weights, "downloaded_folder", lambda spec: None)
    with pytest.raises(InputError, match="avatar weights download ditto"):
        load_pipeline("ditto", device="cpu")
    monkeypatch.setattr(weights, "downloaded_folder", lambda spec: root if spec is MODELS["ditto"] else None)
    pipe = load_pipeline("ditto", device="cpu", dtype="float32")
    assert isinstance(pipe, DittoPipeline) and pipe.source == str(root) and pipe.config.overlap_v2 == 30


@pytest.fixture(scope="module")
def tiny_pipe():
    return DittoPipeline.from_preset("tiny", device="cpu", dtype="float32", seed=1)


@pytest.mark.parametrize("steps", [3, 5])
def test_the_face_is_rendered_at_few_steps(media, tiny_pipe, steps):
    """Issue 23: at --steps 5 (--preview's count; 3 on this project's CPU) float32 rounding made DDIM's
    noise coefficient sqrt(-6e-8) = NaN on the first step: NaN motion, a black (constant) face region and
    numpy's "invalid value encountered in cast". The motion must be finite and the face region vary."""
    import warnings

    pipe = tiny_pipe
    image = np.asarray(Image.open(media / "portrait.png").convert("RGB"))
    t = np.arange(1600) / 16000  # 0.1 s: 3 frames
    waveform = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    source = pipe.source_state(image, (100, 60, 120, 140))
    options = RenderOptions(model="ditto", num_inference_steps=steps, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the cast of NaN to uint8 warns
        frames = np.concatenate(list(pipe.generate(image, waveform, options, source=source)))
    assert frames.shape == (3, 240, 320, 3)
    face = frames[:, 70:190, 110:210].astype(np.float64)  # inside the face box (100, 60, 120, 140)
    assert face.std(axis=(1, 2, 3)).min() > 5, "the face region is constant (NaN motion renders black)"
    assert (face.reshape(3, -1).max(axis=1) > 0).all()
