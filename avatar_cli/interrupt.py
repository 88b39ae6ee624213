"""An interruption asked for by a signal, noticed even when Python swallowed the exception.

A signal handler that raises KeyboardInterrupt is lost when the signal lands while Python runs a
finalizer (``__del__``): Python prints "Exception ignored" and carries on. The CLI's handler also
calls :func:`request`, and the long loops (each chunk of frames written, each batch job) call
:func:`check`, so the interruption happens at the next chunk at the latest.
"""

from __future__ import annotations

_requested = False
_signal = "Ctrl-C"  # how the last stop was asked for, for the message (a default handler's Ctrl-C: "Ctrl-C")


def request(signal_name: str = "Ctrl-C") -> None:
    """Record that the user asked to stop (``signal_name``: "Ctrl-C" or "SIGTERM")."""
    global _requested, _signal
    _requested, _signal = True, signal_name


def clear() -> None:
    """Forget a request (a new command in the same process)."""
    global _requested, _signal
    _requested, _signal = False, "Ctrl-C"


def signal_name() -> str:
    """How the last stop was asked for: "Ctrl-C" (also a KeyboardInterrupt no handler recorded) or "SIGTERM"."""
    return _signal


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for and not yet acted on.

    Raises:
        KeyboardInterrupt: a stop was requested.
    """
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt
