"""An interruption asked for by a signal, noticed even when Python swallowed the exception.

A signal handler that raises KeyboardInterrupt is lost when the signal lands while Python runs a
finalizer (``__del__``): Python prints "Exception ignored" and carries on. The CLI's handler also
calls :func:`request`, and the long loops (each chunk of frames written, each batch job) call
:func:`check`, so the interruption happens at the next chunk at the latest.
"""

from __future__ import annotations

_requested = False


def request() -> None:
    """Record that the user asked to stop (Ctrl-C, SIGTERM)."""
    global _requested
    _requested = True


def clear() -> None:
    """Forget a request (a new command in the same process)."""
    global _requested
    _requested = False


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for and not yet acted on.

    Raises:
        KeyboardInterrupt: a stop was requested.
    """
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt
