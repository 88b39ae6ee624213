"""A live stream stops when either end goes away (issue 29): the reader of standard output closing early,
standard input ending mid-stream, SIGTERM, and :meth:`StreamStop.cancel` (the hook for a UI's client).

Each run uses the tiny Ditto with random weights at 1 DiT step on a 96 px portrait. Processes left behind
are found by a marker in the environment, which every child inherits (``/proc/<pid>/environ``), so that
a child reparented after its parent exited is found too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.media.stream import ReaderGone, StreamCancelled, StreamStop, StreamWriter, render_stream
from avatar_cli.motion.hubert_windows import num_frames
from avatar_cli.options import RenderOptions
from tests.conftest import probe

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--stream", "--model", "ditto", "--random-weights", "--arch", "tiny", "--steps", "1", "--device", "cpu",
        "--face-box", "20,20,56,56"]
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds children through /proc")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stop")
    synthetic_portrait(folder / "p.png", 96)
    synthetic_speech(folder / "s.wav", 2.0)  # 50 frames: 2 fragments of 25 frames
    synthetic_speech(folder / "s4.wav", 4.0)  # 100 frames: the reader closes after the first of 4 fragments
    return folder


def marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``AVATAR_TEST_MARK=<mark>`` (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"AVATAR_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def env(mark: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AVATAR_TEST_MARK": mark}


# One process runs the CLI (avatar_cli.cli.main, the console script's code) 20 times, each with a fresh
# pipe as standard output whose reader (a thread) closes it after 3000 bytes, as `| head -c 3000`.
DRIVER = textwrap.dedent("""
    import json, os, sys, threading, time
    from avatar_cli.cli import main
    image, wav, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = ["render", image, "-", "-o", "-", *sys.argv[4:]]
    report = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    def reader(fd, limit, closed):
        got = 0
        try:
            while got < limit:
                data = os.read(fd, limit - got)
                if not data:
                    break
                got += len(data)
        finally:
            os.close(fd)  # the reader goes away
            closed.append((time.perf_counter(), got))
    for run in range(runs + 1):  # run 0: the whole stream, read to its end
        r, w = os.pipe()
        os.dup2(w, 1); os.close(w)
        src = os.open(wav, os.O_RDONLY); os.dup2(src, 0); os.close(src)
        closed = []
        t = threading.Thread(target=reader, args=(r, 1 << 30 if run == 0 else 3000, closed))
        t.start()
        start = time.perf_counter()
        rc = main(args)
        end = time.perf_counter()
        os.dup2(null, 1)  # closes this run's pipe (the reader sees its end) and keeps fd 1 taken
        t.join()
        children = [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid()) and
                    open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[2] == str(os.getpid())]
        report.write(json.dumps({"run": run, "rc": rc, "wall": end - start, "after_close": end - closed[0][0],
                                 "bytes": closed[0][1], "children": children,
                                 "threads": threading.active_count()}) + "\\n")
        report.flush()
""")


def test_reader_closing_early_stops_every_run(media):
    """20 runs of `avatar render p.png - -o - --stream ... < s.wav | head -c 3000`: each ends (141) soon after
    its reader closed, far sooner than the whole stream, with no child process or thread left."""
    mark = uuid.uuid4().hex
    # 4 s of speech: an early run must render the first fragment (25 frames) after the same start-up as the
    # full stream (models, HuBERT, the first DiT window), so with 2 s its share of the full time is ~80 %
    run = subprocess.run([sys.executable, "-c", DRIVER, str(media / "p.png"), str(media / "s4.wav"), "20", *ARGS,
                          "-q"], capture_output=True, cwd=ROOT, env=env(mark), timeout=900)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in run.stdout.decode().splitlines()]
    full, early = rows[0], rows[1:]
    assert len(early) == 20 and full["rc"] == 0 and full["bytes"] > 3000
    for row in early:
        assert row["rc"] == 141 and row["bytes"] == 3000, row
        # the reader closes at the first fragment (frame 25 of 100); stopping takes at most one chunk's work
        assert row["after_close"] < max(2.0, 0.25 * full["wall"]), (row, full["wall"])
        assert row["wall"] < full["wall"], (row, full["wall"])  # ended before the whole stream would have
        assert row["children"] == [] and row["threads"] == 1, row
    assert marked_processes(mark) == []
    assert run.stderr == b""  # -q: the stop is silent; no traceback, no "Exception ignored"


def test_reader_gone_exits_141_with_one_line(media):
    """The console script itself, its standard output a pipe the test closes after 3000 bytes."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "render", str(media / "p.png"), "-", "-o", "-",
                             *ARGS], stdin=open(media / "s.wav", "rb"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env(mark))
    assert len(proc.stdout.read(3000)) == 3000
    proc.stdout.close()
    closed = time.perf_counter()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert time.perf_counter() - closed < 30  # in practice < 2 s; generous for a loaded CI machine
    last = err.strip().splitlines()[-1]
    assert last.startswith("avatar: the reader of standard output went away after ") and "Traceback" not in err
    assert marked_processes(mark) == []


def test_stdin_ending_mid_stream_renders_what_arrived(media, tmp_path):
    """Standard input closed after 1.2 s of the 2 s speech: the video is those 1.2 s, exit 0."""
    mark = uuid.uuid4().hex
    wav = (media / "s.wav").read_bytes()
    cut = 44 + 2 * 19200  # the header and 1.2 s of samples
    out = tmp_path / "part.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "render", str(media / "p.png"), "-", "-o", str(out),
                             *ARGS, "--json", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env(mark))
    stdout, stderr = proc.communicate(wav[:cut], timeout=300)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["samples"] == 19200 and result["frames"] == num_frames(19200) == 30
    assert probe(out)["frames"] == 30
    assert marked_processes(mark) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_exits_130_and_leaves_nothing(media, tmp_path, sig):
    """SIGTERM / Ctrl-C while the render waits for more speech (standard input open, raw PCM as from a
    microphone, frames already going to ffmpeg): exit 130 within seconds, no file, no process left."""
    mark = uuid.uuid4().hex
    out = tmp_path / "live.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "render", str(media / "p.png"), "-", "-o", str(out),
                             *ARGS, "--input-format", "s16le", "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env(mark))
    pcm = (media / "s.wav").read_bytes()[44:]
    proc.stdin.write(pcm[: 2 * 30400])  # 1.9 s of the 2 s: frames are written, then it waits for more
    proc.stdin.flush()
    deadline = time.monotonic() + 240
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:  # ffmpeg started: frames out
        time.sleep(0.1)
    if proc.poll() is not None or not out.exists():
        proc.kill()
        pytest.fail(f"no fragment written: {proc.communicate()[1].decode()[-2000:]}")
    sent = time.perf_counter()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    assert time.perf_counter() - sent < 30  # in practice < 1 s
    assert proc.stderr.read().decode().strip() == "avatar: interrupted"
    proc.stdin.close()
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert marked_processes(mark) == []


class _Endless:
    """A stand-in pipeline that yields 4 black frames per chunk and cancels the stop at the third batch."""

    def __init__(self, stop):
        self.stop = stop

    def stream(self, image, chunks, options, face_box=None, stats=None):
        for i, _ in enumerate(chunks):
            if i == 2:
                self.stop.cancel("the browser tab was closed")
            yield np.zeros((4, 16, 16, 3), np.uint8), np.arange(4) / 25


def test_cancel_stops_the_render_and_removes_the_file(tmp_path):
    """StreamStop.cancel (a UI's hook): the next wait raises StreamCancelled with the reason; no file stays."""
    stop = StreamStop()
    closed = []

    def chunks():
        try:
            while True:
                yield np.zeros(2560, np.float32)
        finally:
            closed.append(True)  # render_stream closes the speech source (pcm_chunks kills its decoder)

    with pytest.raises(StreamCancelled, match="the browser tab was closed"):
        render_stream(_Endless(stop), np.zeros((16, 16, 3), np.uint8), chunks(), tmp_path / "c.mp4",
                      RenderOptions(model="ditto"), stop=stop)
    assert closed == [True] and list(tmp_path.iterdir()) == []
    stop.close()


def test_writer_stops_when_ffmpeg_waits_on_a_gone_reader(tmp_path):
    """The writer's output is a pipe whose reader is gone while ffmpeg is blocked on its inputs: the next
    write raises ReaderGone at once (POLLERR on the watched pipe), it does not wait for ffmpeg."""
    r, w = os.pipe()
    with os.fdopen(w, "wb") as out:
        writer = StreamWriter("-", (16, 16), stdout=out)
        writer.write(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(1280, np.float32))
        os.close(r)
        start = time.perf_counter()
        with pytest.raises(ReaderGone, match="after 2 frames"):
            writer.write(np.zeros((200, 16, 16, 3), np.uint8), np.zeros(128000, np.float32))
        writer.abort()
        assert time.perf_counter() - start < 5 and writer._proc.returncode is not None


def _pts(path, stream: str) -> list[float]:
    """Presentation times (s) of the decoded frames of ``stream`` ("v" or "a"), read by ffmpeg's showinfo."""
    import re

    import imageio_ffmpeg

    filt = ["-map", "0:v", "-vf", "showinfo"] if stream == "v" else ["-map", "0:a", "-af", "ashowinfo"]
    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), *filt, "-f",
                          "null", "-"], capture_output=True, text=True).stderr
    return [float(t) for t in re.findall(r"pts_time:(\S+)", err)]


@pytest.mark.parametrize("samples", [16000, 16400])
def test_streamed_mp4_lasts_the_speech_and_stays_in_sync(tmp_path, samples):
    """Issue 23: 1 s of speech streamed to a pipe. Video and speech both start at 0 (the edit list skips the
    AAC priming; before, the video started 64 ms late and the file lasted 1.064 s), the video lasts the
    speech within one frame, the decoded speech is the speech plus at most the last AAC frame's padding,
    and a click at sample 8000 (0.5 s) decodes at sample 8000, as the white frame 12 shows at 0.48 s."""
    from avatar_cli.media.audio import load_speech

    out = tmp_path / "s.mp4"
    audio = np.zeros(samples, np.float32)
    audio[8000:8160] = 0.6
    frames = np.zeros((-(-samples // 640), 32, 32, 3), np.uint8)
    frames[12] = 255
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=open(out, "wb"))  # a pipe: not seekable
    writer = StreamWriter("-", (32, 32), stdout=cat.stdin)
    for i in range(0, len(frames), 10):
        writer.write(frames[i : i + 10], audio[i * 640 : (i + 10) * 640])
    writer.close()
    cat.stdin.close()
    assert cat.wait() == 0
    video, sound = _pts(out, "v"), _pts(out, "a")
    assert video[0] == 0 and sound[0] == 0
    assert len(video) == len(frames) and 0 <= len(video) * 640 - samples < 640  # the video: within one frame
    decoded = load_speech(out)
    assert 0 <= len(decoded) - samples < 1024  # the speech: only the last AAC frame's padding
    assert int(np.argmax(np.abs(decoded) > 0.3)) == 8000  # in sync: speech sample 8000 at 0.5 s
    assert video[12] == pytest.approx(0.48)
