"""Streaming input and output: speech decoded as it arrives, video written so it plays while written.

- :func:`pcm_chunks`: 16 kHz mono float32 chunks from standard input or a file, raw s16le read directly or
  any format decoded incrementally by the bundled ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``) as a pipe;
  optionally paced at speech speed (``--realtime``).
- :class:`StreamWriter`: one ffmpeg process that takes RGB frames on its standard input and the same PCM
  on a second pipe, and writes fragmented MP4 (``-movflags frag_keyframe+delay_moov``) or MPEG-TS to a file
  or to standard output. Audio and video start at 0 and the audio is the input's samples, so they stay
  in sync; the audio written runs with the frames (the samples of the frames handed in so far).
- :class:`StreamStop`: how a live render ends early. Every wait of a stream (reading the speech, writing
  frames and samples to ffmpeg, waiting for ffmpeg to finish) is one ``poll`` that also watches the
  output's reader (standard output as a pipe or socket: ``POLLERR``/``POLLHUP`` once the reader is gone)
  and a cancel pipe (:meth:`StreamStop.cancel`, callable from any thread: a UI whose client disconnected).
  No wait depends on a thread or a timeout: the stream runs on the calling thread alone.

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
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import AvatarError, InputError

SAMPLE_RATE = 16000
FORMATS = ("mp4", "mpegts")
#: Samples of silence the AAC encoder puts before the speech. MPEG-TS timestamps account for them; the
#: fragmented MP4 skips them with an edit list (``delay_moov``: the moov, with the edit list, is written
#: with the first fragment, once the encoder's delay is known), so both streams start at 0.
AAC_PRIMING = 1024
#: Exit code when the reader of standard output went away: a shell pipeline's status for SIGPIPE (128 + 13).
READER_GONE_EXIT = 141
_clock = time.perf_counter  # render_stream's clock (a test replaces it)


class ReaderGone(AvatarError):
    """The output can no longer be written: the reader of standard output (a pipe or socket) went away.

    ``exit_code`` 141, a shell pipeline's status for SIGPIPE."""

    exit_code = READER_GONE_EXIT


class StreamCancelled(AvatarError):
    """:meth:`StreamStop.cancel` was called (a UI whose live client disconnected); the message is its reason."""


def _is_pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class StreamStop:
    """Ends a live render early and promptly: its reader gone or :meth:`cancel` called.

    Args:
        watch: file descriptors of the output (standard output when the video goes there); one that is a
            pipe or a socket is watched: ``poll`` reports ``POLLERR`` (a pipe with no reader left) or
            ``POLLHUP`` (a socket whose peer closed) at once, even while ffmpeg is the one writing to it.
            Regular files and terminals cannot lose their reader and are not watched.

    :meth:`wait` is the only blocking call of a stream: it returns when one of the given descriptors is
    ready, and raises :class:`ReaderGone` or :class:`StreamCancelled` instead as soon as the reader goes or
    :meth:`cancel` is called. A signal (Ctrl-C, SIGTERM) interrupts it like any system call (the CLI's
    handler raises KeyboardInterrupt). Linux and macOS (``select.poll``).
    """

    def __init__(self, watch: tuple[int, ...] | list[int] = ()):
        self.watch = [fd for fd in watch if _is_pipe_or_socket(fd)]
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.reason: str | None = None
        self.frames = 0  # frames handed to ffmpeg so far (for the message)

    @classmethod
    def for_output(cls, output: str | Path, stdout: BinaryIO | None = None) -> "StreamStop":
        """A stop that watches standard output's reader when ``output`` is ``"-"``."""
        if str(output) != "-":
            return cls()
        stream = stdout if stdout is not None else sys.stdout.buffer
        try:
            return cls((stream.fileno(),))
        except (AttributeError, OSError, ValueError):
            return cls()

    def cancel(self, reason: str = "the live client disconnected") -> None:
        """Stop the render from any thread (a signal handler too): its next wait raises StreamCancelled."""
        if self.reason is None:
            self.reason = reason
        if self._w < 0:
            return  # closed: the render is over
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass  # already woken

    def _gone(self) -> ReaderGone:
        return ReaderGone(f"the reader of standard output went away after {self.frames} frames; the render stopped")

    def wait(self, fds: dict[int, int]) -> dict[int, int]:
        """Block until one of ``fds`` (descriptor -> ``select.POLLIN``/``POLLOUT``) is ready.

        Returns:
            descriptor -> the events ``poll`` reported (``POLLERR``/``POLLHUP`` too: a pipe's other end closed).

        Raises:
            ReaderGone: the watched output's reader went away.
            StreamCancelled: :meth:`cancel` was called.
        """
        poller = select.poll()
        for fd, events in fds.items():
            poller.register(fd, events)
        poller.register(self._r, select.POLLIN)
        for fd in self.watch:
            if fd not in fds:
                poller.register(fd, 0)  # POLLERR/POLLHUP are always reported
        while True:
            # No timeout: every party this can wait for is one of the registered descriptors (ffmpeg's
            # pipes report POLLERR/POLLHUP when ffmpeg exits), and a signal interrupts poll.
            ready = dict(poller.poll())
            self.check(ready)
            hits = {fd: ev for fd, ev in ready.items() if fd in fds}
            if hits:
                return hits

    def check(self, ready: dict[int, int] | None = None) -> None:
        """Raise if the render must stop (a non-blocking look when ``ready`` is None).

        Raises:
            ReaderGone, StreamCancelled: as :meth:`wait`.
        """
        if ready is None:
            poller = select.poll()
            poller.register(self._r, select.POLLIN)
            for fd in self.watch:
                poller.register(fd, 0)
            ready = dict(poller.poll(0))
        if self._r in ready or self.reason is not None:
            raise StreamCancelled(self.reason or "cancelled")
        if any(ready.get(fd, 0) & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for fd in self.watch):
            raise self._gone()

    def reader_gone(self) -> bool:
        """Whether the watched output's reader went away (a non-blocking look)."""
        try:
            self.check()
        except ReaderGone:
            return True
        except StreamCancelled:
            return False
        return False

    def close(self) -> None:
        """Release the cancel pipe (once: a second call closes nothing, its numbers may be reused by then)."""
        fds, self._r, self._w = (self._r, self._w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(data: bytes) -> str:
    lines = [l.strip() for l in data.decode("utf-8", "replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no audio decoded"


def _read_log(log) -> bytes:
    log.seek(0)
    return log.read()


def _read(reader, size: int, stop: StreamStop | None) -> bytes:
    """Up to ``size`` bytes, fewer only at the end (``BufferedReader.read`` semantics); with ``stop``, each wait
    is :meth:`StreamStop.wait`, so that a reader gone or a cancel is noticed while the speech is awaited.
    The descriptor is read directly (``os.read``): nothing else reads it, so no bytes wait in a buffer."""
    try:
        fd = reader.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if stop is None or fd is None:
        return reader.read(size)
    out = bytearray()
    while len(out) < size:
        stop.wait({fd: select.POLLIN})
        data = os.read(fd, size - len(out))
        if not data:
            break
        out += data
    return bytes(out)


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
