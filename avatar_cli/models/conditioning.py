"""The denoising U-Net's conditions, built one way for rendering and for training.

From the frozen networks of an :class:`AvatarModels` (reference net, projectors, face locator):

- face tokens: the image projector of an ArcFace embedding, or its null tokens (no face);
- reference features: the reference net on the portrait latent (once per video) and on the
  motion-frame latents (once per clip), OSA-LCM sec. 3 / EMO;
- face-locator features and the audio-region masks (Hallo family, ``media/face.py``);
- audio tokens: the audio projector over per-frame wav2vec2 windows;
- **the unconditional branch of guidance** (:meth:`ConditionBuilder.null`): the image projector's
  null tokens, zero audio tokens, the null reference (the reference features of a zero latent, or
  no reference keys/values for models trained that way: Hallo), no face-locator features; the
  motion frames and region masks are kept (OSA-LCM: CFG "except for the past motion frames";
  Hallo keeps its masks in both halves).

``pipelines/unet.py`` and ``training/conditioning.py`` both call this, so inference and training
cannot drift apart. Shapes: latents (B, 4, h, w); tokens (B, T, D); features layer -> (B, L, C).
"""

from __future__ import annotations

import torch

from ..sampling.guidance import Conditions
from .attention import ReferenceFeatures


class ConditionBuilder:
    """Conditions from the frozen networks of ``models`` on ``device`` / ``dtype``.

    Attributes:
        reference_net_calls: reference-net passes so far (tests check features are computed once
            per video, and once per clip for the motion frames).
    """

    def __init__(self, models, device: torch.device, dtype: torch.dtype):
        self.models, self.device, self.dtype = models, device, dtype
        self.reference_net_calls = 0
        self._faces: dict[tuple, tuple[torch.Tensor, dict]] = {}

    # ------------------------------------------------------------ tokens and features
    def null_tokens(self, batch: int = 1) -> torch.Tensor:
        """(batch, T, D): the image projector's tokens of the zero face embedding; (batch, 0, D), no
        tokens, for a model without an image projector (EchoMimic: its U-Nets take no context)."""
        if self.models.image_projector is None:
            width = self.models.denoising_unet.config.cross_attention_dim
            return torch.zeros(batch, 0, width, device=self.device, dtype=self.dtype)
        return self.models.image_projector.null_tokens(batch)

    def face_tokens(self, embedding: torch.Tensor | None) -> torch.Tensor:
        """(1, T, D) tokens of a (512,) ArcFace embedding; the null tokens when None (always, for a
        model without an image projector)."""
        if embedding is None or self.models.image_projector is None:
            return self.null_tokens(1)
        return self.models.image_projector(embedding.to(self.device)[None])

    def reference(self, latents: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reference-net features of latents (B, 4, h, w) with face tokens (B, T, D)."""
        self.reference_net_calls += 1
        return self.models.reference_net.extract_features(latents, tokens)

    def null_reference(self, reference: dict[str, torch.Tensor], latent_shape: tuple[int, ...]):
        """The reference condition of the unconditional branch for a batch of ``latent_shape[0]``:
        no reference keys/values (``settings.null_reference == "none"``, Hallo), else the reference
        features of a zero latent with the null tokens."""
        if self.models.settings.null_reference == "none":
            return ReferenceFeatures(reference, keep=torch.zeros(latent_shape[0], dtype=torch.bool))
        zeros = torch.zeros(latent_shape, device=self.device, dtype=self.dtype)
        return self.reference(zeros, self.null_tokens(latent_shape[0]))

    def motion(self, motion: torch.Tensor, face_tokens: torch.Tensor, guidance: str):
        """(motion features, their unconditional-branch features) of motion latents (M, 4, h, w).

        Hallo's reference net pairs the motion frames with alternating face tokens under CFG (see
        :func:`alternating_tokens`): that pairing is reproduced for each branch when a face is given;
        otherwise both branches share one pass. None, None without motion frames."""
        if not motion.shape[0]:
            return None, None
        null = self.null_tokens(1)
        if guidance == "cfg" and not torch.equal(face_tokens, null):
            return (self.reference(motion, alternating_tokens(face_tokens, null, 1)),
                    self.reference(motion, alternating_tokens(face_tokens, null, 0)))
        features = self.reference(motion, face_tokens)
        return features, features

    def audio_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """(F, W, L, D) wav2vec2 windows per frame -> (F, T_a, D_a) audio tokens; a model without an
        audio projector (EchoMimic) takes its per-frame tokens (F, T_a, D_a) as they are."""
        if self.models.audio_projector is None:
            return windows.to(self.device, self.dtype)
        return self.models.audio_projector(windows.to(self.device))

    def face_locator(self, mask_image: torch.Tensor, frames: int) -> torch.Tensor | None:
        """(C_in, S, S) face-locator input in [0, 1] (3 channels in Hallo, EchoMimic's 1-channel face
        mask) -> (1, C, F, h, w) features for ``frames`` frames;
        None for models without a face locator."""
        if self.models.face_locator is None:
            return None
        features = self.models.face_locator(mask_image.to(self.device, self.dtype)[None])
        return features[:, :, None].expand(-1, -1, frames, -1, -1)

    def face_from_boxes(self, face_box, lip_box, size: int, latent: int, frames: int):
        """Face-locator features (1, C, F, h, w) and region masks {region: 4 levels (1, h/2^k, w/2^k)}
        of a face and lip box in frame pixels (``media/face.py``, as Hallo makes them), computed once
        per pair of boxes (the face locator is frozen)."""
        from ..media.face import face_mask_image, region_masks

        key = (tuple(face_box), tuple(lip_box), size, latent)
        if key not in self._faces:
            features = self.face_locator(face_mask_image(face_box, size), 1)[:, :, 0]
            masks = {k: tuple(m.to(self.device)[None] for m in v)
                     for k, v in region_masks(face_box, lip_box, size, latent).items()}
            self._faces[key] = (features, masks)
        features, masks = self._faces[key]
        return features[:, :, None].expand(-1, -1, frames, -1, -1), masks

    # ------------------------------------------------------------ the unconditional branch
    def null(self, conditions: Conditions, null_reference, null_motion=None) -> Conditions:
        """The unconditional branch of guidance for ``conditions`` (see module docstring).

        Args:
            null_reference: from :meth:`null_reference` (computed once per video or batch).
            null_motion: the motion features of the unconditional branch (Hallo's pairing, see
                :meth:`motion`); None keeps the conditional branch's.
        """
        batch = conditions.audio_embeds.shape[0]
        return Conditions(self.null_tokens(batch), torch.zeros_like(conditions.audio_embeds), null_reference,
                          conditions.motion_features if null_motion is None else null_motion, None,
                          conditions.region_masks)


def alternating_tokens(cond: torch.Tensor, null: torch.Tensor, branch: int, images: int = 3) -> torch.Tensor:
    """Face tokens for the motion frames of one CFG branch as Hallo's reference net pairs them.

    Hallo runs its reference net on [ref, m_1..m_M] for the unconditional (branch 0) and the
    conditional (branch 1) half, with the context [null, cond] repeated: image k of the 2(M+1) gets
    the conditional tokens when k is odd (``hallo/animate/face_animate.py``, docs/hallo.md).
    Returns (M, T, D) for the motion frames of ``branch``.
    """
    m = images - 1
    rows = [cond if (branch * images + 1 + j) % 2 else null for j in range(m)]
    return torch.cat(rows)
