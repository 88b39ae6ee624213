"""Streaming input (moved from ``media/stream.py``): :func:`pcm_chunks`, speech as 16 kHz mono float32
chunks from standard input or a file, read as it arrives: raw s16le read directly, any other format decoded
incrementally by the bundled ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``) as a pipe; optionally paced at
speech speed (``--realtime``). Each wait for the speech honours a :class:`~avatar_cli.media.stream_stop.StreamStop`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from .stream_stop import StreamStop, _read

SAMPLE_RATE = 16000


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(data: bytes) -> str:
    lines = [l.strip() for l in data.decode("utf-8", "replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no audio decoded"


def _read_log(log) -> bytes:
    log.seek(0)
    return log.read()


def pcm_chunks(source: str | Path, input_format: str | None = None, chunk_samples: int = 1280,
               realtime: bool = False, stdin: BinaryIO | None = None,
               clock=time.perf_counter, sleep=time.sleep, stop: StreamStop | None = None) -> Iterator[np.ndarray]:
    """Speech as (n,) float32 chunks at 16 kHz mono (values in [-1, 1)), read as it arrives.

    The input ending early (standard input closed mid-stream, a truncated file) is the end of the speech: the
    chunks end there. Closing the generator (or its end) kills the ffmpeg decoder and waits for it.

    Args:
        source: a file, or ``"-"`` for standard input.
        input_format: ``"s16le"``: raw signed 16-bit little-endian 16 kHz mono, read without ffmpeg; another
            name is passed to ffmpeg as the input format (``-f``); None: ffmpeg probes (wav, mp3, flac, ...).
        chunk_samples: samples per chunk (1280 = 80 ms); the last one may be shorter.
        realtime: pace the chunks at speech speed: a chunk is yielded no earlier than its last sample's
            time after the first read (a file then behaves like a live source).
        stdin: the byte stream for ``"-"`` (default ``sys.stdin.buffer``).
        stop: a :class:`StreamStop`: waiting for the speech then ends as soon as the output's reader goes
            or the render is cancelled.

    Raises:
        InputError: the input cannot be read or decoded, or holds no samples (one line, ffmpeg's last line).
        ReaderGone, StreamCancelled: from ``stop``.
    """
    stream = stdin if stdin is not None else sys.stdin.buffer
    proc = None
    log = None
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
        # ffmpeg's messages go to a file, not a pipe: a pipe nobody reads while we read its output would
        # block the decoder once 64 KiB of messages (a long corrupt input) filled it.
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdin=stream if str(source) == "-" else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log)
        reader = proc.stdout
    start = None
    total = 0
    leftover = b""
    try:
        while True:
            data = _read(reader, chunk_samples * 2, stop)
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
            # its output ended: ffmpeg is exiting, the wait is short
            if proc.wait() != 0:
                raise InputError(f"cannot decode the speech from {'standard input' if str(source) == '-' else source}:"
                                 f" {_last_line(_read_log(log))}")
        if total == 0:
            raise InputError(f"no speech samples in {'standard input' if str(source) == '-' else source}")
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # SIGKILL: the wait below ends at once
            proc.wait()
            proc.stdout.close()
            log.close()
        if reader is not stream and proc is None:
            reader.close()
