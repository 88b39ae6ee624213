"""Paste a rendered 512x512 face crop back into the full frame (Ditto's paste-back).

Re-implemented from Ditto's ``core/utils/get_mask.py`` (feathered crop mask), ``core/atomic_components/
putback.py`` (warp of mask and render with ``M_c2o``) and ``core/utils/blend/blend_impl.c`` (blend and
truncation to uint8), antgroup/ditto-talkinghead @ e9191cf; DITTO notes section 9.

The warp is ``media/warp.py``'s (``cv2.warpAffine`` with OpenCV's fixed-point coordinates, in numpy).
"""

from __future__ import annotations

import numpy as np

from .warp import apply_taps, float_weights, pad_flat, warp_affine, warp_taps

__all__ = ["PasteBack", "get_mask", "paste_back", "warp_affine"]  # warp_affine: media/warp.py


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
        self.idx, ax, ay = warp_taps(m_c2o, (ch, cw), self.roi)
        self.wts = float_weights(ax, ay)
        self.mask_w = np.clip(apply_taps(pad_flat(mask), self.idx, self.wts), 0, 1)  # (h', w', 1)
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
        render_w = apply_taps(pad_flat(np.asarray(render, dtype=np.float32)), self.idx, self.wts)
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
