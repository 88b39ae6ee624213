"""Streaming input and output: speech decoded as it arrives, video written so it plays while written.

- :func:`pcm_chunks` (``media/stream_input.py``, re-exported): 16 kHz mono float32 chunks from standard input
  or a file, raw s16le read directly or any format decoded incrementally by the bundled ffmpeg
  (``imageio_ffmpeg.get_ffmpeg_exe()``) as a pipe; optionally paced at speech speed (``--realtime``).
- :class:`StreamWriter`: one ffmpeg process that takes RGB frames on its standard input and the same PCM
  on a second pipe, and writes fragmented MP4 (``-movflags frag_keyframe+delay_moov``) or MPEG-TS to a file
  or to standard output. Audio and video start at 0 and the audio is the input's samples, so they stay
  in sync; the audio written runs with the frames (the samples of the frames handed in so far).
- :class:`StreamStop` (``media/stream_stop.py``, re-exported with :class:`ReaderGone`,
  :class:`StreamCancelled` and :data:`READER_GONE_EXIT`): how a live render ends early. Every wait of a
  stream (reading the speech, writing frames and samples to ffmpeg, waiting for ffmpeg to finish) is one
  ``poll`` that also watches the output's reader (standard output as a pipe or socket: ``POLLERR``/``POLLHUP``
  once the reader is gone) and a cancel pipe (:meth:`StreamStop.cancel`, callable from any thread: a UI whose
  client disconnected). No wait depends on a thread or a timeout: the stream runs on the calling thread alone.
- :func:`render_stream`: a pipeline's ``stream`` into a :class:`StreamWriter`, with its timing.

Why a wait cannot block forever (issue 29; before, a reader closing the pipe could hang the render):
the old writer fed the audio pipe from a thread while the main thread wrote video. When the reader went
away, ffmpeg's muxer failed, its video demuxer stopped reading while its audio demuxer stayed blocked in
``read()`` on the audio pipe, and ffmpeg waited for that demuxer: the main thread blocked writing video
to an ffmpeg that no longer read it, the audio thread blocked on its queue waiting for the main thread,
ffmpeg on the audio thread. Now both pipes are non-blocking and written by one ``poll`` loop: a pipe whose
reader (ffmpeg) is gone reports ``POLLERR`` and the stream stops, killing ffmpeg.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import AvatarError, InputError
from .stream_input import (  # noqa: F401 (moved; re-exported)
    SAMPLE_RATE, STDIN_PROBE, _ffmpeg, _last_line, _read_log, pcm_chunks, wav_stream_header)
from .stream_stop import READER_GONE_EXIT, ReaderGone, StreamCancelled, StreamStop  # noqa: F401 (moved; re-exported)

FORMATS = ("mp4", "mpegts")
#: Samples of silence the AAC encoder puts before the speech. MPEG-TS timestamps account for them; the
#: fragmented MP4 skips them with an edit list (``delay_moov``: the moov, with the edit list, is written
#: with the first fragment, once the encoder's delay is known), so both streams start at 0.
AAC_PRIMING = 1024
_clock = time.perf_counter  # render_stream's clock (a test replaces it)


class StreamWriter:
    """One ffmpeg process: RGB frames (stdin) + 16 kHz s16le mono audio (a second pipe) -> a live video.

    Video: libx264 (veryfast, zerolatency, yuv420p, keyframe every second) at 25 fps; audio: AAC.
    ``fmt="mp4"``: fragmented MP4 (``frag_keyframe+delay_moov+default_base_moof``: playable while written,
    also from a pipe; the moov goes out with the first fragment, carrying an edit list that skips the AAC
    encoder's :data:`AAC_PRIMING` samples: video and speech both start at 0, the video lasts
    ``ceil(samples / 640)`` frames and the decoded speech its samples rounded up to a whole 1024-sample AAC
    frame; docs/ditto.md "A/V sync"); ``"mpegts"``: MPEG-TS. ``output`` ``"-"`` writes to standard output.

    Use :meth:`write` (frames and the samples they cover, in order), then :meth:`close`; on an error,
    :meth:`abort` kills ffmpeg and removes a partly written file. Both pipes to ffmpeg are non-blocking and
    written by one ``poll`` loop on the calling thread (:meth:`StreamStop.wait`): no thread, and no write
    that can wait on a reader that is gone.

    Args:
        stop: the :class:`StreamStop` every wait honours (a new one watching standard output when None).

    Raises:
        AvatarError: ffmpeg failed (its last line).
        ReaderGone: the reader of standard output went away (ffmpeg is killed).
        StreamCancelled: ``stop.cancel()`` was called.
    """

    def __init__(self, output: str | Path, size: tuple[int, int], fps: float = 25.0, fmt: str = "mp4",
                 crf: int = 18, stdout: BinaryIO | None = None, stop: StreamStop | None = None):
        if fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
        self.output = str(output)
        self.to_stdout = self.output == "-"
        self.stop = stop if stop is not None else StreamStop.for_output(output, stdout)
        width, height = size
        read_fd, self._audio_fd = os.pipe()
        muxer = (["-f", "mp4", "-movflags", "frag_keyframe+delay_moov+default_base_moof"] if fmt == "mp4"
                 else ["-f", "mpegts"])
        cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0",
               "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", f"pipe:{read_fd}",
               "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
               "-pix_fmt", "yuv420p", "-crf", str(crf), "-g", str(int(round(fps))),
               "-c:a", "aac", "-b:a", "128k", *muxer, "pipe:1" if self.to_stdout else self.output]
        out = (stdout if stdout is not None else sys.stdout.buffer) if self.to_stdout else subprocess.DEVNULL
        self._log = tempfile.TemporaryFile()  # ffmpeg's messages: a file cannot fill up and block ffmpeg
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=self._log,
                                          pass_fds=(read_fd,))
        finally:
            os.close(read_fd)
        self._video_fd = self._proc.stdin.fileno()
        os.set_blocking(self._video_fd, False)
        os.set_blocking(self._audio_fd, False)
        try:  # ffmpeg's exit as a descriptor (Linux >= 5.3): close() waits on it and on the stop together
            self._pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._pending = bytearray()  # samples not yet taken by ffmpeg
        if not self.to_stdout:
            from .video import PARTIAL_FILES

            PARTIAL_FILES.add(Path(self.output))  # a second Ctrl-C's hard exit removes it
        self.frames = 0
        self.samples = 0

    def _pump(self, video: memoryview | None) -> None:
        """Write ``video`` entirely (and as much pending audio as ffmpeg takes meanwhile); with ``video``
        None, write all pending audio. Each wait is :meth:`StreamStop.wait` on both pipes."""
        while (video is not None and len(video)) or (video is None and self._pending):
            fds = {}
            if video is not None and len(video):
                fds[self._video_fd] = select.POLLOUT
            if self._pending and self._audio_fd is not None:
                fds[self._audio_fd] = select.POLLOUT
            ready = self.stop.wait(fds)
            for fd, events in ready.items():
                if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    self._fail()  # ffmpeg closed the pipe: it exited
                try:
                    if fd == self._video_fd:
                        video = video[os.write(fd, video[: 1 << 20]):]
                    else:
                        del self._pending[: os.write(fd, self._pending[: 1 << 16])]
                except BlockingIOError:
                    pass
                except OSError:  # EPIPE: ffmpeg exited
                    self._fail()

    def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        """Frames (n, H, W, 3) uint8 and the float32 samples [-1, 1] that come with them (any count).

        Returns once ffmpeg has taken the frames; samples ffmpeg does not take yet stay pending (ffmpeg may
        want the next frames first) and go with the next call or :meth:`close`.
        """
        self.stop.check()
        if len(audio):
            pcm = (np.clip(np.asarray(audio, np.float32), -1, 32767 / 32768) * 32768).astype("<i2")
            self._pending += pcm.tobytes()
            self.samples += len(pcm)
        if len(frames):
            self._pump(memoryview(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()))
            self.frames += len(frames)
            self.stop.frames = self.frames
        elif self._pending:
            try:
                del self._pending[: os.write(self._audio_fd, self._pending[: 1 << 16])]
            except BlockingIOError:
                pass
            except OSError:
                self._fail()

    def _fail(self) -> None:
        """ffmpeg exited early: the reader gone (ReaderGone) or ffmpeg's own error (AvatarError)."""
        if self.stop.reader_gone():
            raise self.stop._gone()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self.stop.reader_gone():
            raise self.stop._gone()
        raise AvatarError(f"ffmpeg failed writing {self.output}: {_last_line(_read_log(self._log))}")

    def close(self) -> None:
        """Finish: close the video pipe, hand over the last samples, close the audio pipe, wait for ffmpeg.

        Raises:
            AvatarError: ffmpeg exited with an error.
            ReaderGone, StreamCancelled: from the stop, while ffmpeg writes its last fragments.
        """
        self._close_pipe("_video_fd")  # first: ffmpeg may wait for the end of the video before the last audio
        self._pump(None)
        self._close_pipe("_audio_fd")
        # ffmpeg now only encodes what it holds and writes it out; it can block on its output only while a
        # reader is there and slow (a paused player): the pidfd wait also watches that reader and the cancel.
        if self._pidfd is not None:
            self.stop.wait({self._pidfd: select.POLLIN})
        code = self._proc.wait()
        self._release()
        if code != 0:
            self._fail()

    def _close_pipe(self, name: str) -> None:
        fd = getattr(self, name)
        if fd is None:
            return
        setattr(self, name, None)
        try:
            if name == "_video_fd":
                self._proc.stdin.close()
            else:
                os.close(fd)
        except OSError:
            pass

    def _release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if not self.to_stdout:
            from .video import PARTIAL_FILES

            PARTIAL_FILES.discard(Path(self.output))

    def abort(self) -> None:
        """Kill ffmpeg and remove the partly written file (not standard output, nor a named pipe)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()  # after SIGKILL: at once
        self._close_pipe("_video_fd")
        self._close_pipe("_audio_fd")
        self._release()
        if not self.to_stdout and Path(self.output).is_file():
            Path(self.output).unlink(missing_ok=True)


class AudioTap:
    """Passes audio chunks through while keeping the samples not yet muxed, so that the writer gets, with
    each batch of frames, the samples those frames cover (frame i: samples ``i * 640 .. (i + 1) * 640``).
    Holds only the samples between the last muxed frame and the newest chunk (flat memory)."""

    def __init__(self, chunks, frame_samples: int = 640):
        self.chunks = chunks
        self.frame_samples = frame_samples
        self.buffer = np.zeros(0, np.float32)
        self.received = 0
        self.taken = 0
        self.first_at: float | None = None
        self.ended = False

    def __iter__(self):
        for chunk in self.chunks:
            chunk = np.asarray(chunk, np.float32).reshape(-1)
            if self.first_at is None:
                self.first_at = _clock()
            self.buffer = np.concatenate([self.buffer, chunk])
            self.received += len(chunk)
            yield chunk
        self.ended = True

    def take(self, frames: int, last: bool = False) -> np.ndarray:
        """The samples of the next ``frames`` frames (all the rest when ``last``)."""
        n = len(self.buffer) if last else min(len(self.buffer), frames * self.frame_samples)
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        self.taken += n
        return out


def render_stream(pipe, image: np.ndarray, chunks, output: str | Path, options, *, fmt: str = "mp4",
                  face_box=None, stdout: BinaryIO | None = None, stats=None, lip_box=None, side=None,
                  stop: StreamStop | None = None) -> dict:
    """Stream ``chunks`` (float32 16 kHz) through ``pipe.stream`` into a :class:`StreamWriter`
    (``face_box``, ``lip_box``, ``side``: as :class:`RenderJob` holds them; the latter two are passed on
    only when given, for the U-Net family's masks).

    Timing (seconds, ``time.perf_counter``): ``first_frame_delay_s`` = first audio chunk received to the
    first frames handed to ffmpeg; a frame's delay = its audio complete (the chunk that brought sample
    ``(i + 1) * 640``, or the last) to the frame handed to ffmpeg; a frame is late when handed over after
    ``first frame out + i / fps`` (a player that starts with the first frame would stall on it).

    Stopping early: ``stop`` (a :class:`StreamStop`; one watching standard output when None) is looked at
    with every audio chunk and every frame batch and honoured by every wait of the writer, so the render
    stops within one chunk of computation once the reader of standard output is gone, or once
    ``stop.cancel(reason)`` is called from another thread (the hook for a UI whose live client
    disconnected). Then, as on any error or KeyboardInterrupt: ffmpeg is killed, the speech decoder of
    :func:`pcm_chunks` is closed (killed), a partly written file is removed, and the error propagates.

    Returns:
        dict: output, frames, fps, duration_s, samples, width, height, wall_s, rtf, first_frame_delay_s,
        frame_delay_p50_s, frame_delay_p95_s, frames_late, format.

    Raises:
        InputError, AvatarError: bad input (the partial file is removed) or ffmpeg failing.
        ReaderGone: the reader of standard output went away (exit code 141 in the CLI).
        StreamCancelled: ``stop.cancel()`` was called.
    """
    from collections import deque

    from .. import interrupt

    height, width = image.shape[:2]
    fps = options.fps
    own_stop = stop is None
    stop = StreamStop.for_output(output, stdout) if own_stop else stop
    tap = AudioTap(chunks)
    arrivals: deque = deque()  # (samples received, time), popped as frames pass them

    def tapped():
        for chunk in tap:
            arrivals.append((tap.received, _clock()))
            stop.check()  # a reader gone or a cancel, noticed with every chunk of speech
            yield chunk

    writer = None
    delays: list[float] = []
    first_out = None
    late = 0
    start = _clock()
    boxes = {k: v for k, v in (("lip_box", lip_box), ("side", side)) if v is not None}
    frames_out = pipe.stream(image, tapped(), options, face_box=face_box, stats=stats, **boxes)
    try:
        for frames, times in frames_out:
            interrupt.check()  # a Ctrl-C/SIGTERM whose KeyboardInterrupt was swallowed (in a __del__)
            if writer is None:
                writer = StreamWriter(output, (width, height), fps, fmt, options.crf, stdout=stdout, stop=stop)
            writer.write(frames, tap.take(len(frames)))
            now = _clock()
            first_out = now if first_out is None else first_out
            for i in (writer.frames - len(frames) + np.arange(len(frames))):
                need = (i + 1) * 640
                while len(arrivals) > 1 and arrivals[0][0] < need:
                    arrivals.popleft()
                delays.append(now - arrivals[0][1])
                late += now > first_out + i / fps + 1e-3
        if writer is None:
            raise InputError("the stream produced no frames")
        writer.write(np.zeros((0, height, width, 3), np.uint8), tap.take(0, last=True))
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        # Close the generators now, not when the traceback is dropped: pcm_chunks kills its ffmpeg decoder
        # (which may still be reading standard input) in its finally.
        for gen in (frames_out, chunks):
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        if own_stop:
            stop.close()
    wall = _clock() - start
    duration = tap.received / SAMPLE_RATE
    ffd = None if first_out is None or tap.first_at is None else first_out - tap.first_at
    d = np.asarray(delays) if delays else np.zeros(1)
    return {"output": str(output), "format": fmt, "frames": writer.frames, "fps": fps,
            "duration_s": round(duration, 4), "samples": tap.received, "width": width, "height": height,
            "wall_s": round(wall, 4), "rtf": round(wall / max(duration, 1e-9), 4),
            "first_frame_delay_s": None if ffd is None else round(ffd, 4),
            "frame_delay_p50_s": round(float(np.percentile(d, 50)), 4),
            "frame_delay_p95_s": round(float(np.percentile(d, 95)), 4), "frames_late": int(late)}
