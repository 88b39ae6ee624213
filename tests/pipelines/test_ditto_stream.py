"""Streaming: ``DittoPipeline.stream`` (frames while the audio arrives), the base ``Pipeline.stream``, the
stdin/stdout CLI (``avatar render portrait.png - --model ditto --stream -o ...``) and the PCM reader.

Random tiny weights, < 1 s of audio. In the ``stream()`` tests the warp/decode/paste step is replaced by a
recorder (it is the offline render's own ``render_infos``, tested end to end in test_ditto.py): what is
checked is the streaming itself, against the same motion computed in one go.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.media.audio import load_speech
from avatar_cli.media.image import load_source
from avatar_cli.media.stream import pcm_chunks
from avatar_cli.motion.condition import AudioConditions, motion_to_vector, vector_to_motion
from avatar_cli.motion.hubert_windows import num_frames, silence_features, stream_windows, window_features
from avatar_cli.motion.windows import OnlineMotion
from avatar_cli.options import RenderOptions
from avatar_cli.pipelines.base import Pipeline
from avatar_cli.pipelines.ditto import DittoPipeline
from tests.conftest import probe

ROOT = Path(__file__).resolve().parents[2]
BOX = (40, 40, 80, 80)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    synthetic_portrait(folder / "p.png", 160)
    synthetic_speech(folder / "s.wav", 0.6)
    synthetic_speech(folder / "short.wav", 0.16)
    return folder


@pytest.fixture(scope="module")
def ditto(media):
    pipe = DittoPipeline.from_preset("tiny", device="cpu", seed=0)
    pipe.warn = lambda message: None
    return pipe


def _recording(pipe):
    """Replace the render step by one that records the MotionStitch outputs and returns black frames."""
    seen = []

    def render_infos(infos, source, image, paste, stats):
        seen.extend(infos)
        return np.zeros((len(infos), *image.shape), np.uint8)

    pipe.render_infos = render_infos
    return seen


def test_stream_frames_timestamps_and_arrival(ditto, media):
    image = load_source(media / "p.png")
    wav = load_speech(media / "s.wav")
    options = RenderOptions(model="ditto", num_inference_steps=1, motion_overlap=75)
    log = []

    def chunks():
        for i in range(0, len(wav), 640):
            log.append(("chunk", i))
            yield wav[i : i + 640]
        log.append(("end", len(wav)))

    seen = _recording(ditto)
    try:
        out = []
        for frames, times in ditto.stream(image, chunks(), options, face_box=BOX):
            log.append(("frames", len(frames)))
            out.append((frames, times))
    finally:
        del ditto.render_infos
    total = num_frames(len(wav))  # the offline render's count, ceil(samples / 16000 * 25)
    assert sum(len(f) for f, _ in out) == total == len(seen)
    times = np.concatenate([t for _, t in out])
    np.testing.assert_allclose(times, np.arange(total) / 25)
    assert all(f.shape[1:] == image.shape and f.dtype == np.uint8 for f, _ in out)
    first = next(i for i, e in enumerate(log) if e[0] == "frames")
    last_chunk = max(i for i, e in enumerate(log) if e[0] == "chunk")
    assert first < last_chunk  # frames came out while audio was still to be pushed

    # the same motion computed in one go: all HuBERT windows, then OnlineMotion, d0 from its first window
    source = ditto.source_state(image, BOX)
    feats = np.concatenate([window_features(ditto.encoder(w)) for w in stream_windows(wav)])
    cond = AudioConditions(ditto.config.emo, source.eye_open, source.eye_ball, source.motion["kp"])
    online = OnlineMotion(ditto.window_sampler(options), motion_to_vector(source.motion), cond,
                          silence_features(ditto.encoder, 75), overlap=75, num_frames=total,
                          v_min_max=ditto.config.v_min_max_for_clip)
    motion = np.concatenate([online.push(feats), online.flush()])
    stitcher = ditto.stitcher(source, -1, options)
    stitcher.d0 = online.d0
    for got, m in zip(seen, motion):
        ref = stitcher(vector_to_motion(m))
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], atol=1e-5, err_msg=k)


def test_stream_refuses_a_small_overlap(ditto, media):
    from avatar_cli.errors import InputError

    image = load_source(media / "p.png")
    with pytest.raises(InputError, match="--stream needs --motion-overlap 40..79"):
        next(ditto.stream(image, [np.zeros(640, np.float32)], RenderOptions(model="ditto", motion_overlap=10)))


class _Clips(Pipeline):
    """A family that yields 3-frame clips of known content from the whole waveform."""

    family = "test"

    def __init__(self):
        import torch

        super().__init__(torch.device("cpu"), torch.float32)
        self.heard = None

    def generate(self, image, waveform, options=None, *, on_progress=None, stats=None, **inputs):
        self.heard = waveform
        n = round(len(waveform) / 16000 * options.fps)
        for s in range(0, n, 3):
            yield np.full((min(3, n - s), 2, 2, 3), s, np.uint8)


def test_base_stream_collects_then_yields_the_clips():
    pipe = _Clips()
    parts = [np.full(1000, i, np.float32) for i in range(5)]
    out = list(pipe.stream(np.zeros((2, 2, 3), np.uint8), iter(parts), RenderOptions(fps=25)))
    np.testing.assert_array_equal(pipe.heard, np.concatenate(parts))
    assert [len(f) for f, _ in out] == [3, 3, 2]  # 5000 samples -> 8 frames
    np.testing.assert_allclose(np.concatenate([t for _, t in out]), np.arange(8) / 25)


def test_pcm_chunks_raw_and_paced(tmp_path):
    pcm = (np.arange(4000) - 2000).astype("<i2")
    raw = tmp_path / "a.raw"
    raw.write_bytes(pcm.tobytes())
    now, sleeps = [0.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    chunks = list(pcm_chunks(raw, "s16le", chunk_samples=1600, realtime=True, clock=lambda: now[0], sleep=sleep))
    np.testing.assert_array_equal(np.concatenate(chunks), pcm / 32768.0)
    assert [len(c) for c in chunks] == [1600, 1600, 800]
    np.testing.assert_allclose(sleeps, [0.1, 0.1, 0.05])  # each chunk waits for its last sample's time


def _cli(args, stdin: bytes):
    return subprocess.run([sys.executable, "-m", "avatar_cli", "render", *args], input=stdin, capture_output=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_cli_streams_stdin_to_a_file_with_audio(media, tmp_path):
    out = tmp_path / "live.mp4"
    wav = (media / "short.wav").read_bytes()
    run = _cli([str(media / "p.png"), "-", "--model", "ditto", "--stream", "--random-weights", "--arch", "tiny",
                "--steps", "1", "--face-box", "40,40,80,80", "--device", "cpu", "-o", str(out), "--json", "-q"], wav)
    assert run.returncode == 0, run.stderr.decode()
    result = json.loads(run.stdout)
    samples = len(load_speech(media / "short.wav"))
    info = probe(out)
    assert info["frames"] == result["frames"] == num_frames(samples)
    assert (info["width"], info["height"]) == (160, 160)
    # the edit list skips AAC's 1024 samples of priming; the last AAC frame is padded to 1024 samples
    assert info["audio_streams"] == 1 and 0 <= info["audio_duration_s"] * 16000 - samples < 1024
    header = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True,
                            text=True).stderr
    starts = {kind: float(v) for kind, v in re.findall(r"(Video|Audio): .*start (\d+\.\d+)", header)}
    assert starts.get("Video", 0.0) == 0 and starts.get("Audio", 0.0) == 0  # both start at 0 (no video offset)
    assert result["controls"]["motion_overlap"] == 70 and result["first_frame_delay_s"] is not None


def test_cli_streams_raw_pcm_to_stdout_as_mpegts(media, tmp_path):
    pcm = (np.asarray(load_speech(media / "short.wav")) * 32767).astype("<i2").tobytes()
    run = _cli([str(media / "p.png"), "-", "--model", "ditto", "--stream", "--input-format", "s16le",
                "--format", "mpegts", "--random-weights", "--arch", "tiny", "--steps", "1", "--face-box",
                "40,40,80,80", "--device", "cpu", "-o", "-", "-q"], pcm)
    assert run.returncode == 0, run.stderr.decode()
    ts = tmp_path / "out.ts"
    ts.write_bytes(run.stdout)
    # what `... -o - | ffmpeg -i - -f null -` reads
    check = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", "-", "-f", "null", "-"],
                           input=run.stdout, capture_output=True, text=False)
    assert check.returncode == 0 and b"mpegts" in check.stderr
    info = probe(ts)
    assert info["frames"] == num_frames(len(pcm) // 2) and info["audio_streams"] == 1


def test_cli_bad_stdin_fails_in_one_line_and_leaves_nothing(media, tmp_path):
    out = tmp_path / "bad.mp4"
    run = _cli([str(media / "p.png"), "-", "--model", "ditto", "--stream", "--random-weights", "--arch", "tiny",
                "--face-box", "40,40,80,80", "--device", "cpu", "-o", str(out), "-q"], b"this is not audio" * 100)
    assert run.returncode == 2
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "standard input" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_stream_timing_measures(monkeypatch, tmp_path):
    """render_stream's delays on a scripted clock: each 1280-sample chunk (2 frames) arrives 80 ms after
    the previous one; every 2 chunks the stand-in pipeline computes 100 ms and yields 4 frames."""
    import avatar_cli.media.stream as live

    now = [0.0]
    monkeypatch.setattr(live, "_clock", lambda: now[0])

    class Scripted:
        def stream(self, image, chunks, options, face_box=None, stats=None):
            it, done = iter(chunks), 0
            while True:
                for _ in range(2):  # wait for two chunks
                    now[0] += 0.08
                    if next(it, None) is None:
                        return
                now[0] += 0.1  # compute
                yield np.zeros((4, 16, 16, 3), np.uint8), (done + np.arange(4)) / 25
                done += 4

    chunks = [np.zeros(1280, np.float32)] * 4  # 5120 samples: 8 frames
    result = live.render_stream(Scripted(), np.zeros((16, 16, 3), np.uint8), chunks, tmp_path / "t.mp4",
                                RenderOptions(model="ditto"))
    # chunks arrive at 0.08, 0.16 | 0.34, 0.42; frames out at 0.26 and 0.52
    assert result["frames"] == 8 and result["first_frame_delay_s"] == pytest.approx(0.18)
    # frames 0, 1 wait for chunk 1 (0.18 s), 2, 3 for chunk 2 (0.10 s); the same in the second batch
    assert result["frame_delay_p50_s"] == pytest.approx(0.14) and result["frame_delay_p95_s"] == pytest.approx(0.18)
    # a player starting at 0.26 needs frame i at 0.26 + i / 25: frames 4, 5, 6 (0.42, 0.46, 0.50) are late
    assert result["frames_late"] == 3
    assert probe(tmp_path / "t.mp4")["frames"] == 8
