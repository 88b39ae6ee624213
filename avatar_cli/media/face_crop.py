"""Ditto's source-image face crop: SCRFD box -> 106 points -> 203 points -> LivePortrait's 512 crop.

Re-implemented from the reading of antgroup/ditto-talkinghead @ e9191cf (no code copied):

- ``core/atomic_components/loader.py:check_resize``           -> :func:`fit_source_size`
- ``core/aux_models/modules/retinaface.py`` (SCRFD) -> :func:`letterbox`, :func:`scrfd_decode`, :func:`nms`
- ``core/aux_models/modules/landmark106.py``         -> :func:`lmk106_matrix`, :func:`decode_lmk106`
- ``core/aux_models/modules/landmark203.py``         -> :meth:`FaceCropper.landmarks203`
- ``core/utils/crop.py`` (LivePortrait's crop rule)  -> :func:`crop_matrix`, :func:`crop_from_points`
- ``core/atomic_components/source2info.py:_crop``    -> :meth:`FaceCropper.crop`
- ``core/utils/eye_info.py``                         -> :func:`eye_state`

OpenCV is not a dependency. The crop's warp is ``media/warp.py``'s ``cv2.warpAffine`` re-implementation
(OpenCV's fixed-point arithmetic, bit for bit on the recorded uint8 fixture).
:func:`resize_linear` follows ``cv2.resize(INTER_LINEAR)``'s fixed-point uint8 path; it differs from
OpenCV by at most 1 level on a few pixels of narrow images (its scalar tail rounds differently),
and it only feeds the detector.
:func:`downscale_half` is ``cv2.resize(INTER_AREA)`` for the exact 2x case (2x2 box mean, rounded
half up, as OpenCV's integer path does).

The three ONNX files are InsightFace's ``det_10g.onnx`` and ``2d106det.onnx`` (non-commercial
licence) and LivePortrait's landmark model (``landmark203.onnx``), from the HF repo
``digital-avatar/ditto-talkinghead``, folder ``ditto_pytorch/aux_models``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, WeightsError
from .warp import invert_affine, warp_affine

Box = tuple[float, float, float, float]  # x, y, w, h in pixels

# --- load rule (loader.py:check_resize)
MAX_SIDE = 1920
# --- SCRFD (retinaface.py)
DET_SIZE = 512
DET_THRESH = 0.5
NMS_THRESH = 0.4
DET_STRIDES = (8, 16, 32)
DET_ANCHORS = 2
DET_MEAN, DET_STD = 127.5, 128.0
# --- 2d106det (landmark106.py)
LMK106_SIZE = 192
LMK106_BOX_SCALE = 1.5
# --- crop to 224 for landmark203 (source2info.py:_crop)
LMK203_SIZE = 224
LMK203_CROP_SCALE = 1.5
LMK203_CROP_VY = -0.1
LMK203_OUTPUT_INDEX = 2  # the ONNX has three outputs; the 203 points are the third
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

# --- eye state without MediaPipe. eye_open is Ditto's ratio (3 lid distances over the eye width)
# computed on MediaPipe's canonical face mesh (mediapipe/modules/face_geometry/data/
# canonical_face_model.obj, neutral face, eyes open): 0.7173 for both eyes. eye_ball zeros = iris at
# the eye centre. Not yet checked against medians of the real landmarker on portraits (DITTO.md 4).
NEUTRAL_EYE_OPEN = np.array([0.7173, 0.7173], dtype=np.float32)
NEUTRAL_EYE_BALL = np.zeros(6, dtype=np.float32)

AUX_FILES = ("det_10g.onnx", "2d106det.onnx", "landmark203.onnx")


# =========================================================================== image primitives
def source_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) after Ditto's load rule (:func:`fit_source_size`): the longer side capped at
    ``max_side`` (the shorter scaled and ``round``-ed; a square caps the width first), then both
    floored to even."""
    h, w = int(height), int(width)
    if max_side > 0 and max(h, w) > max_side:
        if h > w:
            h, w = max_side, int(round(w * max_side / h))
        else:
            h, w = int(round(h * max_side / w)), max_side
    return h - h % 2, w - w % 2


def fit_source_size(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Ditto's load rule: longest side at most ``max_side`` (the other side ``round``-ed), then both
    sides floored to even; resized (bilinear) only when the size changes.

    Follows ``core/atomic_components/loader.py:check_resize`` / ``load_image``. A face box given in
    the original image's pixels must be scaled by ``new / old`` per axis by the caller.

    Args:
        image: (H, W, 3) uint8 RGB (as :func:`avatar_cli.media.image` decodes it).
        max_side: longest side allowed; <= 0 disables the limit (even sides still apply).

    Returns:
        (H', W', 3) uint8 with H', W' even; the input itself when no resize is needed.
    """
    h, w = image.shape[:2]
    new_h, new_w = source_size(h, w, max_side)
    if (new_h, new_w) == (h, w):
        return image
    return resize_linear(image, (new_w, new_h))


def _linear_axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and the float32 weight of i1 for bilinear resampling of one axis, as
    cv2.resize INTER_LINEAR sets them up: half-pixel centres, weight 0 beyond either edge."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    t = f - i0.astype(np.float32)
    t = np.where(i0 < 0, np.float32(0), t)
    i0 = np.maximum(i0, 0)
    right = i0 >= src - 1
    t = np.where(right, np.float32(0), t)
    i0 = np.where(right, src - 1, i0)
    return i0, np.minimum(i0 + 1, src - 1), t


def resize_linear(image: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """Bilinear resize: ``cv2.resize(image, dsize, interpolation=INTER_LINEAR)``.

    uint8 follows OpenCV's fixed-point path (weights out of 2^11, horizontal pass in integers,
    vertical pass with the rounding of its vectorised code); it reproduced OpenCV 4.14 exactly on 4
    of the 5 recorded sizes and to 1 level on 0.7 % of the values of the fifth (a 7-px-wide
    result, where OpenCV's scalar tail rounds differently). Float images use float64 arithmetic.

    Args:
        image: (H, W, C) or (H, W), uint8 or float.
        dsize: (width, height) of the result (OpenCV's order).

    Returns:
        The resized array, same dtype.
    """
    w, h = int(dsize[0]), int(dsize[1])
    y0, y1, ty = _linear_axis(image.shape[0], h)
    x0, x1, tx = _linear_axis(image.shape[1], w)
    extra = (1,) * (image.ndim - 2)
    if image.dtype == np.uint8:
        a1 = np.rint(tx.astype(np.float64) * 2048).astype(np.int32).reshape((1, -1) + extra)
        a0 = np.rint((1 - tx).astype(np.float64) * 2048).astype(np.int32).reshape((1, -1) + extra)
        b1 = np.rint(ty.astype(np.float64) * 2048).astype(np.int32).reshape((-1, 1) + extra)
        b0 = np.rint((1 - ty).astype(np.float64) * 2048).astype(np.int32).reshape((-1, 1) + extra)
        src = image.astype(np.int32)

        def row(idx):
            r = src[idx]
            return r[:, x0] * a0 + r[:, x1] * a1

        out = (((b0 * (row(y0) >> 4)) >> 16) + ((b1 * (row(y1) >> 4)) >> 16) + 2) >> 2
        return np.clip(out, 0, 255).astype(np.uint8)
    src = image.astype(np.float64)
    tyv = ty.astype(np.float64).reshape((-1, 1) + extra)
    txv = tx.astype(np.float64).reshape((1, -1) + extra)
    rows0, rows1 = src[y0], src[y1]
    top = rows0[:, x0] * (1 - txv) + rows0[:, x1] * txv
    bottom = rows1[:, x0] * (1 - txv) + rows1[:, x1] * txv
    return (top * (1 - tyv) + bottom * tyv).astype(image.dtype)


def downscale_half(image: np.ndarray) -> np.ndarray:
    """Exact 2x downscale by 2x2 box mean: ``cv2.resize(INTER_AREA)`` for a factor of 2.

    Args:
        image: (2H, 2W, C) uint8.

    Returns:
        (H, W, C) uint8, ``(a + b + c + d + 2) // 4`` (OpenCV's integer rounding).
    """
    if image.shape[0] % 2 or image.shape[1] % 2:
        raise ValueError(f"downscale_half needs even sides, got {image.shape[:2]}")
    s = image.astype(np.int32)
    total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


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


# =========================================================================== SCRFD
def letterbox(image: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Scale the long side to ``size`` (short side truncated with ``int``), pad right/bottom with 0.

    Returns:
        ((size, size, 3) uint8, det_scale = new height / old height).
    """
    h, w = image.shape[:2]
    if h / w > 1.0:
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:new_h, :new_w] = resize_linear(image, (new_w, new_h))
    return out, new_h / h


def det_blob(det_image: np.ndarray) -> np.ndarray:
    """(1, 3, S, S) float32 ``(x - 127.5) / 128`` with the channels reversed (blobFromImage with
    swapRB; Ditto passes RGB, so the network sees BGR as InsightFace trained it)."""
    x = (det_image[:, :, ::-1].astype(np.float32) - DET_MEAN) / DET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _anchor_centres(size: int, stride: int) -> np.ndarray:
    n = size // stride
    ys, xs = np.mgrid[:n, :n]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, DET_ANCHORS, axis=0)


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> list[int]:
    """Greedy non-maximum suppression with InsightFace's +1 area convention.

    Args:
        dets: (N, 5) x1, y1, x2, y2, score.
        thresh: a box is dropped when its IoU with a kept higher-scored box exceeds this.

    Returns:
        Row indices kept, best score first.
    """
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= thresh]
    return keep


def scrfd_decode(outputs: Sequence[np.ndarray], det_scale: float, size: int = DET_SIZE,
                 threshold: float = DET_THRESH,
                 nms_thresh: float = NMS_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """Decode SCRFD's nine outputs into faces in image pixels (InsightFace ``scrfd.py`` rules).

    Args:
        outputs: scores (A_s, 1) x 3, box distances (A_s, 4) x 3, keypoint offsets (A_s, 10) x 3
            for strides 8, 16, 32 in that order, A_s = (size / s)^2 * 2 anchors (a leading batch
            axis of 1 is accepted). Distances are in stride units.
        det_scale: letterbox scale (:func:`letterbox`); boxes are divided by it.
        size: the network input side.
        threshold: minimum score kept (>=).
        nms_thresh: NMS IoU threshold (:func:`nms`).

    Returns:
        (dets (N, 5) float32 x1, y1, x2, y2, score; kps (N, 5, 2) float32), best score first.
    """
    outs = [o[0] if o.ndim == 3 else o for o in outputs]
    scores_l, boxes_l, kps_l = [], [], []
    for idx, stride in enumerate(DET_STRIDES):
        centres = _anchor_centres(size, stride)
        scores = outs[idx].reshape(-1)
        dist = outs[idx + 3].reshape(-1, 4) * stride
        kdist = outs[idx + 6].reshape(-1, 10) * stride
        keep = np.where(scores >= threshold)[0]
        boxes = np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1)
        kps = np.tile(centres, (1, 5)) + kdist
        scores_l.append(scores[keep, None])
        boxes_l.append(boxes[keep])
        kps_l.append(kps[keep].reshape(-1, 5, 2))
    scores = np.vstack(scores_l)
    order = scores.ravel().argsort()[::-1]
    boxes = np.vstack(boxes_l) / det_scale
    kps = np.vstack(kps_l) / det_scale
    pre = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order]
    keep = nms(pre, nms_thresh)
    return pre[keep], kps[order][keep].astype(np.float32)


def largest_box(dets: np.ndarray) -> np.ndarray | None:
    """The (x1, y1, x2, y2) row of ``dets`` with the largest area (Ditto's choice), or None."""
    if len(dets) == 0:
        return None
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    return dets[np.argsort(-area)[0], :4]


# =========================================================================== 2d106det
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


# =========================================================================== results
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


# =========================================================================== ONNX pipeline
def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("Ditto's face crop needs onnxruntime: pip install onnxruntime "
                         "(a dependency of avatar-cli), or pass --face-box x,y,w,h") from None
    return onnxruntime


def _providers(ort, device: str) -> list[str]:
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class FaceCropper:
    """Ditto's face crop with the three auxiliary ONNX models (det_10g, 2d106det, landmark203).

    ``crop`` = SCRFD's largest face (or the user's box) -> 106 points -> 224 crop -> 203 points ->
    512 crop (M: ``core/atomic_components/source2info.py:_crop``).
    """

    def __init__(self, det, lmk106, lmk203, crop_scale: float = CROP_SCALE, crop_vx: float = CROP_VX,
                 crop_vy: float = CROP_VY):
        """Sessions are onnxruntime ``InferenceSession``s (or anything with ``run``/``get_inputs``).
        crop_scale / crop_vx / crop_vy: the 512 crop rule (Ditto's cfg ``crop_scale``,
        ``crop_vx_ratio``, ``crop_vy_ratio``)."""
        self.det, self.lmk106, self.lmk203 = det, lmk106, lmk203
        self.crop_scale, self.crop_vx, self.crop_vy = crop_scale, crop_vx, crop_vy

    @classmethod
    def from_dir(cls, aux_dir: str | Path, device: str = "auto", **crop) -> "FaceCropper":
        """Load ``det_10g.onnx``, ``2d106det.onnx`` and ``landmark203.onnx`` from ``aux_dir``.

        Args:
            aux_dir: folder holding the three files (Ditto's ``ditto_pytorch/aux_models``).
            device: "cpu" forces the CPU provider; otherwise CUDA when onnxruntime offers it.
            crop: crop_scale / crop_vx / crop_vy overrides.

        Raises:
            WeightsError: a file is missing (named, with the download command).
            InputError: onnxruntime is not installed.
        """
        aux_dir = Path(aux_dir)
        for name in AUX_FILES:
            if not (aux_dir / name).is_file():
                raise WeightsError(f"Ditto face-crop model {aux_dir / name} is missing; run "
                                   "'avatar weights download ditto' or pass --face-box x,y,w,h")
        ort = _onnxruntime()
        providers = _providers(ort, device)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sessions = [ort.InferenceSession(str(aux_dir / n), sess_options=options, providers=providers)
                    for n in AUX_FILES]
        return cls(*sessions, **crop)

    # ---- stages
    def detect(self, image: np.ndarray) -> np.ndarray:
        """SCRFD faces, (N, 5) float32 x1, y1, x2, y2, score in ``image`` pixels, best first."""
        det_image, det_scale = letterbox(image)
        name = self.det.get_inputs()[0].name
        outputs = self.det.run(None, {name: det_blob(det_image)})
        dets, _ = scrfd_decode(outputs, det_scale)
        return dets

    def landmarks106(self, image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """(106, 2) float32 landmarks in ``image`` pixels from 2d106det on the box's 192 crop."""
        m = lmk106_matrix(box_xyxy)
        crop = warp_affine(image, m, (LMK106_SIZE, LMK106_SIZE))
        blob = np.ascontiguousarray(crop[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)[None])
        name = self.lmk106.get_inputs()[0].name
        fc1 = self.lmk106.run(None, {name: blob})[0][0]
        return decode_lmk106(fc1, m)

    def landmarks203(self, image: np.ndarray, points106: np.ndarray) -> np.ndarray:
        """(203, 2) float32 landmarks in ``image`` pixels: landmark203 (input ``input``
        (1, 3, 224, 224) RGB / 255; output index 2, (1, 406) in crop units) on the 224 crop."""
        crop, _, m_c2o = crop_from_points(image, points106, LMK203_SIZE, LMK203_CROP_SCALE, 0.0,
                                          LMK203_CROP_VY)
        blob = np.ascontiguousarray((crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        name = self.lmk203.get_inputs()[0].name
        out = self.lmk203.run(None, {name: blob})[LMK203_OUTPUT_INDEX]
        pts = out[0].reshape(-1, 2).astype(np.float32) * np.float32(LMK203_SIZE)
        return transform_points(pts, m_c2o).astype(np.float32)  # float32 throughout, as Ditto

    def crop(self, image: np.ndarray, face_box: Box | None = None, name: str = "the image") -> SourceCrop:
        """The 512 crop of the portrait.

        Args:
            image: (H, W, 3) uint8 RGB, already through :func:`fit_source_size`.
            face_box: (x, y, w, h) in ``image`` pixels: replaces the SCRFD box (detection skipped).
            name: the image's name for the error message.

        Returns:
            :class:`SourceCrop` with 203 landmarks.

        Raises:
            InputError: no face found ("no face found in IMAGE; pass --face-box x,y,w,h").
        """
        if face_box is not None:
            x, y, w, h = (float(v) for v in face_box)
            box = np.array([x, y, x + w, y + h])
        else:
            box = largest_box(self.detect(image))
            if box is None:
                raise InputError(f"no face found in {name}; pass --face-box x,y,w,h")
        pts106 = self.landmarks106(image, box)
        pts203 = self.landmarks203(image, pts106)
        img_crop, _, m_c2o = crop_from_points(image, pts203, CROP_SIZE, self.crop_scale, self.crop_vx,
                                              self.crop_vy)
        return SourceCrop(img_crop, m_c2o, to_rgb_256(img_crop), pts203)


def crop_source(image: np.ndarray, aux_dir: str | Path | None = None, face_box: Box | None = None,
                name: str = "the image", warn: Callable[[str], None] = print, **crop) -> SourceCrop:
    """The crop a ``--model ditto`` render uses: the landmark path when the three ONNX files are in
    ``aux_dir``; otherwise, when a ``face_box`` is given, :func:`box_crop` with a one-line note.

    Raises:
        WeightsError: no usable aux models and no ``face_box`` (names the missing file).
        InputError: onnxruntime missing without a box; no face found.
    """
    if aux_dir is not None and all((Path(aux_dir) / n).is_file() for n in AUX_FILES):
        try:
            cropper = FaceCropper.from_dir(aux_dir, **crop)
        except InputError:
            if face_box is None:
                raise
            warn("note: onnxruntime is not installed; cropping from --face-box without landmarks")
            return box_crop(image, face_box)
        return cropper.crop(image, face_box, name)
    if face_box is not None:
        warn("note: Ditto's face-crop models are not installed; cropping from --face-box without "
             "landmarks (no roll correction)")
        return box_crop(image, face_box)
    if aux_dir is not None:
        FaceCropper.from_dir(aux_dir)  # raises WeightsError naming the first missing file
    raise WeightsError(f"Ditto's face-crop models ({', '.join(AUX_FILES)}) are not installed; run "
                       "'avatar weights download ditto' or pass --face-box x,y,w,h")


# =========================================================================== eye state
def eye_state(landmarks478: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ditto's eye openness and iris offset from MediaPipe's 478 face-landmarker points.

    M: ``core/utils/eye_info.py:EyeAttrUtilsByMP``. With d the 3-D distance and
    ``dir(a, b) = (a - b) / (|a - b| + 1e-8)``:

    - ``open_L = (d(145,159) + d(144,160) + d(153,158)) / (d(33,133) + 1e-8)``; right eye with
      374/386, 373/387, 380/385 over 263/362.
    - ``move_L = (dir(p468, c_L) - dir(p33, p133)) * |p468 - c_L|``, c_L the midpoint of 33/133;
      right eye with 473, 263/362.

    Args:
        landmarks478: (478, 3) normalised (x, y, z) landmarks (or (478, 2)).

    Returns:
        (eye_open (2,) float32 [L, R], eye_ball (6,) float32 [Lx, Rx, Ly, Ry, Lz, Rz]; for 2-D
        input the z entries are 0).
    """
    p = np.asarray(landmarks478, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 478 or p.shape[1] not in (2, 3):
        raise ValueError(f"eye_state takes (478, 3) landmarks, got {p.shape}")
    if p.shape[1] == 2:
        p = np.hstack([p, np.zeros((478, 1))])

    def dist(a, b):
        return float(np.linalg.norm(p[a] - p[b]))

    def direction(a, b):
        v = a - b
        return v / (np.linalg.norm(v) + 1e-8)

    def eye(outer, inner, lids, iris):
        width = dist(outer, inner)
        openness = sum(dist(a, b) for a, b in lids) / (width + 1e-8)
        centre = (p[outer] + p[inner]) / 2
        move = (direction(p[iris], centre) - direction(p[outer], p[inner])) * np.linalg.norm(p[iris] - centre)
        return openness, move

    open_l, move_l = eye(33, 133, ((145, 159), (144, 160), (153, 158)), 468)
    open_r, move_r = eye(263, 362, ((374, 386), (373, 387), (380, 385)), 473)
    eye_open = np.array([open_l, open_r], dtype=np.float32)
    eye_ball = np.stack([move_l, move_r], axis=-1).reshape(-1).astype(np.float32)  # (3, 2) -> 6
    return eye_open, eye_ball


def detect_eye_state(img_crop: np.ndarray, task_path: str | Path | None = None,
                     warn: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
    """Eye state of the 512 crop with MediaPipe's FaceLandmarker (``face_landmarker.task``).

    Runs only when ``mediapipe`` is importable and ``task_path`` names an existing file; otherwise
    (or when the landmarker finds no face) returns :data:`NEUTRAL_EYE_OPEN` /
    :data:`NEUTRAL_EYE_BALL` and sends a one-line note to ``warn``.

    Args:
        img_crop: (512, 512, 3) uint8 RGB (M: ``source2info.py:_get_eye_info`` runs on the crop).
        task_path: MediaPipe Tasks model file.

    Returns:
        (eye_open (2,) float32, eye_ball (6,) float32), see :func:`eye_state`.
    """
    reason = None
    if task_path is None or not Path(task_path).is_file():
        reason = "no face_landmarker.task" if task_path is None else f"{task_path} is missing"
    else:
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError:
            reason = "mediapipe is not installed"
    if reason is None:
        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task_path)),
                                               num_faces=1)
        with vision.FaceLandmarker.create_from_options(options) as landmarker:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(img_crop)))
        if result.face_landmarks:
            points = np.array([[q.x, q.y, q.z] for q in result.face_landmarks[0]], dtype=np.float32)
            return eye_state(points)
        reason = "MediaPipe found no face in the crop"
    warn(f"note: eye state uses neutral constants ({reason}): eye_open "
         f"{NEUTRAL_EYE_OPEN[0]:.4f}, gaze centred")
    return NEUTRAL_EYE_OPEN.copy(), NEUTRAL_EYE_BALL.copy()
