from pathlib import Path

import numpy as np
import pytest

from avatar_cli.errors import InputError
from avatar_cli.media.video import VideoWriter, check_output_path
from tests.conftest import probe, read_frames


def _frames(n: int, size: int) -> np.ndarray:
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, i % 3] = 40 + 4 * i  # a flat colour per frame
    return frames


def test_frames_and_speech_are_written_and_read_back(tmp_path, test_data):
    out = tmp_path / "v.mp4"
    frames = _frames(50, 64)
    with VideoWriter(out, size=64, fps=25, audio_path=test_data / "speech_espeak.wav", crf=0) as writer:
        writer.write(frames[:20])
        writer.write(frames[20:])
    info = probe(out)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (50, 25.0, 64, 64)
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["audio_codec"] == "aac"
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    back = read_frames(out)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3  # near-lossless, right order
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_silent_video_has_no_audio_stream(tmp_path):
    with VideoWriter(tmp_path / "s.mp4", size=64, fps=10) as writer:
        writer.write(_frames(5, 64))
    info = probe(tmp_path / "s.mp4")
    assert info["frames"] == 5 and info["audio_codec"] is None and info["video_streams"] == 1


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "x.mp4", size=64, fps=25) as writer:
            writer.write(_frames(3, 64))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_ffmpeg_starts_leaves_nothing(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside VideoWriter.__enter__ (after its temporary file exists, while ffmpeg starts):
    no __exit__ runs for a failed __enter__, so __enter__ itself removes the file (CI saw it left behind)."""
    from avatar_cli.media import video

    seen = []

    def interrupted(path, *args, **kwargs):
        seen.append(path)
        assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]  # the temporary file exists by then
        raise KeyboardInterrupt

    monkeypatch.setattr(video.imageio_ffmpeg, "write_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(tmp_path / "x.mp4", size=64, fps=25):
            pytest.fail("the body must not run")
    assert len(seen) == 1 and list(tmp_path.iterdir()) == [] and not video.PARTIAL_FILES


def test_output_path_checks(tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "o.mp4")
    with pytest.raises(InputError, match="--overwrite"):
        check_output_path(tmp_path / "exists.mp4")
    assert check_output_path(tmp_path / "exists.mp4", overwrite=True) == tmp_path / "exists.mp4"


def test_background_writer_reports_a_failure_without_blocking(tmp_path):
    """The writing thread fails on its first clip while the queue is full: put() and close() must
    still return (no deadlock) and close() raises the thread's error."""
    import threading
    import time

    from avatar_cli.media.video import BackgroundWriter

    class FailingWriter:
        def __init__(self):
            self.started = threading.Event()
            self.release = threading.Event()
            self.calls = 0

        def write(self, frames):
            self.calls += 1
            self.started.set()
            self.release.wait(10)
            raise OSError("disk full")

    writer = FailingWriter()
    sink = BackgroundWriter(writer, depth=2)
    clip = np.zeros((4, 64, 64, 3), np.uint8)
    sink.put(clip)
    assert writer.started.wait(10)
    sink.put(clip)
    sink.put(clip)  # the queue is now full, the writer stuck in its failing call
    done = threading.Event()

    def finish():
        with pytest.raises(OSError, match="disk full"):
            for _ in range(5):
                sink.put(clip)
            sink.close()
        done.set()

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    time.sleep(0.3)  # finish() is now waiting in put() on the full queue
    writer.release.set()
    assert done.wait(20), "BackgroundWriter blocked after its thread failed"
    assert writer.calls == 1  # the clips after the failure are dropped, not written
