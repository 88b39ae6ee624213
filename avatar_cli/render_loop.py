"""The frame loop's work beside the networks (issue 25): paste-back overlapped with the next chunk's
warp + decoder, pinned host copies.

Ditto's offline loop (``pipelines/ditto.py``) is, per chunk of frames: MotionStitch -> warp -> decoder
-> paste-back -> writer. The writer already runs in a background thread (``media/video.py``);
:class:`Pipelined` moves the paste-back there too, so that while chunk ``n`` is pasted, chunk ``n + 1``
goes through the networks. Results come back in order, exceptions are re-raised in the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def pipelined(items: Iterable[T], finish: Callable[[T], R], wait: Callable[[], object] | None = None) -> Iterator[R]:
    """``finish(item)`` for each item, in order, each computed in one background thread while the
    next item is produced by ``items`` (which does the networks' work when it is a generator).

    At most one finished-but-not-yet-collected item is pending: memory is two chunks.

    Args:
        items: produced lazily in the calling thread.
        finish: run in the worker thread (numpy's and torch's kernels release the GIL).
        wait: a context-manager factory timed around waiting for a result (e.g. ``stats("paste")``),
            so that only the time the loop is held up is charged; None: not timed.

    Yields:
        ``finish(item)`` in the order of ``items``.

    Raises:
        whatever ``finish`` or ``items`` raised (the worker is shut down first).
    """
    import contextlib

    def collect(future: Future) -> R:
        with (wait() if wait is not None else contextlib.nullcontext()):
            return future.result()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar-paste") as pool:
        pending: Future | None = None
        try:
            for item in items:
                future = pool.submit(finish, item)
                if pending is not None:
                    yield collect(pending)
                pending = future
            if pending is not None:
                out, pending = collect(pending), None
                yield out
        finally:
            if pending is not None:
                pending.cancel()



def to_host(tensor: torch.Tensor, buffers: dict | None = None) -> torch.Tensor:
    """``tensor`` on the CPU; from CUDA through a reused pinned buffer (non-blocking copy, then a sync).

    Args:
        buffers: a dict kept by the caller to reuse pinned buffers by (shape, dtype); None: no reuse.

    Returns:
        a CPU tensor (a view of the pinned buffer: copy it before the next call when keeping it).
    """
    if tensor.device.type != "cuda":
        return tensor.cpu()
    key = (tuple(tensor.shape), tensor.dtype)
    buf = None if buffers is None else buffers.get(key)
    if buf is None:
        buf = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        if buffers is not None:
            buffers[key] = buf
    buf.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return buf
