"""Deterministic SyncNet inputs and random weights, numpy only, shared by the tests and by the script that
recorded tests/data/syncnet_fixture.npz with syncnet_python's own code (tests/data/README.md).

Every array comes from ``numpy.random.default_rng([seed, crc32(name)])`` (PCG64: the same numbers on every
platform and numpy version), so the recording and the test build the same weights and inputs without
shipping 55 MB of them."""

from __future__ import annotations

import zlib

import numpy as np

FRAMES = 20  # 15 windows of 5 frames
SIZE = 224
SAMPLES = FRAMES * 640  # 0.8 s at 16 kHz


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, out_scale: float = 2e-3) -> dict[str, np.ndarray]:
    """A state dict of ``name -> shape`` filled with He-scaled random weights and non-trivial
    BatchNorm statistics (float32; ``num_batches_tracked`` int64 zeros). The last linear layer of each
    stream (``netfc*.3``) is scaled by ``out_scale`` so that distances are of the real model's order
    (units, not thousands: the frames enter as 0..255)."""
    state = {}
    for name, shape in shapes.items():
        rng = _rng(seed, name)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[name] = np.zeros(shape, np.int64)
            continue
        z = rng.standard_normal(shape)
        if leaf == "weight" and len(shape) >= 2:  # conv / linear
            value = z * np.sqrt(2.0 / np.prod(shape[1:]))
        elif leaf == "weight":  # batch norm scale
            value = 1.0 + 0.1 * z
        elif leaf == "running_var":
            value = 1.0 + 0.2 * np.abs(z)
        else:  # biases, batch norm shift, running_mean
            value = 0.1 * z
        if name.startswith(("netfcaud.3.", "netfclip.3.")):
            value = value * out_scale
        state[name] = value.astype(np.float32)
    return state


def random_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(FRAMES, 224, 224, 3) uint8 BGR frames and (SAMPLES,) int16 PCM that change from frame to frame
    (each frame a random brightness times a fixed random pattern, plus noise; each 40 ms of sound a
    random loudness and pitch), so that the windows' embeddings differ."""
    rng = _rng(seed, "frames")
    pattern = rng.uniform(0.2, 1.0, (SIZE, SIZE, 3))
    level = rng.uniform(0, 255, (FRAMES, 1, 1, 1))
    frames = np.clip(level * pattern + rng.normal(0, 8, (FRAMES, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    rng = _rng(seed, "audio")
    t = np.arange(640) / 16000
    chunks = [rng.uniform(0, 8000) * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) for _ in range(FRAMES)]
    audio = np.concatenate(chunks) + rng.normal(0, 100, SAMPLES)
    return frames, np.clip(audio, -32768, 32767).astype(np.int16)


TRACK_FRAMES = 20
TRACK_KEPT = (0, 7, 19)  # frames whose crops tests/data/syncnet_crop_fixture.npz keeps


def track_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(20, 160, 200, 3) uint8 BGR frames (smooth ramps that move from frame to frame, so the crops
    compress and differ) and (20, 4) float64 face boxes x1, y1, x2, y2 jittered around a face, one
    frame's box far off (the median filter must drop it), as a face detector would give them."""
    y, x = np.mgrid[0:160, 0:200].astype(np.float64)
    frames = np.stack([np.stack([(1.1 * x + 3 * t) % 256, (1.2 * y + 2 * t) % 256, (0.5 * (x + y) - t) % 256], -1)
                       for t in range(TRACK_FRAMES)]).astype(np.uint8)
    rng = _rng(seed, "track")
    boxes = np.array([50.0, 40.0, 130.0, 135.0]) + rng.normal(0, 2.5, (TRACK_FRAMES, 4))
    boxes[7] += (40, 30, 45, 20)  # one wild detection (a kept frame: its crop must not follow it)
    return frames, boxes
