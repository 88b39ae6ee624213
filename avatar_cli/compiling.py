"""torch.compile (inductor) where it pays for itself over a whole render (issue 25).

Measured on a 2-core AVX512-BF16 CPU, full size, random weights (``scripts/compile_speed.py``,
docs/benchmarks.md "torch.compile"): compiling Ditto's warping network + SPADE decoder costs ~50 s
the first time (inductor's caches make later processes ~4 s) and makes each bf16 frame 1.87x faster,
so it pays after a few dozen frames. The policy, for ``--compile`` left at its default (``None``, auto):

- Ditto's warp and decoder are compiled for an offline render of at least :data:`AUTO_MIN_FRAMES`
  frames on a CPU that has a C++ compiler (inductor generates C++);
- never for ``--stream`` (the compile would add to the first-frame delay), on CUDA (unmeasured: opt in
  with ``--compile``), or for the U-Net family (its VAE decoder gained nothing, 0.98x: opt in with
  ``--compile``).

``--compile`` forces it, ``--no-compile`` turns it off. A compile that fails (no compiler, an operator
inductor cannot lower) falls back to the eager network with a note: the render goes on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch

# Offline renders at least this long compile Ditto's warp + decoder on a CPU by default (4 s of video; the
# measured break-even was ~37 frames with a cold compile cache, ~3 with a warm one).
AUTO_MIN_FRAMES = 100
# torch.compile's backend; tests set "eager" to trace without generating C++.
BACKEND = "inductor"


def compiler_available() -> bool:
    """Whether a C++ compiler inductor can use is on PATH (``$CXX``, ``g++``, ``c++`` or ``clang++``)."""
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def wants_compile(requested: bool | None, device: torch.device, frames: int, stream: bool = False) -> bool:
    """Whether a Ditto render compiles its warp and decoder.

    Args:
        requested: ``--compile`` (True), ``--no-compile`` (False) or the default (None: this module's policy).
        device: where the networks run.
        frames: the render's frame count (25 per second of speech).
        stream: a ``--stream`` render.

    Returns:
        ``requested`` when given; else True only offline, on a CPU, for ``frames >= AUTO_MIN_FRAMES``
        with a C++ compiler present.
    """
    if requested is not None:
        return requested
    return (not stream and device.type == "cpu" and frames >= AUTO_MIN_FRAMES and compiler_available())


class CompiledNetwork:
    """``torch.compile(module)`` called like the module, with an eager fallback.

    Compilation happens at the first call (tracing, then inductor's C++ build). If that call raises,
    ``note`` is told once and this and every later call run the eager ``module``: a missing compiler or
    an operator inductor cannot lower costs the speed-up, not the render.

    Args:
        module: the network (its parameters are shared, not copied).
        name: for the note ("warp", "decoder").
        note: called with one line when the compile fails.
    """

    def __init__(self, module: torch.nn.Module, name: str, note: Callable[[str], None] = lambda message: None):
        self.module, self.name, self.note = module, name, note
        self.compiled: Callable | None = torch.compile(module, backend=BACKEND)
        self.calls = 0  # calls that ran compiled

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                out = self.compiled(*args, **kwargs)
                self.calls += 1
                return out
            except Exception as exc:  # noqa: BLE001 - torch raises many kinds (BackendCompilerFailed, InductorError...)
                self.compiled = None
                self.note(f"torch.compile of the {self.name} network failed ({_reason(exc)}); "
                          f"running it without compiling (--no-compile skips the attempt)")
        return self.module(*args, **kwargs)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a compile error in one short line (dynamo wraps the backend's error)."""
    while exc.__cause__ is not None or getattr(exc, "inner_exception", None) is not None:
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
