"""Face conditioning for the Hallo family: face and lip boxes, region masks, face embedding.

Hallo's inference (restated in docs/hallo.md, "What runs") conditions on three things derived from the portrait:

- the **face-locator image**: the face box (the face's extent, enlarged 1.2x) as a hard mask image
  (3, S, S) in [0, 1], turned into features by the face locator;
- the **region masks** of the audio attention at latent resolution: face = the face box blurred
  (Gaussian, kernel 51 at 64x64 latents), lip = the lip box (enlarged 2x) blurred (kernel 31),
  each min-max normalised; full (background) = 1 - face; face without lips = max(face - lip, 0);
- the **face embedding**: InsightFace's ArcFace embedding (512-d) of the face, through the image
  projector; zeros (Hallo's unconditional embedding) when there is none.

Boxes come from ``--face-box`` (input-image pixels), else MediaPipe's face mesh when the optional
``face`` extra is installed, else the whole frame with a warning (anime, pets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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
        region_masks: {"full", "face", "lip"} -> (h, w) at latent resolution.
        face_box, lip_box: boxes in frame pixels (before enlarging).
        source: "face-box option", "mediapipe" or "whole frame" (no face located).
    """

    embedding: torch.Tensor | None
    mask_image: torch.Tensor
    region_masks: dict[str, torch.Tensor]
    face_box: Box
    lip_box: Box
    source: str


def expand(box: Box, ratio: float, size: int) -> Box:
    """Enlarge a box about its centre by ``ratio``, clipped to the (size x size) frame."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    w, h = w * ratio, h * ratio
    x0, y0 = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
    x1, y1 = min(float(size), cx + w / 2), min(float(size), cy + h / 2)
    return x0, y0, x1 - x0, y1 - y0


def box_mask(box: Box, size: int, grid: int) -> torch.Tensor:
    """A hard (grid, grid) mask of a box given in (size x size) frame pixels."""
    scale = grid / size
    x, y, w, h = (v * scale for v in box)
    mask = torch.zeros(grid, grid)
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = int(math.ceil(x + w)), int(math.ceil(y + h))
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1.0
    return mask


def gaussian_blur(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """OpenCV's GaussianBlur(ksize, sigma=0) on a (h, w) mask: sigma = 0.3 ((k - 1) / 2 - 1) + 0.8,
    reflected borders."""
    kernel = max(3, kernel | 1)
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    weights = torch.exp(-(offsets ** 2) / (2 * sigma ** 2))
    weights = (weights / weights.sum()).float()
    pad = kernel // 2
    x = mask[None, None]
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect" if pad < x.shape[-1] else "replicate")
    x = F.conv2d(x, weights.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad, pad), mode="reflect" if pad < x.shape[-2] else "replicate")
    x = F.conv2d(x, weights.view(1, 1, -1, 1))
    return x[0, 0]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.ones_like(x)


def region_masks(face_box: Box, lip_box: Box, size: int, latent: int) -> dict[str, torch.Tensor]:
    """Hallo's audio-region masks at latent resolution (see module docstring)."""
    kernel_scale = latent / 64  # Hallo's kernels are for 64x64 latents (512 px)
    face = _normalise(gaussian_blur(box_mask(expand(face_box, FACE_EXPAND, size), size, latent),
                                    round(51 * kernel_scale)))
    lip = _normalise(gaussian_blur(box_mask(expand(lip_box, LIP_EXPAND, size), size, latent),
                                   round(31 * kernel_scale)))
    return {"full": 1.0 - face, "face": (face - lip).clamp(min=0.0), "lip": lip}


def face_mask_image(face_box: Box, size: int) -> torch.Tensor:
    """The face-locator input: the enlarged face box as a (3, S, S) hard mask in [0, 1]."""
    return box_mask(expand(face_box, FACE_EXPAND, size), size, size)[None].expand(3, -1, -1).contiguous()


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
                    arcface_root: str | Path | None = None, warn=print) -> FaceConditions:
    """Everything the Hallo family's face conditioning needs, for a portrait at render size.

    Args:
        image: (S, S, 3) uint8 RGB at render size.
        latent: latent side (S / 8).
        face_box: the face in frame pixels (from ``--face-box``); None = detect.
        embedding: "auto" (ArcFace), "none" (zero embedding) or a path to a .npy file.
        arcface_root: InsightFace model folder for "auto".
        warn: where the no-face warning goes.

    Raises:
        InputError: "auto" without InsightFace or its models (the message says how to get them,
            or to pass --no-face-embedding).
    """
    size = image.shape[0]
    lip_box, source = None, "face-box option"
    if face_box is None:
        try:
            found = detect_face(image)
            why = "no face found"
        except ImportError:
            found, why = None, "no face detector installed: pip install 'avatar-cli[face]'"
        if found:
            (face_box, lip_box), source = found, "mediapipe"
        else:
            warn(f"warning: {why}; the whole frame is taken as the face (pass --face-box x,y,w,h to set it)")
            face_box, source = (0.0, 0.0, float(size), float(size)), "whole frame"
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
    return FaceConditions(vector, face_mask_image(face_box, size), region_masks(face_box, lip_box, size, latent),
                          face_box, lip_box, source)
