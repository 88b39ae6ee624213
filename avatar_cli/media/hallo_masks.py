"""Hallo's face-region masks, bit for bit: the face and lip boxes enlarged as Hallo enlarges them,
drawn as 8-bit images, resized, blurred and normalised with OpenCV's own fixed-point arithmetic
(restated in numpy), one region mask per U-Net resolution, and the face-locator image.

Used by :func:`avatar_cli.media.face.face_conditions` (the Hallo family's face conditioning);
docs/hallo.md, "What runs" and "What is identical".
"""

from __future__ import annotations

import numpy as np
import torch

from .face_types import Box

FACE_EXPAND = 1.2
LIP_EXPAND = 2.0

# ------------------------------------------------------------------------------- region masks
# Hallo (fudan-generative-vision/hallo @ 8fd7c57) makes its audio-region masks as 8-bit images:
# ``hallo/utils/util.py`` get_face_mask / get_lip_mask draw the enlarged boxes at image size,
# get_blur_mask resizes them to 64x64 (cv2.resize, bilinear), blurs them (cv2.GaussianBlur, kernel 51
# for the face, 31 for the lips) and min-max normalises them (cv2.normalize), and writes PNGs;
# get_background_mask and get_sep_face_mask derive the background (255 - face) and the face without
# lips (face - lip, saturating). ``hallo/datasets/image_processor.py`` then resizes each 64x64 PNG
# separately to image/8, /16, /32 and /64 (torchvision Resize on a PIL image: Pillow's bilinear
# resize with its antialiasing, 8-bit out) and divides by 255 (ToTensor). The U-Net's audio
# attention at each resolution takes the level of that resolution (``hallo/models/attention.py``).
# The functions below compute the same images with numpy and Pillow, bit for bit (OpenCV's
# fixed-point arithmetic for 8-bit images restated).

MASK_SIDE = 64        # Hallo's blurred masks are 64x64 whatever the image size
MASK_LEVELS = 4       # one per U-Net resolution: latent, latent/2, latent/4, latent/8
FACE_KERNEL, LIP_KERNEL = 51, 31


def hallo_region(box: Box, ratio: float, width: int, height: int | None = None) -> tuple[int, int, int, int]:
    """A box enlarged about its centre as Hallo's ``expand_region`` does, in whole pixels.

    Args:
        box: (x, y, w, h) in the pixels of a (width x height) image; its edges are rounded first
            (``np.round``, half to even: Hallo rounds the landmarks' extremes).
        ratio: enlargement (Hallo's ``face_expand_ratio``, 1.2, for the face; 2.0 for the lips).
        width, height: the image's size in pixels (height defaults to width).

    Returns:
        (x0, x1, y0, y1) integer bounds: centre ``(low + high) // 2``, half side ``(high - low) *
        ratio // 2``, the box moved back inside the image rather than clipped, as Hallo does. The
        one difference: an enlarged box longer than the image is clipped to it (0..side), where
        Hallo's negative slice start would keep only a strip at the far edge.
    """
    x, y, w, h = box

    def axis(low: float, high: float, size: int) -> tuple[int, int]:
        low, high = float(np.round(low)), float(np.round(high))
        mid, side = (high + low) // 2, (high - low) * ratio
        low, high = mid - side // 2, mid + side // 2
        if low < 0:
            high, low = high - low, 0.0
        if high > size:
            low, high = low - (high - size), float(size)
        return int(max(round(low), 0)), int(min(round(high), size))

    x0, x1 = axis(x, x + w, width)
    y0, y1 = axis(y, y + h, width if height is None else height)
    return x0, x1, y0, y1


def hallo_hard_mask(box: Box, ratio: float, width: int, height: int | None = None) -> np.ndarray:
    """Hallo's hard box mask (``get_face_mask`` / ``get_lip_mask``): (height, width) uint8, 255
    inside :func:`hallo_region`, 0 elsewhere, at the image's own size."""
    x0, x1, y0, y1 = hallo_region(box, ratio, width, height)
    mask = np.zeros((width if height is None else height, width), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _linear_taps(src: int, dst: int, columns: bool):
    """OpenCV's INTER_LINEAR source indices and 11-bit weights along one axis (src -> dst):
    half-pixel centres computed in float32, each weight rounded alone. Along columns a position
    outside the image takes the edge pixel with weight 1; along rows the weights are kept and the
    row indices clamped (OpenCV's ``resizeGeneric_``; it matters only when enlarging)."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = dst / src
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    if columns:
        f = np.where(s < 0, np.float32(0), f)
        s = np.maximum(s, 0)
        last = s >= src - 1
        f, s = np.where(last, np.float32(0), f), np.where(last, src - 1, s)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def _resize_linear_u8(image: np.ndarray, side: int) -> np.ndarray:
    """OpenCV's ``cv2.resize(image, (side, side))`` (INTER_LINEAR) on a (H, W) uint8 image of any
    size and aspect: half-pixel centres, 11-bit fixed-point weights, its rounding (horizontal pass:
    sums of 11-bit products shifted right 4 bits; vertical pass: each product shifted right 16
    bits, the sum rounded by 2 more). Only
    the source rows and columns that the taps read are touched (a large portrait costs little).
    Returns (side, side) uint8."""
    y0, y1, wy0, wy1 = _linear_taps(image.shape[0], side, columns=False)
    x0, x1, wx0, wx1 = _linear_taps(image.shape[1], side, columns=True)

    def rows(index: np.ndarray) -> np.ndarray:
        a = image[index].astype(np.int64)
        return (a[:, x0] * wx0 + a[:, x1] * wx1) >> 4

    out = ((wy0[:, None] * rows(y0)) >> 16) + ((wy1[:, None] * rows(y1)) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def _gaussian_kernel_u8(kernel: int) -> np.ndarray:
    """OpenCV's bit-exact Gaussian kernel for 8-bit images (sigma 0.15 k + 0.35, i.e.
    0.3 ((k - 1) / 2 - 1) + 0.8): 8 fraction bits, rounded with error diffusion from the ends,
    the centre tap taking the remainder so that the taps sum to 256."""
    sigma = kernel * 0.15 + 0.35
    x = np.arange(kernel) - (kernel - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    taps = np.zeros(kernel, np.int64)
    err = 0.0
    for i in range(kernel // 2):
        value = g[i] * 256 + err
        taps[i] = taps[kernel - 1 - i] = int(np.rint(value))
        err = value - taps[i]
    taps[kernel // 2] = 256 - 2 * taps[: kernel // 2].sum()
    return taps


def _gaussian_blur_u8(image: np.ndarray, kernel: int) -> np.ndarray:
    """OpenCV's ``cv2.GaussianBlur(image, (k, k), 0)`` on a (H, W) uint8 image, bit for bit: fixed
    point rows then columns, reflected borders (BORDER_REFLECT_101), rounded to uint8."""
    taps = _gaussian_kernel_u8(kernel)
    pad = kernel // 2
    h, w = image.shape
    a = np.pad(image.astype(np.int64), ((0, 0), (pad, pad)), mode="reflect")
    rows = sum(taps[i] * a[:, i:i + w] for i in range(kernel))
    b = np.pad(rows, ((pad, pad), (0, 0)), mode="reflect")
    cols = sum(taps[i] * b[i:i + h] for i in range(kernel))
    return np.clip((cols + (1 << 15)) >> 16, 0, 255).astype(np.uint8)


def _normalise_u8(image: np.ndarray) -> np.ndarray:
    """``cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)`` on uint8, for every input.

    OpenCV (``core/src/norm.cpp`` normalize, then ``convertTo``): scale = 255 * (1 / (max - min))
    and shift = -min * scale in double, both cast to float32, then ``v * scale + shift`` as one
    fused multiply-add (a single float32 rounding) and rounded half to even. A constant image has
    scale 0 and shift 0: all 0 (a lip box that vanishes in the 64x64 resize, or a face box
    covering the whole frame, give an empty mask as in Hallo). The product and the sum are exact
    in float64 here (8-bit values, float32 scale and shift of at most 2^16), so one cast to float32
    is the FMA's rounding. Checked exhaustively in ``tests/media/test_face.py``.
    """
    low, high = int(image.min()), int(image.max())
    scale = 255.0 * (1.0 / (high - low)) if high > low else 0.0
    a, b = np.float64(np.float32(scale)), np.float64(np.float32(0.0 - low * scale))
    out = (image.astype(np.float64) * a + b).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def hallo_mask_images(face_box: Box, lip_box: Box, width: int, height: int | None = None,
                      face_expand_ratio: float = FACE_EXPAND) -> dict[str, np.ndarray]:
    """Hallo's three 64x64 8-bit region-mask images (its ``*_sep_background/face/lip.png``).

    Args:
        face_box, lip_box: (x, y, w, h) in the pixels of the (width x height) portrait, before
            enlarging (face ``face_expand_ratio``, lips 2x).
        width, height: the portrait's own size (height defaults to width): the boxes are drawn
            there, before any resize, as Hallo draws them on the source image.
        face_expand_ratio: Hallo's ``face_expand_ratio`` (1.2).

    Returns:
        {"full", "face", "lip"} -> (64, 64) uint8: the face box and the lip box each drawn at the
        portrait's size (:func:`hallo_hard_mask`), resized to 64x64, blurred (kernels 51 and 31)
        and min-max normalised (a constant image gives 0); full = the background (255 - face,
        through Hallo's float arithmetic), face = face - lip (saturating at 0), lip.
    """
    def blurred(box: Box, ratio: float, kernel: int) -> np.ndarray:
        hard = hallo_hard_mask(box, ratio, width, height)
        return _normalise_u8(_gaussian_blur_u8(_resize_linear_u8(hard, MASK_SIDE), kernel))

    face = blurred(face_box, face_expand_ratio, FACE_KERNEL)
    lip = blurred(lip_box, LIP_EXPAND, LIP_KERNEL)
    full = ((1.0 - face / 255.0) * 255).astype(np.uint8)  # Hallo truncates here (254.99.. -> 254)
    face_only = np.clip(face.astype(np.int16) - lip, 0, 255).astype(np.uint8)
    return {"full": full, "face": face_only, "lip": lip}


def mask_level_sides(latent: int) -> list[int]:
    """The U-Net's feature-map sides for a latent side: latent, then halved (rounded up, as a
    stride-2 convolution with padding 1 does) ``MASK_LEVELS - 1`` times."""
    sides = [latent]
    for _ in range(MASK_LEVELS - 1):
        sides.append((sides[-1] + 1) // 2)
    return sides


def mask_levels(image: np.ndarray, latent: int) -> tuple[torch.Tensor, ...]:
    """One 8-bit mask image at every U-Net resolution, as Hallo's image_processor makes them.

    Each level is resized from ``image`` itself (not from the level above) with Pillow's bilinear
    filter and its antialiasing (what torchvision's Resize does to a PIL image), kept 8-bit, then
    divided by 255 (ToTensor).

    Args:
        image: (S, S) uint8.
        latent: latent side h (image size / 8).

    Returns:
        ``MASK_LEVELS`` float32 tensors (h, h), (h/2, h/2), (h/4, h/4), (h/8, h/8) in [0, 1] (sides
        from :func:`mask_level_sides`).
    """
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return tuple(torch.from_numpy(np.asarray(picture.resize((side, side), Image.BILINEAR), dtype=np.uint8).copy())
                 .float().div(255) for side in mask_level_sides(latent))


def region_masks(face_box: Box, lip_box: Box, size: int, latent: int, portrait: tuple[int, int] | None = None,
                 face_expand_ratio: float = FACE_EXPAND) -> dict[str, tuple[torch.Tensor, ...]]:
    """Hallo's audio-region masks at every U-Net resolution (see the comment above).

    Args:
        face_box, lip_box: (x, y, w, h) in the portrait's pixels, before enlarging.
        size: frame side in pixels; the portrait's size when ``portrait`` is None.
        latent: latent side h (size / 8).
        portrait: (width, height) of the image the boxes are given in and drawn at (Hallo draws
            them on the source image at its own size); None = (size, size).
        face_expand_ratio: Hallo's ``face_expand_ratio`` (1.2).

    Returns:
        {"full", "face", "lip"} -> ``MASK_LEVELS`` float32 tensors (h, h), (h/2, h/2), (h/4, h/4),
        (h/8, h/8), multiples of 1/255 in [0, 1]; level k weights the audio attention of the
        U-Net blocks at that resolution.
    """
    width, height = portrait or (size, size)
    images = hallo_mask_images(face_box, lip_box, width, height, face_expand_ratio)
    return {region: mask_levels(image, latent) for region, image in images.items()}


def face_mask_image(face_box: Box, size: int, portrait: tuple[int, int] | None = None,
                    face_expand_ratio: float = FACE_EXPAND) -> torch.Tensor:
    """The face-locator input, as Hallo makes it (``get_face_mask``, then ``ImageProcessor``'s
    ``cond_transform``): the face box enlarged by ``face_expand_ratio`` (:func:`hallo_hard_mask`)
    drawn at the portrait's own size, resized to (size x size) with Pillow's bilinear filter
    (torchvision's ``Resize`` on a PIL image; none when the sizes agree), divided by 255.

    Args:
        face_box: (x, y, w, h) in the portrait's pixels, before enlarging.
        size: frame side S in pixels.
        portrait: (width, height) of the image the box is given in; None = (size, size).
        face_expand_ratio: Hallo's ``face_expand_ratio`` (1.2).

    Returns:
        (3, S, S) float32 in [0, 1], multiples of 1/255 (0 and 1 only when no resize happens).
    """
    from PIL import Image

    width, height = portrait or (size, size)
    hard = hallo_hard_mask(face_box, face_expand_ratio, width, height)
    if (width, height) != (size, size):
        hard = np.asarray(Image.fromarray(hard).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(hard.astype(np.float32) / 255)[None].expand(3, -1, -1).contiguous()
