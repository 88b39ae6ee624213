"""Deterministic weights for the EchoMimic equivalence fixture, computed the same way here and in the
throwaway environment that ran EchoMimic's code (tests/data/README.md), so that the fixture stores
only key names, shapes, inputs and outputs (a few tens of KB) instead of 2.4 M weights.

Each tensor's values are SplitMix64 (Steele et al. 2014) of (seed, key, element index) mapped onto
a grid of 2^-8 in [-0.1, 0.1]: pure integer arithmetic, identical on every machine and numpy version.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def grid_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float32 tensor of ``shape`` with values k / 256, k in -25..25, fixed by (seed, key)."""
    base = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        x = _splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(base))
    k = (x % np.uint64(51)).astype(np.int64) - 25
    return torch.from_numpy((k.astype(np.float32) / 256).reshape(shape))


def grid_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """key -> shape  ->  key -> :func:`grid_tensor` (AnimateDiff's ``pos_encoder.pe`` position tables
    are left to the caller: they are sinusoids, not weights)."""
    return {k: grid_tensor(k, tuple(v), seed) for k, v in shapes.items()}
