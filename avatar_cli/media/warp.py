"""``cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT 0)`` in numpy: the one affine warp of the
Ditto path (face crop, ``media/face_crop.py``; paste-back, ``media/paste.py``).

OpenCV is not a dependency. This re-implements OpenCV 4.x's (<= 4.10, Ditto's pinned version)
``warpAffine`` from its ``imgproc/src/imgwarp.cpp``: the inverse map in float64, source positions
as fixed-point products scaled by 2^10 (AB_BITS) and rounded, reduced to 1/32 pixel (INTER_BITS),
bilinear weights of those 1/32 steps (uint8: integers out of 2^15 with rounding, BilinearTab_i),
source pixels outside the image counting as 0. uint8 results match OpenCV bit for bit; float32
within 1e-6 (tests/media/test_face_crop.py). OpenCV 4.11+ samples at float coordinates instead
(differences up to ~2 % of the local contrast at sharp edges).
"""

from __future__ import annotations

import numpy as np

INTER_BITS = 5  # OpenCV INTER_BITS: bilinear weights in 1/32 pixel steps
AB_BITS = 10  # OpenCV AB_BITS: fixed-point precision of the affine coordinates


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """(2, 3) float64 inverse of a (2, 3) or (3, 3) affine map (``cv2.invertAffineTransform``)."""
    a, b, c, d, e, f = np.asarray(matrix, dtype=np.float64)[:2].reshape(-1)
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    a11, a22, a12, a21 = e * det, a * det, -b * det, -d * det
    return np.array([[a11, a12, -a11 * c - a12 * f], [a21, a22, -a21 * c - a22 * f]])


def warp_taps(matrix: np.ndarray, src_hw: tuple[int, int], roi: tuple[int, int, int, int]):
    """OpenCV's INTER_LINEAR taps for the output pixels ``roi = (x0, y0, x1, y1)``.

    Returns:
        idx: (4, y1 - y0, x1 - x0) int64 indices into the source padded by one zero pixel on each
            side and flattened (:func:`pad_flat`): top-left, top-right, bottom-left, bottom-right.
        ax, ay: (y1 - y0, x1 - x0) int64 sub-pixel offsets in 1/32 pixel, 0..31.
    """
    x_lo, y_lo, x_hi, y_hi = roi
    im = invert_affine(matrix)
    scale = 1 << AB_BITS
    round_delta = scale // (1 << INTER_BITS) // 2
    xs = np.arange(x_lo, x_hi, dtype=np.float64)
    ys = np.arange(y_lo, y_hi, dtype=np.float64)
    adelta = np.rint(im[0, 0] * xs * scale).astype(np.int64)
    bdelta = np.rint(im[1, 0] * xs * scale).astype(np.int64)
    x0 = np.rint((im[0, 1] * ys + im[0, 2]) * scale).astype(np.int64) + round_delta
    y0 = np.rint((im[1, 1] * ys + im[1, 2]) * scale).astype(np.int64) + round_delta
    gx = (x0[:, None] + adelta[None, :]) >> (AB_BITS - INTER_BITS)
    gy = (y0[:, None] + bdelta[None, :]) >> (AB_BITS - INTER_BITS)
    tab = (1 << INTER_BITS) - 1
    h, w = src_hw
    # neighbours outside the source land on the zero border (indices clipped onto it)
    px = np.clip((gx >> INTER_BITS) + 1, 0, w + 1)
    px1 = np.clip((gx >> INTER_BITS) + 2, 0, w + 1)
    row0 = np.clip((gy >> INTER_BITS) + 1, 0, h + 1) * (w + 2)
    row1 = np.clip((gy >> INTER_BITS) + 2, 0, h + 1) * (w + 2)
    return np.stack([row0 + px, row0 + px1, row1 + px, row1 + px1]), gx & tab, gy & tab


def float_weights(ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """(4, ...) float32 bilinear weights of 1/32-pixel offsets (exact: multiples of 1/1024)."""
    fx = ax.astype(np.float32) / (1 << INTER_BITS)
    fy = ay.astype(np.float32) / (1 << INTER_BITS)
    return np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])


def pad_flat(src: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(h, w[, c]) -> ((h + 2) * (w + 2), c): zero-padded by one pixel, flattened, in ``dtype``."""
    h, w = src.shape[:2]
    c = 1 if src.ndim == 2 else src.shape[2]
    padded = np.zeros((h + 2, w + 2, c), dtype=dtype)
    padded[1:-1, 1:-1] = src.reshape(h, w, c)
    return padded.reshape(-1, c)


def apply_taps(flat: np.ndarray, idx: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Gather the four taps of ``flat`` (:func:`pad_flat`) and blend with ``wts`` (4, h, w) -> (h, w, c)."""
    return (flat[idx[0]] * wts[0][..., None] + flat[idx[1]] * wts[1][..., None]
            + flat[idx[2]] * wts[2][..., None] + flat[idx[3]] * wts[3][..., None])


def warp_affine(src: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``cv2.warpAffine(src, matrix, size, flags=INTER_LINEAR)`` with a constant 0 border.

    Output pixel (x, y) samples ``src`` at ``inverse(matrix) @ (x, y, 1)`` (see the module docstring).

    Args:
        src: (h, w) or (h, w, c) image, uint8 (OpenCV's integer arithmetic, bit-exact) or float
            (computed in float32).
        matrix: (2, 3) or (3, 3) forward affine map src -> dst (only the first two rows are used).
        size: (width, height) of the output.
        roi: optional (x0, y0, x1, y1): compute only that part of the output (same values as the full warp).

    Returns:
        (height, width[, c]) uint8 for uint8 input, else float32; (y1 - y0, x1 - x0[, c]) with ``roi``.
    """
    src = np.asarray(src)
    roi = roi if roi is not None else (0, 0, int(size[0]), int(size[1]))
    idx, ax, ay = warp_taps(matrix, src.shape[:2], roi)
    if src.dtype == np.uint8:
        # BilinearTab_i: (32 - b)(32 - a) * 32 etc., summing to 2^15 exactly; rounded, saturated
        tab = 1 << INTER_BITS
        wts = np.stack([(tab - ay) * (tab - ax), (tab - ay) * ax, ay * (tab - ax), ay * ax]) * tab
        acc = (apply_taps(pad_flat(src, np.int64), idx, wts) + (1 << 14)) >> 15
        out = np.clip(acc, 0, 255).astype(np.uint8)
    else:
        out = apply_taps(pad_flat(src.astype(np.float32, copy=False)), idx, float_weights(ax, ay))
    return out.reshape(out.shape[:2] + src.shape[2:])
