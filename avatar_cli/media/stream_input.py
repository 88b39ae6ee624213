"""Streaming input (moved from ``media/stream.py``): :func:`pcm_chunks`, speech as 16 kHz mono float32
chunks from standard input or a file, read as it arrives: raw s16le read directly, any other format decoded
incrementally by the bundled ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``) as a pipe; optionally paced at
speech speed (``--realtime``). Each wait for the speech honours a :class:`~avatar_cli.media.stream_stop.StreamStop`.
"""

from __future__ import annotations

import os
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


#: ffmpeg input options for speech on standard input: decide the format and stream layout from the first
#: bytes instead of waiting for up to 5 MB / 5 s of input (``-probesize``: bytes read to find the streams'
#: parameters, 32 the least; ``-analyzeduration 0``: no time-based probing). The container is still
#: recognised from the first 2 KiB (ffmpeg's format probe), so WAV, MP3, FLAC and Ogg need no ``-f``.
STDIN_PROBE = ("-probesize", "32", "-analyzeduration", "0")
#: WAV format tags ffmpeg's raw PCM demuxers take, (tag, bits) -> ``-f`` name (1: integer PCM, 3: float).
_WAV_RAW = {(1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le", (3, 64): "f64le"}


def _read_exact(pull, size: int) -> bytes:
    """``size`` bytes from ``pull`` (``n -> up to n bytes, b"" at the end``), fewer only at the end."""
    out = bytearray()
    while len(out) < size:
        data = pull(size - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def wav_stream_header(pull) -> tuple[bytes, dict | None]:
    """Read a WAV header from a stream that cannot seek, up to the start of its samples.

    ffmpeg's WAV demuxer reads 64 KiB of samples before its first output to look for S/PDIF data in PCM
    (``libavformat/wavdec.c``, ``set_spdif``): two seconds of 16 kHz mono speech arriving live. Reading the
    header here lets the samples go to ffmpeg's raw PCM demuxer (or, at 16 kHz mono 16-bit, straight to the
    caller) instead.

    Args:
        pull: ``n -> up to n bytes`` (``b""`` at the end); it is asked for exactly the header's bytes.

    Returns:
        (the bytes read, the layout or None). The layout: ``{"format": ffmpeg raw format (s16le, s24le, s32le,
        f32le, f64le), "rate": Hz, "channels", "data_bytes": the data chunk's size, None when the writer
        left it open (0 or 0xFFFFFFFF, as streaming writers do)}``. None when the bytes are no RIFF/WAVE
        header or its samples are not plain PCM (the caller then hands the bytes read and the rest to ffmpeg).
    """
    import struct

    head = _read_exact(pull, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return head, None
    read, fmt = bytearray(head), None
    for _ in range(64):  # chunks before the samples: fmt, LIST, fact, bext, ...
        tag = _read_exact(pull, 8)
        read += tag
        if len(tag) < 8:
            return bytes(read), None
        name, size = tag[:4], struct.unpack("<I", tag[4:])[0]
        if name == b"data":
            if fmt is None:
                return bytes(read), None
            return bytes(read), {**fmt, "data_bytes": None if size in (0, 0xFFFFFFFF) else size}
        if size > 1 << 20:
            return bytes(read), None
        chunk = _read_exact(pull, size + (size & 1))  # RIFF chunks are padded to an even size
        read += chunk
        if name == b"fmt " and len(chunk) >= 16:
            tag_id, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
            if tag_id == 0xFFFE and len(chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first 2 bytes
                tag_id = struct.unpack("<H", chunk[24:26])[0]
            raw = _WAV_RAW.get((tag_id, bits))
            fmt = None if raw is None or not channels or not rate else {"format": raw, "rate": rate,
                                                                           "channels": channels}
    return bytes(read), None


def _feed(pull, prefix: bytes, limit: int | None, sink) -> None:
    """Copy ``prefix`` then up to ``limit`` bytes of ``pull`` (all with None) into ``sink`` (ffmpeg's standard
    input), then close it; ffmpeg gone (a broken pipe) ends the copy quietly (its exit status tells why)."""
    try:
        sink.write(prefix)
        sink.flush()
        left = limit
        while left is None or left > 0:
            data = pull(65536 if left is None else min(65536, left))
            if not data:
                break
            sink.write(data)
            sink.flush()  # what arrived goes on at once
            if left is not None:
                left -= len(data)
    except (OSError, ValueError):
        pass
    finally:
        try:
            sink.close()
        except OSError:
            pass


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
            On standard input ffmpeg probes only the first bytes (:data:`STDIN_PROBE`), and a PCM WAV's header
            is read here (:func:`wav_stream_header`): its samples reach the caller as they arrive (16 kHz mono
            16-bit without ffmpeg), not after ffmpeg's 64 KiB S/PDIF check.
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
    limit = None  # bytes of samples to read at most (a WAV's data chunk on standard input)
    piped = str(source) == "-"
    if piped:  # read the descriptor itself: a buffered read would take bytes meant for ffmpeg
        try:
            fd = stream.fileno()
            pull = lambda n: os.read(fd, n)  # noqa: E731
        except (AttributeError, OSError, ValueError):
            pull = getattr(stream, "read1", stream.read)
    feed = None  # (bytes already read, bytes of the rest to copy) when ffmpeg gets standard input through us
    layout = None
    if piped and input_format in (None, "wav"):
        head, layout = wav_stream_header(pull)
        if layout is not None and (layout["format"], layout["rate"], layout["channels"]) == ("s16le", SAMPLE_RATE, 1):
            input_format, limit = "s16le", layout["data_bytes"]  # already the samples wanted: no ffmpeg
        elif layout is not None:
            feed = (b"", layout["data_bytes"])
        else:
            feed = (head, None)
    if input_format == "s16le":
        reader = stream if piped else open(source, "rb")
    else:
        if not piped and not Path(source).is_file():
            raise InputError(f"audio file not found: {source}")
        cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin"]
        if piped:
            cmd += STDIN_PROBE
        if layout is not None:  # a WAV header read here: ffmpeg decodes the raw samples that follow
            cmd += ["-f", layout["format"], "-ar", str(layout["rate"]), "-ac", str(layout["channels"])]
        elif input_format:
            cmd += ["-f", input_format]
        cmd += ["-i", "pipe:0" if piped else str(source), "-vn", "-f", "s16le", "-ac", "1",
                "-ar", str(SAMPLE_RATE)]
        if piped:
            cmd += ["-flush_packets", "1"]  # each decoded packet out at once, not when 32 KiB are buffered
        cmd += ["pipe:1"]
        # ffmpeg's messages go to a file, not a pipe: a pipe nobody reads while we read its output would
        # block the decoder once 64 KiB of messages (a long corrupt input) filled it.
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdin=(subprocess.PIPE if feed is not None else stream) if piped
                                else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        reader = proc.stdout
        if feed is not None:
            import threading

            threading.Thread(target=_feed, args=(pull, *feed, proc.stdin), name="avatar-stdin-feed",
                             daemon=True).start()
    start = None
    total = 0
    leftover = b""
    try:
        while True:
            want = chunk_samples * 2 if limit is None else min(chunk_samples * 2, limit)
            if want <= 0:
                break
            data = _read(reader, want, stop)
            if limit is not None:
                limit -= len(data)
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
