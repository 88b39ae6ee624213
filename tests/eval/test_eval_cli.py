"""``avatar eval`` and ``avatar bench --eval`` on a tiny real mp4, with SyncNet v2 in the real layout and
random weights (no real weights here): exit codes, JSON fields, the window count, the crops' colour
order, the batch files, and the hand-over to FID / FVD / identity modules."""

from __future__ import annotations

import json
import math
import sys
import types

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.eval.syncnet import SyncNetV2

from .syncnet_inputs import random_state

FRAMES = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    shapes = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save({k: torch.from_numpy(v) for k, v in random_state(shapes, 1).items()}, path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory, test_data):
    """8 frames (0.32 s) of a 64x64 picture whose brightness and position change, with 4 s of speech."""
    from avatar_cli.media.video import VideoWriter

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frames = [np.roll(base, t, axis=1) // (1 + t % 3) for t in range(FRAMES)]
    path = tmp_path_factory.mktemp("video") / "talk.mp4"
    with VideoWriter(path, 64, 25, audio_path=test_data / "speech_espeak.wav") as writer:
        writer.write(np.stack(frames))
    return path


@pytest.fixture
def no_installed_weights(tmp_path, monkeypatch):
    for var, sub in (("AVATAR_HOME", "home"), ("AVATAR_WEIGHTS_DIR", "weights"), ("HF_HUB_CACHE", "hub")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_eval_json_against_the_frames_read_another_way(video, checkpoint, capsys, no_installed_weights):
    from avatar_cli.eval import sync
    from avatar_cli.eval.syncnet import load_syncnet
    from avatar_cli.media.audio import load_speech
    from avatar_cli.media.face_crop import resize_linear

    assert main(["eval", str(video), "--syncnet", str(checkpoint), "--json", "-q", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)
    samples = len(load_speech(video))
    assert row["frames"] == FRAMES and row["face"] == "whole-frame"  # no detector installed: whole frame
    assert row["sync_windows"] == min(FRAMES, math.floor(samples / 640)) - 5
    assert -15 <= row["offset_frames"] <= 15 and row["sync_c"] >= 0 and row["vshift"] == 15
    # the same number from frames decoded here, flipped to BGR, resized to 224 as cv2 would
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    crops = np.stack([resize_linear(np.frombuffer(f, np.uint8).reshape(h, w, 3)[:, :, ::-1].copy(), (224, 224))
                      for f in reader])
    pcm = np.clip(np.rint(np.asarray(load_speech(video), np.float64) * 32768), -32768, 32767)
    direct = sync.sync_scores(load_syncnet(checkpoint), crops, pcm)
    assert row["sync_c"] == pytest.approx(direct.confidence, abs=1e-3)
    assert row["sync_d"] == pytest.approx(direct.min_dist, abs=1e-3)
    assert row["offset_frames"] == direct.offset
    # RGB order would give other distances: the network sees BGR
    rgb = sync.sync_scores(load_syncnet(checkpoint), crops[..., ::-1].copy(), pcm)
    assert rgb.min_dist != pytest.approx(direct.min_dist, abs=1e-3)


def test_eval_errors_are_one_line(video, checkpoint, capsys, no_installed_weights, tmp_path):
    assert main(["eval", str(video)]) == 1  # SyncNet not installed
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "avatar weights download syncnet" in err
    assert main(["eval", str(tmp_path / "none.mp4"), "--syncnet", str(checkpoint)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval"]) == 2 and "--batch" in capsys.readouterr().err
    assert main(["eval", str(video), "--face", "mouth", "--syncnet", str(checkpoint)]) == 2
    assert main(["eval", str(video), "--face-box", "1,2,3", "--syncnet", str(checkpoint)]) == 2
    assert main(["eval", str(video), "--face", "scrfd", "--syncnet", str(checkpoint)]) == 1
    assert "det_10g.onnx" in capsys.readouterr().err
    from avatar_cli.media.video import VideoWriter

    with VideoWriter(tmp_path / "silent.mp4", 64, 25) as writer:
        writer.write(np.zeros((8, 64, 64, 3), np.uint8))
    assert main(["eval", str(tmp_path / "silent.mp4"), "--syncnet", str(checkpoint), "-q"]) == 2
    assert "no audio track; pass --audio" in capsys.readouterr().err
    assert main(["eval", str(video), "--jobs", str(video), "--syncnet", str(checkpoint)]) == 2
    assert "go with --batch" in capsys.readouterr().err
    not_video = tmp_path / "x.mp4"
    not_video.write_text("not a video")
    assert main(["eval", str(not_video), "--syncnet", str(checkpoint), "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avatar: error:")


def test_face_box_and_optional_metrics(video, checkpoint, capsys, no_installed_weights, monkeypatch, test_data):
    """--face-box crops the same window of every frame; --reference / --portrait hand frames to the
    FID / FVD / identity functions when their modules exist, and report None when they do not."""
    calls = {}
    args = ["eval", str(video), "--syncnet", str(checkpoint), "--json", "-q", "--face-box", "8,8,40,40",
            "--reference", str(video), "--portrait", str(test_data / "astronaut.png")]
    for name in ("fid", "fvd", "identity"):
        monkeypatch.setitem(sys.modules, f"avatar_cli.eval.{name}", None)  # not installed
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["face"] == "face-box" and row["fid"] is None and row["fvd"] is None and row["identity"] is None

    def fid_between(a, b, weights_dir):
        calls["fid"] = (np.asarray(a).shape, len(b), weights_dir)
        return 1.5

    def fvd_between(a, b, weights_dir):
        calls["fvd"] = ([v.shape for v in a], [v.shape for v in b])
        return 2.5

    def identity_similarity(frames, portrait, weights_dir):
        calls["identity"] = (np.asarray(frames).shape, portrait.shape)
        return {"mean": 0.5}

    for name, fn in (("fid", fid_between), ("fvd", fvd_between), ("identity", identity_similarity)):
        module = types.ModuleType(f"avatar_cli.eval.{name}")
        setattr(module, fn.__name__, fn)
        monkeypatch.setitem(sys.modules, f"avatar_cli.eval.{name}", module)
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["fid"], row["fvd"], row["identity"]) == (1.5, 2.5, {"mean": 0.5})
    assert calls["fid"] == ((FRAMES, 64, 64, 3), FRAMES, None)
    assert calls["fvd"] == ([(FRAMES, 64, 64, 3)], [(FRAMES, 64, 64, 3)])
    assert calls["identity"] == ((FRAMES, 64, 64, 3), (256, 256, 3))


def test_batch_results(video, checkpoint, capsys, no_installed_weights, tmp_path, test_data, monkeypatch):
    import shutil

    shutil.copy(video, tmp_path / "a.mp4")
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"job": 0, "status": "ok", "output": "a.mp4", "seconds": 1.0, "rtf": 1.0}) + "\n"
                       + json.dumps({"job": 1, "status": "failed", "output": "b.mp4", "error": "x"}) + "\n")
    code = main(["eval", "--batch", str(results), "--syncnet", str(checkpoint), "--json", "-q"])
    assert code == 1  # one job had no video to evaluate
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("job") for r in lines[:2]] == [0, 1] and "sync_c" in lines[0] and "error" in lines[1]
    summary = lines[2]["summary"]
    assert (summary["videos"], summary["evaluated"], summary["failed"]) == (2, 1, 1)
    assert summary["sync_c_mean"] == pytest.approx(lines[0]["sync_c"], abs=1e-4)
    written = [json.loads(line) for line in (tmp_path / "results.eval.jsonl").read_text().splitlines()]
    assert written == lines[:2]
    table = (tmp_path / "results.eval.md").read_text()
    assert "| 0 | a.mp4 | " in table and f"{lines[0]['sync_c']:.3f}" in table and "| **mean** |" in table
    # --jobs: each output's own portrait goes to the identity metric (a stand-in module reports its width)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"image,audio,output\n{test_data / 'cat_chelsea.png'},{test_data / 'speech_espeak.wav'},a.mp4\n")
    module = types.ModuleType("avatar_cli.eval.identity")
    module.identity_similarity = lambda frames, portrait, weights_dir: {"mean": float(portrait.shape[1])}
    monkeypatch.setitem(sys.modules, "avatar_cli.eval.identity", module)
    main(["eval", "--batch", str(results), "--jobs", str(jobs), "--syncnet", str(checkpoint), "--json", "-q"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["identity"] == {"mean": 226.0} and lines[2]["summary"]["identity_mean"] == 226.0
    results.write_text("not json\n")
    assert main(["eval", "--batch", str(results), "--syncnet", str(checkpoint)]) == 2
    assert "line 1" in capsys.readouterr().err
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["eval", "--batch", str(results), "--plot", str(tmp_path / "p.png")]) == 2
        assert "matplotlib" in capsys.readouterr().err


def test_bench_eval_reports_sync(checkpoint, capsys, no_installed_weights):
    args = ["bench", "--arch", "tiny", "--size", "64", "--seconds", "0.33", "--repeat", "1", "--no-flops", "--eval",
            "--syncnet", str(checkpoint), "--json", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    # 0.33 s: 8 frames (8.25 rounded) and 5280 samples (8.25 frames of 640): 3 windows
    assert report["frames"] == 8
    assert report["eval"]["sync_windows"] == min(report["frames"], math.floor(0.33 * 16000 / 640)) - 5 == 3
    assert report["eval"]["face"] == "whole-frame" and report["eval"]["sync_c"] >= 0
    assert main(["bench", "--eval", "--stream", "--syncnet", str(checkpoint)]) == 2


def test_scrfd_track_crops_the_detected_face(video, checkpoint, capsys, no_installed_weights, tmp_path):
    """A constant det_10g.onnx (real input and output names) that finds one face at (8, 8)-(40, 48) of the
    64x64 frames (letterboxed x8): SyncNet reads syncnet_python's crop of that box, worked out by hand."""
    pytest.importorskip("onnxruntime")
    from avatar_cli.eval import sync
    from avatar_cli.eval.syncnet import load_syncnet
    from avatar_cli.media.audio import load_speech
    from avatar_cli.media.face_crop import resize_linear

    from .. import onnx_tiny
    from ..media.test_face_crop import DET_OUTPUTS

    arrays = [None] * 9  # scores, boxes, keypoints per stride 8, 16, 32, in det_10g's output order
    for i, stride in enumerate((8, 16, 32)):
        anchors = (512 // stride) ** 2 * 2
        scores, boxes = np.zeros((anchors, 1), np.float32), np.zeros((anchors, 4), np.float32)
        if stride == 32:  # anchor centre (192, 224) = (6, 7) x 32; box (64, 64)-(320, 384) in stride units
            index = (7 * 16 + 6) * 2
            scores[index], boxes[index] = 0.9, (4, 5, 4, 5)
        arrays[i], arrays[3 + i], arrays[6 + i] = scores, boxes, np.zeros((anchors, 10), np.float32)
    outputs = dict(zip(DET_OUTPUTS, arrays))
    (tmp_path / "w" / "aux_models").mkdir(parents=True)
    onnx_tiny.write(tmp_path / "w" / "aux_models" / "det_10g.onnx", "input.1", (1, 3, 512, 512), outputs)
    assert main(["eval", str(video), "--syncnet", str(checkpoint), "--weights", str(tmp_path / "w"), "--json",
                 "-q"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["face"] == "scrfd:det_10g.onnx"
    # s = max(32, 40) / 2 = 20, centre (24, 28), pad int(20 x 1.8) = 36: rows 64 - 20 .. 64 + 36 of the
    # padded frame, columns 60 - 28 .. 60 + 28
    reader = imageio_ffmpeg.read_frames(str(video))
    next(reader)
    crops = []
    for raw in reader:
        bgr = np.frombuffer(raw, np.uint8).reshape(64, 64, 3)[:, :, ::-1]
        padded = np.pad(bgr, ((36, 36), (36, 36), (0, 0)), constant_values=110)
        crops.append(resize_linear(np.ascontiguousarray(padded[44:100, 32:88]), (224, 224)))
    pcm = np.clip(np.rint(np.asarray(load_speech(video), np.float64) * 32768), -32768, 32767)
    direct = sync.sync_scores(load_syncnet(checkpoint), np.stack(crops), pcm)
    assert row["sync_d"] == pytest.approx(direct.min_dist, abs=1e-3)
    assert row["sync_c"] == pytest.approx(direct.confidence, abs=1e-3)
