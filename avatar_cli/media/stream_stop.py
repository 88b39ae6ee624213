"""How a live render ends early (moved from ``media/stream.py``): :class:`StreamStop` watches the output's
reader (standard output as a pipe or socket: ``POLLERR``/``POLLHUP`` once the reader is gone) and a cancel
pipe (:meth:`StreamStop.cancel`, callable from any thread: a UI whose client disconnected). Every wait of a
stream (reading the speech, writing frames and samples to ffmpeg, waiting for ffmpeg to finish) is one
``poll`` through :meth:`StreamStop.wait` (:func:`_read` for the speech). No wait depends on a thread or a
timeout: the stream runs on the calling thread alone (issue 29; ``media/stream.py`` tells why a wait cannot
block forever).
"""

from __future__ import annotations

import os
import select
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from ..errors import AvatarError

#: Exit code when the reader of standard output went away: a shell pipeline's status for SIGPIPE (128 + 13).
READER_GONE_EXIT = 141


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
