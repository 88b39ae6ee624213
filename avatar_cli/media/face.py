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

The pieces live one module per idea, all re-exported here (the old import path):

- ``media/face_types.py``: :class:`FaceConditions`, ``Box``;
- ``media/hallo_masks.py``: Hallo's 8-bit mask arithmetic (:func:`hallo_region`,
  :func:`hallo_mask_images`, :func:`region_masks`, :func:`face_mask_image`);
- ``media/face_mesh.py``: MediaPipe's face and lip boxes (:func:`detect_face`,
  :func:`lip_box_from_face`);
- ``media/arcface.py``: the face embedding (:func:`arcface_embedding`, :func:`load_embedding`);
- ``media/echomimic_face.py``: EchoMimic's MTCNN face rule (:func:`detect_face_mtcnn`,
  :func:`echomimic_face`).

:func:`face_conditions` (here) puts the Hallo family's together; it looks up ``detect_face``,
``arcface_embedding`` and ``load_embedding`` in this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .arcface import arcface_embedding, load_embedding  # noqa: F401
from .echomimic_face import (ECHO_CROP_DILATION, ECHO_MASK_DILATION, _resize_u8, detect_face_mtcnn,  # noqa: F401
                             echomimic_face)
from .face_mesh import detect_face, lip_box_from_face  # noqa: F401
from .face_types import Box, FaceConditions  # noqa: F401
from .hallo_masks import (FACE_EXPAND, FACE_KERNEL, LIP_EXPAND, LIP_KERNEL, MASK_LEVELS, MASK_SIDE,  # noqa: F401
                          _gaussian_blur_u8, _gaussian_kernel_u8, _linear_taps, _normalise_u8, _resize_linear_u8,
                          face_mask_image, hallo_hard_mask, hallo_mask_images, hallo_region, mask_level_sides,
                          mask_levels, region_masks)


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
