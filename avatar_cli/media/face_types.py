"""The face conditioning's shared types: a box in pixels and :class:`FaceConditions`, what the Hallo
and EchoMimic families' face conditioning hands the pipeline (built by ``media/face.py``
:func:`~avatar_cli.media.face.face_conditions` and ``media/echomimic_face.py``
:func:`~avatar_cli.media.echomimic_face.echomimic_face`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
