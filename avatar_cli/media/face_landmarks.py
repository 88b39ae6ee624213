"""InsightFace's 106-point landmarks (``2d106det.onnx``, ``core/aux_models/modules/landmark106.py``) and
the 224 crop LivePortrait's 203-point model (``landmark203.onnx``) reads: the maps in and out of the
models' inputs. Re-implemented from the reading of antgroup/ditto-talkinghead @ e9191cf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .crop_geometry import transform_points
from .warp import invert_affine

# --- 2d106det (landmark106.py)
LMK106_SIZE = 192
LMK106_BOX_SCALE = 1.5
# --- crop to 224 for landmark203 (source2info.py:_crop)
LMK203_SIZE = 224
LMK203_CROP_SCALE = 1.5
LMK203_CROP_VY = -0.1
LMK203_OUTPUT_INDEX = 2  # the ONNX has three outputs; the 203 points are the third


def lmk106_matrix(box_xyxy: Sequence[float]) -> np.ndarray:
    """(2, 3) float64 map from image pixels to the 192x192 landmark input: centre on the box,
    scale 192 / (1.5 * max(w, h)), no rotation (M: ``landmark106.py:transform``). Scale, centre
    and their product are float32 as in Ditto (the box is float32 there)."""
    f32 = np.float32
    x1, y1, x2, y2 = (f32(v) for v in box_xyxy[:4])
    s = f32(LMK106_SIZE) / (max(x2 - x1, y2 - y1) * f32(LMK106_BOX_SCALE))
    cx, cy = (x1 + x2) / f32(2), (y1 + y2) / f32(2)
    half = LMK106_SIZE / 2
    return np.array([[float(s), 0.0, float(-(cx * s)) + half], [0.0, float(s), float(-(cy * s)) + half]])


def decode_lmk106(fc1: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``fc1`` (1, 212) in [-1, 1] -> (106, 2) float32 image pixels: ``(p + 1) * 96`` (float32)
    through the inverse of ``matrix`` (:func:`lmk106_matrix`) in float64."""
    p = np.asarray(fc1, dtype=np.float32).reshape(-1, 2)[-106:]
    p = (p + np.float32(1)) * np.float32(LMK106_SIZE // 2)
    return transform_points(p.astype(np.float64), invert_affine(matrix)).astype(np.float32)
