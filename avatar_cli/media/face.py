"""Face conditioning for the Hallo family: face and lip boxes, region masks, face embedding.

Hallo's inference (restated in docs/hallo.md, "What runs") conditions on three things derived from the portrait:

- the **face-locator image**: the face box (the face's extent, enlarged by ``face_expand_ratio``,
  1.2) as a hard mask drawn at the portrait's own size and resized to (3, S, S) in [0, 1], turned
  into features by the face locator (:func:`face_mask_image`);
- the **region masks** of the audio attention, one per U-Net resolution (latent, /2, /4, /8), made
  as Hallo makes them, as 8-bit images: the face box (enlarged 1.2x) and the lip box (enlarged 2x)
  drawn at the portrait's own size, resized to 64x64, blurred (Gaussian, kernels 51 and 31) and min-max
  normalised; full (background) = 1 - face; face without lips = max(face - lip, 0); each level
  resized from the 64x64 image (bilinear with antialiasing), see :func:`region_masks`;
- the **face embedding**: InsightFace's ArcFace embedding (512-d) of the face, through the image
  projector; zeros (Hallo's unconditional embedding) when there is none.

Boxes come from ``--face-box`` / ``--lip-box`` (input-image pixels), else MediaPipe's face mesh when
the optional ``face`` extra is installed, else the whole frame with a warning (anime, pets) and the
lips in the lower middle of the face box. A non-square portrait is cut or padded to a square
(``--fit``) before the boxes are drawn on it at its side in the file's pixels (Hallo stretches it
instead): docs/hallo.md, "What is identical".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

FACE_EXPAND = 1.2
LIP_EXPAND = 2.0

Box = tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass
class FaceConditions:
    """What the Hallo family's face conditioning receives for one portrait.

    Attributes:
        embedding: (512,) face embedding, or None for the zero (unconditional) embedding.
        mask_image: (3, S, S) in [0, 1], the face-locator input.
        region_masks: {"full", "face", "lip"} -> 4 levels (h, w), (h/2, w/2), (h/4, w/4),
            (h/8, w/8) (:func:`region_masks`).
        face_box, lip_box: boxes in frame pixels (before enlarging).
        source: "face-box option", "mediapipe" or "whole frame" (no face located).
        image: EchoMimic family only: the portrait cropped to the face (:func:`echomimic_face`),
            (S, S, 3) uint8, rendered instead of the input frame; None elsewhere.
    """

    embedding: torch.Tensor | None
    mask_image: torch.Tensor
    region_masks: dict[str, tuple[torch.Tensor, ...]] | None
    face_box: Box
    lip_box: Box | None
    source: str
    image: np.ndarray | None = None


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


# ------------------------------------------------------------------------------------ detection
def detect_face(image: np.ndarray) -> tuple[Box, Box] | None:
    """Face and lip boxes of the largest face with MediaPipe's face mesh (the ``face`` extra).

    Args:
        image: (S, S, 3) uint8 RGB.

    Returns:
        (face box, lip box) in pixels, or None when no face is found.

    Raises:
        ImportError: MediaPipe (with its packaged face-mesh model) is not installed.
    """
    import mediapipe as mp  # optional: pip install 'avatar-cli[face]'

    mesh = mp.solutions.face_mesh
    with mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as model:
        result = model.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    points = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])
    lips = sorted({i for pair in mesh.FACEMESH_LIPS for i in pair})

    def bounds(p: np.ndarray) -> Box:
        x0, y0 = p.min(axis=0)
        x1, y1 = p.max(axis=0)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    return bounds(points), bounds(points[lips])


def lip_box_from_face(face_box: Box) -> Box:
    """Where the lips sit in a frontal face box when no landmarks are known: the middle half of
    the width, 65-85 % of the height (typical portrait proportions)."""
    x, y, w, h = face_box
    return x + 0.25 * w, y + 0.65 * h, 0.5 * w, 0.2 * h


# ------------------------------------------------------------------------------------ embedding
def arcface_embedding(image: np.ndarray, model_root: str | Path) -> torch.Tensor | None:
    """InsightFace's ArcFace embedding (512-d, unnormalised, as Hallo uses) of the largest face.

    Args:
        image: (S, S, 3) uint8 RGB.
        model_root: a folder with ``models/`` holding InsightFace's detection and recognition ONNX
            files (Hallo's ``face_analysis``).

    Returns:
        (512,) float32, or None when no face is found.

    Raises:
        ImportError: insightface / onnxruntime not installed (the ``arcface`` extra).
    """
    from insightface.app import FaceAnalysis  # optional: pip install 'avatar-cli[arcface]'

    app = FaceAnalysis(name="", root=str(model_root), providers=["CPUExecutionProvider"],
                       allowed_modules=["detection", "recognition"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))  # InsightFace takes BGR
    if not faces:
        return None
    largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return torch.from_numpy(np.asarray(largest.embedding, dtype=np.float32))


def load_embedding(path: str | Path) -> torch.Tensor:
    """A face embedding saved with numpy (.npy, 512 floats). Raises InputError if unreadable."""
    try:
        values = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read face embedding {path}: {err}; give a .npy file of 512 floats") from None
    if values.shape != (512,):
        raise InputError(f"face embedding {path} has {values.size} values; it needs 512 (ArcFace)")
    return torch.from_numpy(values)


def face_conditions(image: np.ndarray, latent: int, face_box: Box | None = None, embedding: str = "auto",
                    arcface_root: str | Path | None = None, warn=print, lip_box: Box | None = None,
                    side: int | None = None, face_expand_ratio: float = FACE_EXPAND) -> FaceConditions:
    """Everything the Hallo family's face conditioning needs, for a portrait at render size.

    The face-locator image and the region masks are drawn as Hallo draws them, on the portrait at
    its own size before any resize (:func:`face_mask_image`, :func:`region_masks`): here the
    square portrait the render uses (``--fit`` crop or pad of the input file) at its side in the
    file's pixels, ``side``; the boxes are scaled to it from frame pixels (to 1e-6 px, so that
    boxes given in the file's whole or decimal pixels come back exactly).

    Args:
        image: (S, S, 3) uint8 RGB at render size.
        latent: latent side (S / 8).
        face_box: the face in frame pixels (from ``--face-box``); None = detect.
        embedding: "auto" (ArcFace), "none" (zero embedding) or a path to a .npy file.
        arcface_root: InsightFace model folder for "auto".
        warn: where the no-face warning goes.
        lip_box: the lips in frame pixels (from ``--lip-box``); None = MediaPipe's lip landmarks
            (also with ``face_box`` given, when the ``face`` extra finds a face), else the lower
            middle of the face box (:func:`lip_box_from_face`).
        side: the square portrait's side before resizing to S; None = S.
        face_expand_ratio: Hallo's ``face_expand_ratio`` (1.2).

    Raises:
        InputError: "auto" without InsightFace or its models (the message says how to get them,
            or to pass --no-face-embedding).
    """
    size = image.shape[0]
    source = "face-box option"
    if face_box is None or lip_box is None:
        try:
            found = detect_face(image)
            why = "no face found"
        except ImportError:
            found, why = None, "no face detector installed: pip install 'avatar-cli[face]'"
        if face_box is None:
            if found:
                face_box, source = found[0], "mediapipe"
            else:
                warn(f"warning: {why}; the whole frame is taken as the face (pass --face-box x,y,w,h to set it)")
                face_box, source = (0.0, 0.0, float(size), float(size)), "whole frame"
        if lip_box is None and found:
            lip_box = found[1]
    if lip_box is None:
        lip_box = lip_box_from_face(face_box)

    if embedding == "none":
        vector = None
    elif embedding == "auto":
        if arcface_root is None:
            raise InputError("--model hallo conditions on the face's ArcFace embedding: download it "
                             "('avatar weights download hallo-face-analysis') and install the arcface extra, "
                             "or pass --no-face-embedding (Hallo's zero embedding) or --face-embedding FILE.npy")
        try:
            vector = arcface_embedding(image, arcface_root)
        except ImportError:
            raise InputError("the ArcFace embedding needs InsightFace: pip install 'avatar-cli[arcface]', "
                             "or pass --no-face-embedding or --face-embedding FILE.npy") from None
        if vector is None:
            warn("warning: InsightFace found no face; using the zero face embedding")
    else:
        vector = load_embedding(embedding)
    side = size if side is None else int(side)
    scaled = [tuple(round(v * side / size, 6) for v in box) for box in (face_box, lip_box)]
    portrait = (side, side)
    return FaceConditions(vector, face_mask_image(scaled[0], size, portrait, face_expand_ratio),
                          region_masks(scaled[0], scaled[1], size, latent, portrait, face_expand_ratio),
                          tuple(face_box), tuple(lip_box), source)


# ------------------------------------------------------------------------------------ EchoMimic
# antgroup/echomimic infer_audio2vid.py / infer_audio2vid_acc.py (select_face, the face-mask and
# face-crop block) and src/utils/util.py crop_and_pad, restated.
ECHO_MASK_DILATION = 0.1   # --facemusk_dilation_ratio
ECHO_CROP_DILATION = 0.5   # --facecrop_dilation_ratio


def _resize_u8(image: np.ndarray, side: int) -> np.ndarray:
    """(h, w[, c]) uint8 -> (side, side[, c]) uint8, bilinear without antialiasing (half-pixel
    centres, OpenCV's INTER_LINEAR rule; its fixed-point rounding may differ by one level)."""
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image)).float()
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
    out = out[0].round().clamp(0, 255).to(torch.uint8)
    return (out[0] if image.ndim == 2 else out.permute(1, 2, 0)).numpy()


def detect_face_mtcnn(image: np.ndarray) -> Box | None:
    """EchoMimic's face detector: facenet-pytorch's MTCNN with the inference script's settings
    (``infer_audio2vid*.py``: image_size 320, min_face_size 20, thresholds 0.6/0.7/0.7, factor 0.709),
    then ``select_face``: the largest box with probability > 0.8.

    Upstream hands MTCNN the image as OpenCV reads it (BGR); so do we, so that the boxes agree.

    Args:
        image: (S, S, 3) uint8 RGB.

    Returns:
        (x, y, w, h) in pixels, or None.

    Raises:
        ImportError: facenet-pytorch is not installed (the ``mtcnn`` extra).
    """
    from facenet_pytorch import MTCNN  # optional: pip install 'avatar-cli[mtcnn]'

    detector = MTCNN(image_size=320, margin=0, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709,
                     post_process=True, device="cpu")
    boxes, probs = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))
    if boxes is None or probs is None:
        return None
    kept = [b for b, p in zip(boxes, probs) if p is not None and p > 0.8]
    if not kept:
        return None
    x0, y0, x1, y1 = (float(v) for v in max(kept, key=lambda b: (b[3] - b[1]) * (b[2] - b[0]))[:4])
    return x0, y0, x1 - x0, y1 - y0


def echomimic_face(image: np.ndarray, face_box: Box | None = None, warn=print, found: bool | None = None
                   ) -> FaceConditions:
    """EchoMimic's face conditioning of a portrait: the crop and the 1-channel face-locator mask.

    As EchoMimic's inference script: the largest face's box (x0, y0, x1, y1 rounded to pixels);
    the mask is 1 inside the box dilated by 0.1 of its height (rows) and width (columns) on each
    side, 0 elsewhere; the image and the mask are cut to the box dilated by 0.5 (clipped to the
    image), reduced to the centred square of its shorter side (``crop_and_pad``), and resized to
    the frame size (bilinear; the mask's 8-bit values divided by 255). Without a face: no crop and
    a mask of ones ("so anime and pets run").

    The face: ``face_box`` (``--face-box``), else EchoMimic's MTCNN (:func:`detect_face_mtcnn`, the
    ``mtcnn`` extra), else MediaPipe (:func:`detect_face`, the ``face`` extra), else none.

    Differences from upstream: without the ``mtcnn`` extra the box is MediaPipe's, not MTCNN's; the
    crop is cut from the frame at render size, not from the input file at its own resolution; a
    dilated box that crosses the top or left edge is clipped (upstream's negative slice start leaves
    the mask empty).

    Args:
        image: (S, S, 3) uint8 RGB frame.
        face_box: (x, y, w, h) frame pixels, e.g. from ``--face-box``; None = detect (unless
            ``found`` is False: treat as no face).
        warn: where the no-face warning goes.

    Returns:
        :class:`FaceConditions` with ``mask_image`` (1, S, S) in [0, 1], ``image`` the cropped
        portrait (S, S, 3) uint8, no embedding and no region masks.
    """
    size = image.shape[0]
    source = "face-box option"
    if face_box is None and found is not False:
        why = "no face found"
        try:
            face_box, source = detect_face_mtcnn(image), "mtcnn"
        except ImportError:
            try:
                detected = detect_face(image)
                face_box, source = (detected[0] if detected else None), "mediapipe"
            except ImportError:
                why = "no face detector installed: pip install 'avatar-cli[mtcnn]' (EchoMimic's MTCNN) or '[face]'"
        if face_box is None:
            warn(f"warning: {why}; the whole frame is the face mask and the portrait is not cropped "
                 f"(pass --face-box x,y,w,h to set it)")
    if face_box is None:
        mask = torch.ones(1, size, size)
        return FaceConditions(None, mask, None, (0.0, 0.0, float(size), float(size)), None, "whole frame", image)
    height, width = image.shape[:2]
    x, y, w, h = face_box
    cb, rb, ce, re = (int(v) for v in np.round([x, y, x + w, y + h]))
    mask = np.zeros((height, width), np.uint8)
    r_pad, c_pad = int((re - rb) * ECHO_MASK_DILATION), int((ce - cb) * ECHO_MASK_DILATION)
    mask[max(rb - r_pad, 0):max(re + r_pad, 0), max(cb - c_pad, 0):max(ce + c_pad, 0)] = 255
    r_pad, c_pad = int((re - rb) * ECHO_CROP_DILATION), int((ce - cb) * ECHO_CROP_DILATION)
    x0, y0 = max(0, cb - c_pad), max(0, rb - r_pad)
    x1, y1 = min(ce + c_pad, width), min(re + r_pad, height)
    side = min(x1 - x0, y1 - y0)  # crop_and_pad: the centred square of the shorter side
    nx0, ny0 = max(0, (x0 + x1) // 2 - side // 2), max(0, (y0 + y1) // 2 - side // 2)
    nx1, ny1 = min(width, nx0 + side), min(height, ny0 + side)
    side = min(nx1 - nx0, ny1 - ny0)
    if side <= 0:
        raise InputError(f"the face box {face_box} leaves nothing to crop in the {width}x{height} frame")
    crop = _resize_u8(image[ny0:ny0 + side, nx0:nx0 + side], size)
    mask = torch.from_numpy(_resize_u8(mask[ny0:ny0 + side, nx0:nx0 + side], size).astype(np.float32) / 255)[None]
    return FaceConditions(None, mask, None, tuple(float(v) for v in face_box), None, source, crop)
