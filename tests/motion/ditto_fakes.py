"""Deterministic inputs and stand-in networks shared by the Ditto motion-path tests.

The fixture ``tests/data/ditto_motion.npz`` was recorded by running Ditto's own code on exactly these inputs
(see tests/data/README.md); the generators use numpy's PCG64 ``default_rng`` streams, which numpy keeps stable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "ditto_motion.npz"


def load_fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def fake_dit(cond: np.ndarray, kp_cond: np.ndarray) -> np.ndarray:
    """Stand-in for one sampled LMDM window: (80, 1103), (265,) -> (80, 265), elementwise float32 maths that
    depends on the audio, the extra conditions, kp_cond and the frame position in the window."""
    cond = np.asarray(cond, np.float32).reshape(80, 1103)
    kp = np.asarray(kp_cond, np.float32).reshape(1, 265)
    j = np.arange(265)
    t = np.arange(80, dtype=np.float32)[:, None]
    a = cond[:, :265] + np.float32(0.5) * cond[:, 1024 + (j % 79)]
    ph = np.sin(np.float32(0.37) * t + np.float32(0.11) * j.astype(np.float32)[None]).astype(np.float32)
    return np.tanh(np.float32(0.7) * a + np.float32(0.3) * kp + np.float32(0.05) * ph).astype(np.float32)


def fake_encoder(window: np.ndarray) -> np.ndarray:
    """Stand-in for the HuBERT ONNX: (6480,) -> (20, 1024), a gather of window samples (offset-sensitive)."""
    w = np.asarray(window, np.float32).reshape(-1)
    assert w.shape[0] == 6480
    r = np.arange(20)[:, None]
    c = np.arange(1024)[None, :]
    return (w[(r * 320 + c * 7) % 6480] * (1 + c.astype(np.float32) / 1024)).astype(np.float32)


def source_info(seed: int = 11) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {
        "scale": np.array([[1.4]], np.float32) + g.standard_normal((1, 1)).astype(np.float32) * 0.05,
        "pitch": g.standard_normal((1, 66)).astype(np.float32),
        "yaw": g.standard_normal((1, 66)).astype(np.float32),
        "roll": g.standard_normal((1, 66)).astype(np.float32),
        "t": g.standard_normal((1, 3)).astype(np.float32) * 0.1,
        "exp": g.standard_normal((1, 63)).astype(np.float32) * 0.02,
        "kp": g.standard_normal((1, 63)).astype(np.float32) * 0.3,
    }


def gen_motion(n: int, seed: int = 12) -> np.ndarray:
    g = np.random.default_rng(seed)
    m = g.standard_normal((n, 265)).astype(np.float32) * np.float32(0.3)
    m[:, 67:133] *= 4
    return m


def eye_arr(seed: int = 13) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((15, 63)) * 0.01).astype(np.float32)


def feats(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1024), dtype=np.float32)


EYE_OPEN = np.array([0.31, 0.29], np.float32)
EYE_BALL = np.array([0.01, -0.02, 0.03, 0.0, -0.01, 0.02], np.float32)
