"""Streaming input and output: speech decoded as it arrives, video written so it plays while written.

- :func:`pcm_chunks`: 16 kHz mono float32 chunks from standard input or a file, raw s16le read directly or
  any format decoded incrementally by the bundled ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``) as a pipe;
  optionally paced at speech speed (``--realtime``).
- :class:`StreamWriter`: one ffmpeg process that takes RGB frames on its standard input and the same PCM
  on a second pipe, and writes fragmented MP4 (``-movflags frag_keyframe+empty_moov``) or MPEG-TS to a file
  or to standard output. Audio and video start at 0 and the audio is the input's samples, so they stay
  in sync; the audio written runs with the frames (the samples of the frames handed in so far).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import AvatarError, InputError

SAMPLE_RATE = 16000
FORMATS = ("mp4", "mpegts")
#: Samples of silence the AAC encoder puts before the speech. MPEG-TS timestamps account for them; a
#: fragmented MP4 (no edit list) does not, so there the video starts this much later to stay in sync.
AAC_PRIMING = 1024
_clock = time.perf_counter  # render_stream's clock (a test replaces it)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(data: bytes) -> str:
    lines = [l.strip() for l in data.decode("utf-8", "replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no audio decoded"


def pcm_chunks(source: str | Path, input_format: str | None = None, chunk_samples: int = 1280,
               realtime: bool = False, stdin: BinaryIO | None = None,
               clock=time.perf_counter, sleep=time.sleep) -> Iterator[np.ndarray]:
    """Speech as (n,) float32 chunks at 16 kHz mono (values in [-1, 1)), read as it arrives.

    Args:
        source: a file, or ``"-"`` for standard input.
        input_format: ``"s16le"``: raw signed 16-bit little-endian 16 kHz mono, read without ffmpeg; another
            name is passed to ffmpeg as the input format (``-f``); None: ffmpeg probes (wav, mp3, flac, ...).
        chunk_samples: samples per chunk (1280 = 80 ms); the last one may be shorter.
        realtime: pace the chunks at speech speed: a chunk is yielded no earlier than its last sample's
            time after the first read (a file then behaves like a live source).
        stdin: the byte stream for ``"-"`` (default ``sys.stdin.buffer``).

    Raises:
        InputError: the input cannot be read or decoded, or holds no samples (one line, ffmpeg's last line).
    """
    stream = stdin if stdin is not None else sys.stdin.buffer
    proc = None
    if input_format == "s16le":
        reader = stream if str(source) == "-" else open(source, "rb")
    else:
        if str(source) != "-" and not Path(source).is_file():
            raise InputError(f"audio file not found: {source}")
        cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin"]
        if input_format:
            cmd += ["-f", input_format]
        cmd += ["-i", "pipe:0" if str(source) == "-" else str(source), "-vn", "-f", "s16le", "-ac", "1",
                "-ar", str(SAMPLE_RATE), "pipe:1"]
        proc = subprocess.Popen(cmd, stdin=stream if str(source) == "-" else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reader = proc.stdout
    start = None
    total = 0
    leftover = b""
    try:
        while True:
            data = reader.read(chunk_samples * 2)
            if not data:
                break
            data = leftover + data
            cut = len(data) - len(data) % 2
            data, leftover = data[:cut], data[cut:]
            if not data:
                continue
            chunk = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            total += len(chunk)
            if realtime:
                start = clock() if start is None else start
                wait = start + total / SAMPLE_RATE - clock()
                if wait > 0:
                    sleep(wait)
            yield chunk
        if proc is not None:
            err = proc.stderr.read()
            if proc.wait() != 0:
                raise InputError(f"cannot decode the speech from {'standard input' if str(source) == '-' else source}:"
                                 f" {_last_line(err)}")
        if total == 0:
            raise InputError(f"no speech samples in {'standard input' if str(source) == '-' else source}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is not stream and proc is None:
            reader.close()


class StreamWriter:
    """One ffmpeg process: RGB frames (stdin) + 16 kHz s16le mono audio (a second pipe) -> a live video.

    Video: libx264 (veryfast, zerolatency, yuv420p, keyframe every second) at 25 fps; audio: AAC.
    ``fmt="mp4"``: fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``: playable while written,
    also from a pipe), its video starting 64 ms late (:data:`AAC_PRIMING`) so that lips and speech stay in
    sync; ``"mpegts"``: MPEG-TS. ``output`` ``"-"`` writes to standard output.

    Use :meth:`write` (frames and the samples they cover, in order), then :meth:`close`; on an error,
    :meth:`abort` kills ffmpeg and removes a partly written file.

    Raises:
        AvatarError: ffmpeg failed (its last line).
    """

    def __init__(self, output: str | Path, size: tuple[int, int], fps: float = 25.0, fmt: str = "mp4",
                 crf: int = 18, stdout: BinaryIO | None = None):
        if fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
        self.output = str(output)
        self.to_stdout = self.output == "-"
        width, height = size
        read_fd, self._audio_fd = os.pipe()
        muxer = (["-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof"] if fmt == "mp4"
                 else ["-f", "mpegts"])
        cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
               *(["-itsoffset", f"{AAC_PRIMING / SAMPLE_RATE:g}"] if fmt == "mp4" else []),
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0",
               "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", f"pipe:{read_fd}",
               "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
               "-pix_fmt", "yuv420p", "-crf", str(crf), "-g", str(int(round(fps))),
               "-c:a", "aac", "-b:a", "128k", *muxer, "pipe:1" if self.to_stdout else self.output]
        out = (stdout if stdout is not None else sys.stdout.buffer) if self.to_stdout else subprocess.DEVNULL
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE,
                                      pass_fds=(read_fd,))
        os.close(read_fd)
        self._audio: queue.Queue = queue.Queue()
        self._audio_thread = threading.Thread(target=self._feed_audio, daemon=True)
        self._audio_thread.start()
        self._err = b""
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()
        self.frames = 0
        self.samples = 0

    def _read_err(self) -> None:
        self._err = self._proc.stderr.read()

    def _feed_audio(self) -> None:
        with os.fdopen(self._audio_fd, "wb") as pipe:
            while True:
                block = self._audio.get()
                if block is None:
                    return
                try:
                    pipe.write(block)
                    pipe.flush()
                except (BrokenPipeError, OSError):
                    return

    def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        """Frames (n, H, W, 3) uint8 and the float32 samples [-1, 1] that come with them (any count)."""
        if len(audio):
            pcm = (np.clip(np.asarray(audio, np.float32), -1, 32767 / 32768) * 32768).astype("<i2")
            self._audio.put(pcm.tobytes())
            self.samples += len(pcm)
        if len(frames):
            try:
                self._proc.stdin.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._fail()
            self.frames += len(frames)

    def _fail(self) -> None:
        self._audio.put(None)
        self._proc.wait()
        self._err_thread.join(5)
        raise AvatarError(f"ffmpeg failed writing {self.output}: {_last_line(self._err)}")

    def close(self) -> None:
        """Finish: close both pipes, wait for ffmpeg.

        Raises:
            AvatarError: ffmpeg exited with an error.
        """
        self._audio.put(None)
        try:
            self._proc.stdin.close()  # first: ffmpeg may wait for video before it reads the last audio
        except (BrokenPipeError, OSError):
            pass
        self._audio_thread.join()
        code = self._proc.wait()
        self._err_thread.join(5)
        if code != 0:
            raise AvatarError(f"ffmpeg failed writing {self.output}: {_last_line(self._err)}")

    def abort(self) -> None:
        """Kill ffmpeg and remove the partly written file (not standard output)."""
        self._audio.put(None)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._audio_thread.join(5)  # it closes the audio pipe (a write to the killed ffmpeg fails at once)
        if not self.to_stdout:
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
                  face_box=None, stdout: BinaryIO | None = None, stats=None, lip_box=None, side=None) -> dict:
    """Stream ``chunks`` (float32 16 kHz) through ``pipe.stream`` into a :class:`StreamWriter`
    (``face_box``, ``lip_box``, ``side``: as :class:`RenderJob` holds them).

    Timing (seconds, ``time.perf_counter``): ``first_frame_delay_s`` = first audio chunk received to the
    first frames handed to ffmpeg; a frame's delay = its audio complete (the chunk that brought sample
    ``(i + 1) * 640``, or the last) to the frame handed to ffmpeg; a frame is late when handed over after
    ``first frame out + i / fps`` (a player that starts with the first frame would stall on it).

    Returns:
        dict: output, frames, fps, duration_s, samples, width, height, wall_s, rtf, first_frame_delay_s,
        frame_delay_p50_s, frame_delay_p95_s, frames_late, format.

    Raises:
        InputError, AvatarError: bad input (the partial file is removed) or ffmpeg failing.
    """
    from collections import deque

    height, width = image.shape[:2]
    fps = options.fps
    tap = AudioTap(chunks)
    arrivals: deque = deque()  # (samples received, time), popped as frames pass them

    def tapped():
        for chunk in tap:
            arrivals.append((tap.received, _clock()))
            yield chunk

    writer = None
    delays: list[float] = []
    first_out = None
    late = 0
    start = _clock()
    try:
        for frames, times in pipe.stream(image, tapped(), options, face_box=face_box, stats=stats,
                                                 lip_box=lip_box, side=side):
            if writer is None:
                writer = StreamWriter(output, (width, height), fps, fmt, options.crf, stdout=stdout)
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
