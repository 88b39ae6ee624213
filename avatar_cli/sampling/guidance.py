"""Guidance rules: how the sampler's epsilon is made from the denoising U-Net (FADA sec. 3.2-3.3).

- ``none``: one evaluation with all conditions (distilled students: OSA-LCM, Adv-LCM).
- ``multi-cfg``: FADA eq. 9, three branches run as one batch of 3:
      eps = cfg_a (eps_a - eps_r) + cfg_r (eps_r - eps_b) + eps_b
  eps_a has audio and reference, eps_r drops the audio, eps_b drops both. Dropping a condition
  means the model's null condition: zero audio tokens; the reference features of a zero latent.
  The motion frames are kept in every branch (OSA-LCM: CFG "except for the past motion frames").
- ``cfg-tokens``: FADA eq. 10, one evaluation; the guidance scales enter through the learnable CFG
  tokens of a FADA student (``models/cfg_tokens.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

GUIDANCE_RULES = ("none", "multi-cfg", "cfg-tokens")


def multi_cfg(eps_a: torch.Tensor, eps_r: torch.Tensor, eps_b: torch.Tensor,
              guidance_audio: float, guidance_ref: float) -> torch.Tensor:
    """FADA eq. 9: cfg_a (eps_a - eps_r) + cfg_r (eps_r - eps_b) + eps_b."""
    return guidance_audio * (eps_a - eps_r) + guidance_ref * (eps_r - eps_b) + eps_b


@dataclass
class Conditions:
    """The denoising U-Net's conditioning inputs for a batch of B clips.

    Attributes:
        encoder_hidden_states: (B, T, D) face tokens (or the image projector's null tokens).
        audio_embeds: (B, F, T_a, D_a) audio tokens per frame.
        reference_features: layer -> (B, L, C) reference tokens.
        motion_features: layer -> (B*M, L, C) motion-frame tokens, or None.
    """

    encoder_hidden_states: torch.Tensor
    audio_embeds: torch.Tensor
    reference_features: dict[str, torch.Tensor]
    motion_features: dict[str, torch.Tensor] | None

    @staticmethod
    def cat(items: list["Conditions"]) -> "Conditions":
        """Stack several single-clip conditions into one batch (in order)."""
        def cat_dict(dicts):
            if dicts[0] is None:
                return None
            return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}

        return Conditions(
            torch.cat([c.encoder_hidden_states for c in items]),
            torch.cat([c.audio_embeds for c in items]),
            cat_dict([c.reference_features for c in items]),
            cat_dict([c.motion_features for c in items]),
        )

    def unet_kwargs(self) -> dict:
        return {"encoder_hidden_states": self.encoder_hidden_states, "audio_embeds": self.audio_embeds,
                "reference_features": self.reference_features, "motion_features": self.motion_features}


class GuidedDenoiser:
    """The model as a sampler sees it: ``(latents, t) -> eps``, with a guidance rule applied.

    Args:
        unet: the denoising U-Net.
        conditions: the clip's full conditions (batch 1).
        rule: one of :data:`GUIDANCE_RULES`.
        guidance_audio, guidance_ref: cfg_a, cfg_r.
        null_reference: layer -> (1, L, C) reference features of a zero latent (multi-cfg only).

    Attributes:
        evaluations: denoising-U-Net evaluations so far, counted per batch element (the NFE).
    """

    def __init__(self, unet, conditions: Conditions, rule: str = "none", guidance_audio: float = 1.0,
                 guidance_ref: float = 1.0, null_reference: dict[str, torch.Tensor] | None = None):
        if rule not in GUIDANCE_RULES:
            raise ValueError(f"unknown guidance rule {rule!r}; choose one of {', '.join(GUIDANCE_RULES)}")
        if rule == "multi-cfg" and null_reference is None:
            raise ValueError("multi-cfg needs the null reference features")
        self.unet = unet
        self.rule = rule
        self.guidance_audio = guidance_audio
        self.guidance_ref = guidance_ref
        self.evaluations = 0
        if rule == "multi-cfg":
            no_audio = replace(conditions, audio_embeds=torch.zeros_like(conditions.audio_embeds))
            neither = replace(no_audio, reference_features=null_reference)
            self.conditions = Conditions.cat([conditions, no_audio, neither])
        else:
            self.conditions = conditions

    def __call__(self, latents: torch.Tensor, t: int) -> torch.Tensor:
        kwargs = self.conditions.unet_kwargs()
        if self.rule == "multi-cfg":
            eps = self.unet(latents.repeat(3, 1, 1, 1, 1), t, **kwargs)
            self.evaluations += 3
            eps_a, eps_r, eps_b = eps.chunk(3)
            return multi_cfg(eps_a, eps_r, eps_b, self.guidance_audio, self.guidance_ref)
        self.evaluations += latents.shape[0]
        if self.rule == "cfg-tokens":
            return self.unet(latents, t, **kwargs, guidance_scales=(self.guidance_audio, self.guidance_ref))
        return self.unet(latents, t, **kwargs)
