"""Ditto's load rule (``core/atomic_components/loader.py:check_resize``) and OpenCV's resizes as Ditto's
face crop and the eval's face tracks use them, re-implemented without OpenCV:

- :func:`resize_linear` follows ``cv2.resize(INTER_LINEAR)``'s fixed-point uint8 path; it differs from
  OpenCV by at most 1 level on a few pixels of narrow images (its scalar tail rounds differently),
  and it only feeds the detector.
- :func:`downscale_half` is ``cv2.resize(INTER_AREA)`` for the exact 2x case (2x2 box mean, rounded
  half up, as OpenCV's integer path does).
"""

from __future__ import annotations

import numpy as np

MAX_SIDE = 1920  # loader.py:check_resize


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
