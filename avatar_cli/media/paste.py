"""Paste a rendered 512x512 face crop back into the full frame (Ditto's paste-back).

Re-implemented from Ditto's ``core/utils/get_mask.py`` (feathered crop mask), ``core/atomic_components/
putback.py`` (warp of mask and render with ``M_c2o``) and ``core/utils/blend/blend_impl.c`` (blend and
truncation to uint8), antgroup/ditto-talkinghead @ e9191cf; DITTO notes section 9.

OpenCV is not a dependency: :func:`warp_affine` re-implements ``cv2.warpAffine(..., INTER_LINEAR,
BORDER_CONSTANT 0)`` in numpy, including OpenCV's fixed-point source coordinates (1/32 pixel).
"""

from __future__ import annotations

import numpy as np

_INTER_BITS = 5  # OpenCV INTER_BITS: bilinear weights in 1/32 pixel steps
_AB_BITS = 10  # OpenCV AB_BITS: fixed-point precision of the affine coordinates


def get_mask(width: int = 512, height: int = 512, ratio_w: float = 0.9, ratio_h: float = 0.9) -> np.ndarray:
    """Feathered crop mask (Ditto's ``get_mask``): 1 inside the central ``ratio`` box, linear ramps to 0 at
    the borders, corners ``1 - clip(distance to the inner corner, 0, 1)`` in ramp units.

    For 512x512 at 0.9: the inner box is 460x460 at offset 26, ramps over 26 pixels with
    ``linspace(0, 1, 26)`` values (the outermost row/column is 0).

    Returns:
        (height, width, 1) float32 in [0, 1].
    """
    w, h = int(width * ratio_w), int(height * ratio_h)
    x1, y1 = (width - w) // 2, (height - h) // 2
    x2, y2 = x1 + w, y1 + h
    # ramp values (0 at the image edge -> 1 at the inner box), one per border row/column
    left = np.linspace(0, 1, x1)
    right = np.linspace(1, 0, width - x2)
    top = np.linspace(0, 1, y1)
    bottom = np.linspace(1, 0, height - y2)
    mask = np.ones((height, width), dtype=np.float32)
    mask[:y1, x1:x2] = top[:, None].astype(np.float32)
    mask[y2:, x1:x2] = bottom[:, None].astype(np.float32)
    mask[y1:y2, :x1] = left[None, :].astype(np.float32)
    mask[y1:y2, x2:] = right[None, :].astype(np.float32)

    def corner(dist_x: np.ndarray, dist_y: np.ndarray) -> np.ndarray:
        d = np.sqrt(dist_x[None, :] ** 2 + dist_y[:, None] ** 2).astype(np.float32)
        return 1 - np.clip(d, 0, 1)

    # distance from the inner corner in ramp units: 1 at the outer edge, 0 at the inner box
    mask[:y1, :x1] = corner(np.linspace(1, 0, x1), np.linspace(1, 0, y1))
    mask[:y1, x2:] = corner(np.linspace(0, 1, width - x2), np.linspace(1, 0, y1))
    mask[y2:, :x1] = corner(np.linspace(1, 0, x1), np.linspace(0, 1, height - y2))
    mask[y2:, x2:] = corner(np.linspace(0, 1, width - x2), np.linspace(0, 1, height - y2))
    return mask[:, :, None]


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix in float64 (as ``cv2.invertAffineTransform``)."""
    m = np.asarray(m, dtype=np.float64)[:2]
    a, b, c = m[0]
    d, e, f = m[1]
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    ia, ib, id_, ie = e * det, -b * det, -d * det, a * det
    return np.array([[ia, ib, -ia * c - ib * f], [id_, ie, -id_ * c - ie * f]])


def _warp_taps(matrix: np.ndarray, src_hw: tuple[int, int], roi: tuple[int, int, int, int]):
    """OpenCV's INTER_LINEAR taps for output pixels ``roi = (x0, y0, x1, y1)``: indices into the source padded
    by one zero pixel on each side and flattened, and bilinear weights; both (4, y1 - y0, x1 - x0)."""
    x_lo, y_lo, x_hi, y_hi = roi
    im = _invert_affine(matrix)
    scale = 1 << _AB_BITS
    round_delta = scale // (1 << _INTER_BITS) // 2
    xs = np.arange(x_lo, x_hi, dtype=np.float64)
    ys = np.arange(y_lo, y_hi, dtype=np.float64)
    adelta = np.rint(im[0, 0] * xs * scale).astype(np.int64)
    bdelta = np.rint(im[1, 0] * xs * scale).astype(np.int64)
    x0 = np.rint((im[0, 1] * ys + im[0, 2]) * scale).astype(np.int64) + round_delta
    y0 = np.rint((im[1, 1] * ys + im[1, 2]) * scale).astype(np.int64) + round_delta
    gx = (x0[:, None] + adelta[None, :]) >> (_AB_BITS - _INTER_BITS)
    gy = (y0[:, None] + bdelta[None, :]) >> (_AB_BITS - _INTER_BITS)
    tab = 1 << _INTER_BITS
    fx = (gx & (tab - 1)).astype(np.float32) / tab
    fy = (gy & (tab - 1)).astype(np.float32) / tab
    h, w = src_hw
    # neighbours outside the source land on the zero border (indices clipped onto it)
    px = np.clip((gx >> _INTER_BITS) + 1, 0, w + 1)
    px1 = np.clip((gx >> _INTER_BITS) + 2, 0, w + 1)
    row0 = np.clip((gy >> _INTER_BITS) + 1, 0, h + 1) * (w + 2)
    row1 = np.clip((gy >> _INTER_BITS) + 2, 0, h + 1) * (w + 2)
    idx = np.stack([row0 + px, row0 + px1, row1 + px, row1 + px1])
    wts = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return idx, wts


def _pad_flat(src: np.ndarray) -> np.ndarray:
    h, w = src.shape[:2]
    c = 1 if src.ndim == 2 else src.shape[2]
    padded = np.zeros((h + 2, w + 2, c), dtype=np.float32)
    padded[1:-1, 1:-1] = src.reshape(h, w, c)
    return padded.reshape(-1, c)


def _apply_taps(flat, idx, wts):
    return (flat[idx[0]] * wts[0][..., None] + flat[idx[1]] * wts[1][..., None]
            + flat[idx[2]] * wts[2][..., None] + flat[idx[3]] * wts[3][..., None])


def warp_affine(src: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``cv2.warpAffine(src, matrix, size, flags=INTER_LINEAR)`` with a constant 0 border, in numpy.

    Output pixel (x, y) samples ``src`` at ``inverse(matrix) @ (x, y, 1)``, with OpenCV's fixed-point
    coordinates (OpenCV <= 4.10, Ditto's pinned version): products scaled by 2^10 and rounded, then reduced to
    1/32 pixel, bilinear weights of those 1/32 steps; source pixels outside the image count as 0. OpenCV 4.11+
    samples at float coordinates instead (differences up to ~2 % of the local contrast at sharp edges).

    Args:
        src: (h, w) or (h, w, c) float32 image.
        matrix: (2, 3) or (3, 3) forward affine transform src -> dst (only the first two rows are used).
        size: (width, height) of the output.
        roi: optional (x0, y0, x1, y1): compute only that part of the output (same values as the full warp).

    Returns:
        (height, width[, c]) float32, or (y1 - y0, x1 - x0[, c]) with ``roi``.
    """
    src = np.asarray(src, dtype=np.float32)
    roi = roi if roi is not None else (0, 0, size[0], size[1])
    idx, wts = _warp_taps(matrix, src.shape[:2], roi)
    out = _apply_taps(_pad_flat(src), idx, wts)
    return out.reshape(out.shape[:2] + src.shape[2:])


def _crop_roi(m_c2o: np.ndarray, crop_w: int, crop_h: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """Output pixels the warped crop can touch: the bounding box of its corners plus 2 pixels, clipped."""
    m = np.asarray(m_c2o, dtype=np.float64)[:2]
    corners = np.array([[0, 0, 1], [crop_w, 0, 1], [0, crop_h, 1], [crop_w, crop_h, 1]], np.float64) @ m.T
    x0, y0 = np.floor(corners.min(0)) - 2
    x1, y1 = np.ceil(corners.max(0)) + 3
    return (int(np.clip(x0, 0, out_w)), int(np.clip(y0, 0, out_h)), int(np.clip(x1, 0, out_w)), int(np.clip(y1, 0, out_h)))


class PasteBack:
    """Paste-back for a fixed crop transform (an image source: one ``M_c2o`` for all frames), precomputed.

    The warped mask, the warp taps and the output box are computed once; each call then gathers the render
    and blends, in numpy, or in torch on the render's device when the render is a torch tensor (e.g. the
    decoder's output on the GPU, then the result is a uint8 tensor on that device). Same values as
    :func:`paste_back`.

    Args:
        m_c2o: (3, 3) or (2, 3) crop -> original transform.
        frame_hw: (H, W) of the full frame.
        crop_hw: (h, w) of the render (512, 512).
        mask: crop mask (h, w[, 1]); default :func:`get_mask` (0.9, 0.9).
    """

    def __init__(self, m_c2o: np.ndarray, frame_hw: tuple[int, int], crop_hw: tuple[int, int] = (512, 512),
                 mask: np.ndarray | None = None):
        h, w = frame_hw
        ch, cw = crop_hw
        self.frame_hw = (h, w)
        self.crop_hw = (ch, cw)
        self.roi = _crop_roi(m_c2o, cw, ch, w, h)
        x0, y0, x1, y1 = self.roi
        self.empty = x1 <= x0 or y1 <= y0
        if self.empty:
            return
        if mask is None:
            mask = get_mask(cw, ch, 0.9, 0.9)
        mask = np.asarray(mask, dtype=np.float32).reshape(ch, cw)
        self.idx, self.wts = _warp_taps(m_c2o, (ch, cw), self.roi)
        self.mask_w = np.clip(_apply_taps(_pad_flat(mask), self.idx, self.wts), 0, 1)  # (h', w', 1)
        self._torch = {}

    def __call__(self, frame, render):
        """Blend ``render`` ((h, w, 3) float32 in [0, 255], numpy or torch) into ``frame`` ((H, W, 3) uint8,
        numpy or torch); returns (H, W, 3) uint8 of the render's kind."""
        if type(render).__module__.startswith("torch"):
            return self._call_torch(frame, render)
        frame = np.asarray(frame)
        out = frame.copy()
        if self.empty:
            return out
        x0, y0, x1, y1 = self.roi
        render_w = _apply_taps(_pad_flat(np.asarray(render, dtype=np.float32)), self.idx, self.wts)
        blend = self.mask_w * render_w + (np.float32(1) - self.mask_w) * frame[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(blend, 0, 255).astype(np.uint8)
        return out

    def _call_torch(self, frame, render):
        import torch

        dev = render.device
        frame_t = torch.as_tensor(np.asarray(frame) if not isinstance(frame, torch.Tensor) else frame).to(dev)
        out = frame_t.clone()
        if self.empty:
            return out
        if dev not in self._torch:
            self._torch[dev] = (torch.as_tensor(self.idx, device=dev), torch.as_tensor(self.wts, device=dev)[..., None],
                                torch.as_tensor(self.mask_w, device=dev))
        idx, wts, mask_w = self._torch[dev]
        ch, cw = self.crop_hw
        padded = torch.zeros((ch + 2, cw + 2, render.shape[-1]), dtype=torch.float32, device=dev)
        padded[1:-1, 1:-1] = render.to(torch.float32)
        flat = padded.reshape(-1, render.shape[-1])
        render_w = flat[idx[0]] * wts[0] + flat[idx[1]] * wts[1] + flat[idx[2]] * wts[2] + flat[idx[3]] * wts[3]
        x0, y0, x1, y1 = self.roi
        blend = mask_w * render_w + (1 - mask_w) * frame_t[y0:y1, x0:x1].to(torch.float32)
        out[y0:y1, x0:x1] = blend.clamp(0, 255).to(torch.uint8)  # float -> uint8 truncates toward zero
        return out


def paste_back(frame: np.ndarray, render: np.ndarray, m_c2o: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a rendered crop into the full frame (Ditto's ``PutBack``).

    ``mask_w = clip(warp(mask), 0, 1)``, ``render_w = warp(render)`` with ``M_c2o``; ``out = mask_w * render_w +
    (1 - mask_w) * frame`` in float32, clamped to [0, 255] and truncated (not rounded) to uint8.

    Args:
        frame: (H, W, 3) uint8 source frame.
        render: (512, 512, 3) float32 render in [0, 255] (the decoder output ``clip(0, 1) * 255``).
        m_c2o: (3, 3) or (2, 3) crop -> original transform.
        mask: (512, 512) or (512, 512, 1) float32 mask; default :func:`get_mask` of the render size.

    Returns:
        (H, W, 3) uint8.
    """
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    if mask is None:
        mask = get_mask(render.shape[1], render.shape[0], 0.9, 0.9)
    mask = np.asarray(mask, dtype=np.float32).reshape(render.shape[0], render.shape[1])
    # outside the warped crop the mask is 0 and the frame is kept: blend only inside its bounding box
    return PasteBack(m_c2o, (h, w), render.shape[:2], mask)(frame, render)
