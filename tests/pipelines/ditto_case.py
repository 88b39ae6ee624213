"""A tiny Ditto case shared by the renderer tests (precision, CUDA graph, render batches): the tiny preset
with random weights, a 96 x 128 random portrait with a fixed face box, and MotionStitch outputs jittered
around the portrait's own motion."""

import numpy as np

from avatar_cli.pipelines.ditto import DittoPipeline

FACE_BOX = (32, 16, 64, 64)  # x, y, w, h in the portrait's pixels


def tiny_ditto(device: str = "cpu", dtype="float32") -> DittoPipeline:
    """The tiny preset, seed 0, notes silenced."""
    pipe = DittoPipeline.from_preset("tiny", device=device, dtype=dtype, seed=0)
    pipe.warn = lambda message: None
    return pipe


def portrait() -> np.ndarray:
    """(96, 128, 3) uint8, seeded."""
    return np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def jittered_motions(source, frames: int, seed: int = 1) -> list[dict]:
    """``frames`` MotionStitch outputs: the source's motion plus N(0, 0.02) per value (float32)."""
    g = np.random.default_rng(seed)
    return [{k: (v + 0.02 * g.standard_normal(v.shape)).astype(np.float32) for k, v in source.motion.items()}
            for _ in range(frames)]
