"""The frozen parts of training: conditions from a batch, noising, and the teacher's ODE step.

Shared by the teacher's own training and both distillations. Tensors: latents (B, 4, F, h, w).
"""

from __future__ import annotations

import copy

import torch

from ..models.attention import ReferenceFeatures
from ..sampling.guidance import Conditions


class Conditioner:
    """Batch example -> the denoising U-Net's :class:`Conditions`, with the frozen reference net,
    audio projector and image projector of ``models`` (the face tokens are the null tokens: the
    zero face embedding). For the Hallo family (a face locator) also the face-locator features and
    the audio-region masks, from the example's ``face_box`` and ``lip_box`` (frame pixels, found by
    ``avatar data prepare``; the whole frame where absent), as Hallo's inference builds them.

    Args:
        models: :class:`AvatarModels` (the teacher's).
        device, dtype: where the frozen networks run.
    """

    def __init__(self, models, device: torch.device, dtype: torch.dtype):
        self.models, self.device, self.dtype = models, device, dtype
        self._faces: dict[tuple, tuple] = {}  # (face box, lip box, latent side) -> (features, masks)

    @torch.no_grad()
    def __call__(self, example: dict[str, torch.Tensor]) -> Conditions:
        models = self.models
        reference = example["reference"].to(self.device, self.dtype)
        batch = reference.shape[0]
        tokens = models.image_projector.null_tokens(batch)
        ref = models.reference_net.extract_features(reference, tokens)
        motion_latents = example["motion"].to(self.device, self.dtype)  # (M, 4, h, w): one clip per process
        motion = models.reference_net.extract_features(motion_latents, tokens[:1]) if motion_latents.shape[0] else None
        audio = models.audio_projector(example["audio"].to(self.device, self.dtype))
        locator = masks = None
        if models.face_locator is not None:
            locator, masks = self._face(example, reference.shape[-1], example["latents"].shape[2])
        return Conditions(tokens, audio, ref, motion, locator, masks)

    def _face(self, example: dict, latent: int, frames: int):
        """Face-locator features (1, C, F, h, w) and region masks {region: 4 levels (1, h/2^k, w/2^k)} (Hallo).

        Both depend only on a video's boxes (the face locator is frozen): computed once per video."""
        from ..media.face import face_mask_image, lip_box_from_face, region_masks

        size = latent * 8  # the VAE's downsampling factor
        box = example.get("face_box")
        face_box = tuple(float(v) for v in box.reshape(-1)) if box is not None else (0.0, 0.0, float(size), float(size))
        lip = example.get("lip_box")
        lip_box = tuple(float(v) for v in lip.reshape(-1)) if lip is not None else lip_box_from_face(face_box)
        key = (face_box, lip_box, latent)
        if key not in self._faces:
            image = face_mask_image(face_box, size).to(self.device, self.dtype)[None]
            masks = {k: tuple(m.to(self.device)[None] for m in v)
                     for k, v in region_masks(face_box, lip_box, size, latent).items()}
            self._faces[key] = (self.models.face_locator(image), masks)
        locator, masks = self._faces[key]
        return locator[:, :, None].expand(-1, -1, frames, -1, -1), masks

    @torch.no_grad()
    def null(self, conditions: Conditions) -> Conditions:
        """The null conditions of guidance: zero audio tokens; the reference features of a zero
        latent, or no reference keys/values (``settings.null_reference == "none"``)."""
        if self.models.settings.null_reference == "none":
            reference = ReferenceFeatures(conditions.reference_features,
                                          keep=torch.zeros(conditions.audio_embeds.shape[0], dtype=torch.bool))
        else:
            zeros = torch.zeros(conditions.encoder_hidden_states.shape[0], 4, *self._latent_size(conditions),
                                device=self.device, dtype=self.dtype)
            reference = self.models.reference_net.extract_features(zeros, conditions.encoder_hidden_states)
        # Hallo's unconditional branch also drops the face-locator features; the masks stay.
        return Conditions(conditions.encoder_hidden_states, torch.zeros_like(conditions.audio_embeds), reference,
                          conditions.motion_features, None, conditions.region_masks)

    @staticmethod
    def _latent_size(conditions: Conditions) -> tuple[int, int]:
        first = next(iter(conditions.reference_features.values()))
        side = int(round(first.shape[1] ** 0.5))
        return side, side


class NoiseSchedule:
    """The training schedule's alphas_cumprod, noising and the prediction-type conversions.

    Args:
        scheduler_config: the models' ``scheduler_config`` (SD1.5's, or Hallo's v-prediction one).
    """

    def __init__(self, scheduler_config: dict):
        from ..sampling.methods import METHODS, make_scheduler

        self.scheduler = make_scheduler(METHODS["teacher"], scheduler_config)  # diffusers' DDIMScheduler
        self.alphas = self.scheduler.alphas_cumprod.double()
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")

    def alpha(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas[torch.as_tensor(t).long().clamp(0, len(self.alphas) - 1)]
        return a.to(like.device, torch.float32).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Forward process: sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
        a = self.alpha(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def to_eps_x0(self, output: torch.Tensor, x: torch.Tensor, t, prediction_type: str | None = None):
        """(eps, x0) from a model output of ``prediction_type`` (epsilon or v_prediction) at t."""
        a = self.alpha(t, x)
        kind = prediction_type or self.prediction_type
        if kind == "epsilon":
            eps = output
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt().clamp(min=1e-8)
        elif kind == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * output
            eps = (1 - a).sqrt() * x + a.sqrt() * output
        else:
            raise ValueError(f"unsupported prediction type {kind!r}")
        return eps, x0

    def ddim(self, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, t_prev) -> torch.Tensor:
        """The deterministic DDIM update to t_prev (OSA-LCM eq. 2's solver Phi; FADA eq. 2):
        sqrt(a_prev) x0 + sqrt(1 - a_prev) eps; t_prev < 0 means the clean end (a = 1)."""
        if int(t_prev) < 0:
            return x0
        a_prev = self.alpha(t_prev, x)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def float32_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a (frozen) denoising U-Net: where a student starts from its teacher."""
    from ..models.bundle import quiet_libraries

    student = copy.deepcopy(unet)
    if student.dtype != torch.float32:
        with quiet_libraries():
            student = student.to(torch.float32)
    return student
