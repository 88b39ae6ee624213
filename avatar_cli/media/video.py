"""Video out: frames streamed to ffmpeg (libx264, yuv420p), the speech muxed in as AAC.

The file is written to a temporary name next to the output and renamed only when ffmpeg has
finished; on any error or Ctrl-C the temporary file is removed, so a file at the output path is
always complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from ..errors import AvatarError, InputError

# Temporary outputs being written, so that a hard exit (a second Ctrl-C) can still remove them.
PARTIAL_FILES: set[Path] = set()


def remove_partial_files() -> None:
    """Delete every temporary output still being written (called before a hard exit)."""
    for path in list(PARTIAL_FILES):
        try:
            path.unlink()
        except OSError:
            pass


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Validate where a video will be written.

    Raises:
        InputError: the path is a folder, its folder is missing or not writable, or the file exists
            and ``overwrite`` is False.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'out.mp4'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable; choose another -o path")
    if path.exists() and not overwrite:
        raise InputError(f"output {path} exists; pass --overwrite to replace it")
    return path


class _StopWriting(BaseException):
    """Thrown into imageio-ffmpeg's writer to make it kill ffmpeg at once (a failed or cancelled render)."""


class VideoWriter:
    """Write RGB frames to an mp4, atomically, with an optional audio track.

    Use as a context manager::

        with VideoWriter("out.mp4", size=512, fps=25, audio_path="speech.wav") as writer:
            writer.write(frames)   # (n, H, W, 3) uint8, any number of calls

    Args:
        path: final output path (.mp4).
        size: frame side in pixels for square frames, or (width, height); both even (yuv420p).
        fps: frames per second.
        audio_path: a file whose first audio stream is encoded as AAC into the video; None = silent.
        crf: libx264 constant rate factor (0 = lossless ... 51; 18 looks lossless, default 18).

    Raises:
        AvatarError: ffmpeg failed (its last message is included).
    """

    def __init__(self, path: str | Path, size: int | tuple[int, int], fps: float,
                 audio_path: str | Path | None = None, crf: int = 18):
        self.path = Path(path)
        self.width, self.height = (size, size) if isinstance(size, int) else size
        self.fps = fps
        self.audio_path = audio_path
        self.crf = crf
        self.frames_written = 0
        self._tmp: Path | None = None
        self._gen = None

    def __enter__(self) -> "VideoWriter":
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial.mp4", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        PARTIAL_FILES.add(self._tmp)
        output_params = ["-crf", str(self.crf), "-preset", "medium", "-movflags", "+faststart"]
        if self.audio_path is not None:
            # imageio-ffmpeg maps the pipe's video and the file's first audio stream (-map 0:v:0
            # -map 1:a:0), so a video file given as audio contributes only its sound.
            output_params = ["-c:a", "aac", "-b:a", "192k", *output_params]
        try:
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp), (self.width, self.height), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=2, ffmpeg_log_level="error", output_params=output_params,
                audio_path=None if self.audio_path is None else str(self.audio_path),
            )
            self._gen.send(None)  # starts ffmpeg
        except BaseException as err:
            # Ctrl-C (or a failure) while ffmpeg starts: no __exit__ follows a failed __enter__, so clean up here
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append frames: (n, H, W, 3) or (H, W, 3) uint8 RGB."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames of shape {frames.shape[1:]} for a {self.width}x{self.height} video")
        self._gen.send(frames)  # one pipe write per clip: ffmpeg reads the raw frames back to back
        self.frames_written += len(frames)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self._gen.close()
                except (OSError, RuntimeError) as err:
                    message = str(err).strip().splitlines()
                    raise AvatarError(f"ffmpeg failed writing {self.path}: {message[-1] if message else err}") from None
                os.replace(self._tmp, self.path)
                PARTIAL_FILES.discard(self._tmp)
                self._tmp = None
            else:
                # Stop ffmpeg now: imageio-ffmpeg kills it on a BaseException thrown in (a plain close() would
                # wait for it to encode what it has, and warn "No frames have been written" before the first).
                try:
                    if self._gen is not None:
                        self._gen.throw(_StopWriting())
                except (_StopWriting, StopIteration, Exception):  # noqa: BLE001 - already failing; the file goes
                    pass
        finally:
            if self._tmp is not None:
                PARTIAL_FILES.discard(self._tmp)
                if self._tmp.exists():
                    self._tmp.unlink()


class BackgroundWriter:
    """Feed a :class:`VideoWriter` from a thread, so that converting and piping frames to ffmpeg
    overlaps with the sampling of the next clip. At most ``depth`` clips wait in the queue.

    ``put`` re-raises an error of the writing thread; ``close`` waits for the queue to drain;
    ``abort`` stops without draining (on an error or Ctrl-C of the main thread).
    """

    def __init__(self, writer: VideoWriter, depth: int = 2):
        import queue
        import threading

        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="avatar-video-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            frames = self.queue.get()
            if frames is None or self._stop.is_set():
                return
            if self.error is not None:
                continue  # after a failure keep draining, so that a put() never waits forever
            try:
                self.writer.write(frames)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                self.error = err

    def put(self, frames: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(frames)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._stop.set()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put(None)
        self.thread.join(timeout=30)
