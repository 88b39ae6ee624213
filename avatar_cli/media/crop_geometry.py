"""LivePortrait's crop rule as Ditto applies it (``core/utils/crop.py``, ``source2info.py:_crop``): the
512 crop of a portrait from its landmarks or from a face box alone, and the 256 network input.

Re-implemented from the reading of antgroup/ditto-talkinghead @ e9191cf (no code copied). The warp is
``media/warp.py``'s ``cv2.warpAffine`` re-implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from .resize import downscale_half
from .warp import warp_affine

Box = tuple[float, float, float, float]  # x, y, w, h in pixels

# --- crop to 512 (source2info.py:_crop defaults, overridable from the cfg's crop settings)
CROP_SIZE = 512
CROP_SCALE = 2.3
CROP_VX = 0.0
CROP_VY = -0.125
# --- the no-ONNX fallback: crop side = BOX_CROP_SCALE x the box's longer side. Uncalibrated: the
# 512 crop is 2.3 x the extent of the 203 landmarks (about brow to chin, cheek to cheek), and a
# face box from SCRFD or a user is typically ~15 % larger than that extent, so 2.3 / 1.15 = 2.0.
# DITTO.md 13 asks to calibrate it against the landmark path on real portraits once the models exist.
BOX_CROP_SCALE = 2.0
BOX_CROP_VY = CROP_VY


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) or (3, 3) affine map to (N, 2) points: ``p @ M[:2, :2].T + M[:2, 2]``."""
    m = np.asarray(matrix)
    return points @ m[:2, :2].T + m[:2, 2]


def to_rgb_256(img_crop: np.ndarray) -> np.ndarray:
    """The networks' input: the 512 crop box-averaged to 256 (``cv2.resize`` INTER_AREA), / 255.

    Args:
        img_crop: (512, 512, 3) uint8 RGB.

    Returns:
        (1, 3, 256, 256) float32 in [0, 1] (M: ``source2info.py:_img_crop_to_bchw256``).
    """
    small = downscale_half(img_crop)
    return np.ascontiguousarray((small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


# =========================================================================== crop rule
def _eye_lip_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eye midpoint, lip centre) of a 106- or 203-point set (crop.py:parse_pt2_from_pt106/203)."""
    if len(points) == 106:
        left, right = points[[33, 35, 40, 39]].mean(0), points[[87, 89, 94, 93]].mean(0)
        lip = (points[52] + points[61]) / points.dtype.type(2)
    elif len(points) == 203:
        left, right = points[[0, 6, 12, 18]].mean(0), points[[24, 30, 36, 42]].mean(0)
        lip = (points[48] + points[66]) / points.dtype.type(2)
    else:
        raise ValueError(f"the crop rule takes 106 or 203 points, got {len(points)}")
    return (left + right) / points.dtype.type(2), lip


def crop_matrix(points: np.ndarray, dsize: int, scale: float, vx_ratio: float = 0.0,
                vy_ratio: float = 0.0, rotate: bool = True) -> np.ndarray:
    """LivePortrait's square crop around a landmark set, as a map from image to crop pixels.

    The y axis runs from the eye midpoint to the lip centre; the x axis is perpendicular to it (so
    the roll is cancelled). Side = ``scale`` x the larger extent of the points along those axes;
    centre = the middle of that extent + ``(vx_ratio, vy_ratio)`` x side along (x, y) axes.
    (M: ``core/utils/crop.py:parse_rect_from_landmark`` and ``_estimate_similar_transform_from_pts``.)
    Every step is float32, as Ditto computes it (under NumPy 2 promotion rules), so the matrix
    agrees with Ditto's bit for bit on the recorded fixture (a float64 version differed by up to
    6e-5 in the translation, enough to move a sample across a 1/32-px step of the warp).

    Args:
        points: (106, 2) or (203, 2) landmarks in image pixels.
        dsize: crop side in pixels.
        scale, vx_ratio, vy_ratio: see above (Ditto: 1.5/0/-0.1 for 224, 2.3/0/-0.125 for 512).
        rotate: cancel the roll (else an axis-aligned square with the same centre and side).

    Returns:
        (3, 3) float32 ``M_o2c``.
    """
    f32 = np.float32
    pts = np.asarray(points, dtype=f32)
    eye, lip = _eye_lip_points(pts)
    uy = (lip - eye).astype(f32)
    length = np.linalg.norm(uy)
    uy = np.array([0.0, 1.0], dtype=f32) if length <= 1e-3 else uy / length
    ux = np.array([uy[1], -uy[0]], dtype=f32)
    angle = math.acos(max(-1.0, min(1.0, float(ux[0]))))
    if ux[1] < 0:
        angle = -angle
    centre0 = pts.mean(axis=0)
    rotated = (pts - centre0) @ np.stack([ux, uy]).T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    mid = (lo + hi) / f32(2)
    side = max(hi - lo) * f32(scale)
    centre = centre0 + ux * mid[0] + uy * mid[1]
    centre = centre + ux * (f32(vx_ratio) * side) + uy * (f32(vy_ratio) * side)
    if not rotate:
        angle = 0.0
    s = f32(dsize) / side
    c, si = f32(math.cos(angle)), f32(math.sin(angle))
    cx, cy = centre[0], centre[1]
    t = f32(dsize / 2)
    return np.array([[s * c, s * si, t - s * (c * cx + si * cy)],
                     [-s * si, s * c, t - s * (-si * cx + c * cy)],
                     [0.0, 0.0, 1.0]], dtype=f32)


def similarity_matrix(centre: Sequence[float], side: float, dsize: int, angle: float = 0.0) -> np.ndarray:
    """(3, 3) float32 map from image pixels to a ``dsize`` crop whose centre is ``centre``, whose
    side covers ``side`` image pixels, rotated by ``angle`` radians (crop.py's M_INV layout)."""
    s = dsize / side
    c, si = math.cos(angle), math.sin(angle)
    cx, cy = float(centre[0]), float(centre[1])
    t = dsize / 2
    return np.array([[s * c, s * si, t - s * (c * cx + si * cy)],
                     [-s * si, s * c, t - s * (-si * cx + c * cy)],
                     [0.0, 0.0, 1.0]], dtype=np.float32)


def crop_from_points(image: np.ndarray, points: np.ndarray, dsize: int, scale: float,
                     vx_ratio: float = 0.0, vy_ratio: float = 0.0,
                     rotate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp ``image`` to the crop of :func:`crop_matrix` (M: ``core/utils/crop.py:crop_image``).

    Returns:
        (crop (dsize, dsize, 3) uint8, M_o2c (3, 3) float32, M_c2o (3, 3) float32 its inverse).
    """
    m_o2c = crop_matrix(points, dsize, scale, vx_ratio, vy_ratio, rotate)
    crop = warp_affine(image, m_o2c, (dsize, dsize))
    return crop, m_o2c, np.linalg.inv(m_o2c)  # float32 inverse, as Ditto


@dataclass
class SourceCrop:
    """The portrait as Ditto's networks see it.

    Attributes:
        img_crop: (512, 512, 3) uint8 RGB crop.
        M_c2o: (3, 3) float32 map from crop pixels to source-image pixels (for the paste-back).
        rgb_256: (1, 3, 256, 256) float32 in [0, 1], the crop box-averaged to 256 (NCHW).
        landmarks: (203, 2) float32 landmarks in source-image pixels; None for a box crop.
    """

    img_crop: np.ndarray
    M_c2o: np.ndarray
    rgb_256: np.ndarray
    landmarks: np.ndarray | None = None


def parse_face_box(text: str) -> Box:
    """``"x,y,w,h"`` (pixels) -> a box; InputError when malformed or not positive-sized."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--face-box must be x,y,w,h in pixels (got {text!r})") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--face-box width and height must be positive (got {text!r})")
    return x, y, w, h


def box_crop(image: np.ndarray, face_box: Box, scale: float = BOX_CROP_SCALE,
             vy_ratio: float = BOX_CROP_VY) -> SourceCrop:
    """The 512 crop from a face box alone (no ONNX models): no rotation, side = ``scale`` x the
    box's longer side, centre = box centre + ``vy_ratio`` x side vertically (up for negative).

    Args:
        image: (H, W, 3) uint8 RGB source.
        face_box: (x, y, w, h) in ``image`` pixels.
        scale: crop side over the box's longer side (:data:`BOX_CROP_SCALE`, uncalibrated).
        vy_ratio: vertical shift over the crop side (Ditto's -0.125).

    Returns:
        :class:`SourceCrop` with ``landmarks=None``.
    """
    x, y, w, h = (float(v) for v in face_box)
    side = max(w, h) * scale
    centre = (x + w / 2, y + h / 2 + vy_ratio * side)
    m_o2c = similarity_matrix(centre, side, CROP_SIZE)
    img_crop = warp_affine(image, m_o2c, (CROP_SIZE, CROP_SIZE))
    return SourceCrop(img_crop, np.linalg.inv(m_o2c).astype(np.float32), to_rgb_256(img_crop), None)
