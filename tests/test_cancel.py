"""Ctrl-C during a file render (``avatar render``, ``avatar batch``): one line saying what was kept, exit 130,
no temporary or partial output left, no ffmpeg child left (``cli/common.py:cancellable``)."""

import signal
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import pytest

from tests.media.test_stream_stop import env, marked_processes

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--random-weights", "--arch", "tiny", "--size", "64", "--device", "cpu", "--seed", "1", "-q"]


def _interrupt_when(proc, ready, what: str, timeout: float = 400) -> None:
    """Send SIGINT to ``proc`` once ``ready()`` holds (fail if the process ends first)."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not ready():
        proc.kill()
        pytest.fail(f"never reached {what}: {proc.communicate()[1].decode()[-2000:]}")
    proc.send_signal(signal.SIGINT)


def test_ctrl_c_during_a_render_says_so_and_leaves_nothing(tmp_path, test_data):
    """SIGINT once the video writer has started (its hidden .partial.mp4 exists: frames are being made):
    exit 130, one line on stderr, no output and no temporary file, no ffmpeg left (it ran under the mark)."""
    mark = uuid.uuid4().hex
    out = tmp_path / "out" / "face.mp4"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "render", str(test_data / "astronaut.png"),
                             str(test_data / "speech_espeak.wav"), "-o", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=env(mark))
    _interrupt_when(proc, lambda: any(out.parent.glob(".face.*.partial.mp4")), "the video writer")
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read().decode().strip() == "avatar: cancelled (Ctrl-C); nothing written"
    assert list(out.parent.iterdir()) == []
    assert marked_processes(mark) == []


def test_ctrl_c_during_a_batch_keeps_the_finished_jobs(tmp_path, test_data):
    """Job 1 (0.5 s of speech) finishes; SIGINT during job 2: job 1's video and ledger line stay, job 2 leaves
    no file, job 3 is not started, and the line says so."""
    mark = uuid.uuid4().hex
    with wave.open(str(test_data / "speech_espeak.wav")) as w:
        params, samples = w.getparams(), w.readframes(8000)
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as w:
        w.setparams(params)
        w.writeframes(samples)
    out = tmp_path / "out"
    out.mkdir()
    image, speech = test_data / "astronaut.png", test_data / "speech_espeak.wav"
    (tmp_path / "jobs.csv").write_text(f"image,audio,output\n{image},{short},{out / 'a.mp4'}\n"
                                       f"{image},{speech},{out / 'b.mp4'}\n{image},{speech},{out / 'c.mp4'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "batch", str(tmp_path / "jobs.csv"), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=env(mark))
    _interrupt_when(proc, lambda: any(out.glob(".b.*.partial.mp4")), "job 2")
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read().decode().strip()
    assert err == (f"avatar: cancelled (Ctrl-C) during job 2 of 3: 1 rendered and kept, 0 skipped, 0 failed; the "
                   f"running job left no file; 2 not rendered (ledger {tmp_path / 'jobs.ledger.jsonl'}; rerun with "
                   f"--resume to render them)")
    assert [p.name for p in out.iterdir()] == ["a.mp4"] and (out / "a.mp4").stat().st_size > 0
    assert len((tmp_path / "jobs.ledger.jsonl").read_text().splitlines()) == 1
    assert marked_processes(mark) == []
