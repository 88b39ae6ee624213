"""Guidance rules: how the sampler's prediction is made from the denoising U-Net.

- ``none``: one evaluation with all conditions (distilled students: OSA-LCM, Adv-LCM).
- ``multi-cfg``: FADA eq. 9, three branches run as one batch of 3:
      eps = cfg_a (eps_a - eps_r) + cfg_r (eps_r - eps_b) + eps_b
  eps_a has audio and reference, eps_r drops the audio, eps_b drops both. Dropping a condition
  means the model's null condition (``null``): zero audio tokens; the reference features of a zero
  latent, or no reference keys/values for models trained that way (Hallo). The motion frames are
  kept in every branch (OSA-LCM: CFG "except for the past motion frames").
- ``cfg-tokens``: FADA eq. 10, one evaluation; the guidance scales enter through the learnable CFG
  tokens of a FADA student (``models/cfg_tokens.py``).
- ``cfg``: classifier-free guidance with one scale, two branches as one batch of 2 (Hallo):
      eps = eps_u + s (eps_c - eps_u),
  the unconditional branch being ``null`` entirely (zero face embedding, zero audio, zero
  face-locator features, no reference).
The rules combine whatever the model predicts (epsilon or v): the combinations are linear.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..models.attention import ReferenceFeatures

GUIDANCE_RULES = ("none", "multi-cfg", "cfg-tokens", "cfg")


def multi_cfg(eps_a: torch.Tensor, eps_r: torch.Tensor, eps_b: torch.Tensor,
              guidance_audio: float, guidance_ref: float) -> torch.Tensor:
    """FADA eq. 9: cfg_a (eps_a - eps_r) + cfg_r (eps_r - eps_b) + eps_b."""
    return guidance_audio * (eps_a - eps_r) + guidance_ref * (eps_r - eps_b) + eps_b


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + s (eps_c - eps_u)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@dataclass
class Conditions:
    """The denoising U-Net's conditioning inputs for a batch of B clips.

    Attributes:
        encoder_hidden_states: (B, T, D) face tokens (or the image projector's null tokens).
        audio_embeds: (B, F, T_a, D_a) audio tokens per frame.
        reference_features: layer -> (B, L, C) reference tokens (a ``ReferenceFeatures`` may mark
            rows without reference).
        motion_features: layer -> (B*M, L, C) motion-frame tokens, or None.
        conditioning_features: (B, C_0, F, h, w) face-locator features, or None.
        region_masks: region -> per-level audio-region masks [(B, h, w), (B, h/2, w/2), ...]
            (or one (B, h, w) mask, area-resized by the U-Net), or None (all ones).
    """

    encoder_hidden_states: torch.Tensor
    audio_embeds: torch.Tensor
    reference_features: dict[str, torch.Tensor]
    motion_features: dict[str, torch.Tensor] | None
    conditioning_features: torch.Tensor | None = None
    region_masks: dict[str, torch.Tensor | tuple[torch.Tensor, ...]] | None = None

    @staticmethod
    def cat(items: list["Conditions"]) -> "Conditions":
        """Stack several single-clip conditions into one batch (in order)."""
        def cat_dict(dicts):
            if dicts[0] is None:
                return None
            return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}

        def cat_masks(dicts):  # region -> one mask, or a tuple of per-level masks
            if dicts[0] is None:
                return None
            first = dicts[0]
            return {k: torch.cat([d[k] for d in dicts]) if isinstance(first[k], torch.Tensor)
                    else tuple(torch.cat(level) for level in zip(*(d[k] for d in dicts))) for k in first}

        def cat_optional(tensors):
            if all(t is None for t in tensors):
                return None
            ref = next(t for t in tensors if t is not None)
            return torch.cat([torch.zeros_like(ref) if t is None else t for t in tensors])

        keeps = [getattr(c.reference_features, "keep", None) for c in items]
        keep = None
        if any(k is not None for k in keeps):
            keep = torch.cat([torch.ones(c.encoder_hidden_states.shape[0], dtype=torch.bool,
                                         device=c.encoder_hidden_states.device) if k is None else k
                              for c, k in zip(items, keeps)])
        return Conditions(
            torch.cat([c.encoder_hidden_states for c in items]),
            torch.cat([c.audio_embeds for c in items]),
            ReferenceFeatures(cat_dict([c.reference_features for c in items]), keep),
            cat_dict([c.motion_features for c in items]),
            cat_optional([c.conditioning_features for c in items]),
            cat_masks([c.region_masks for c in items]),
        )

    def unet_kwargs(self) -> dict:
        return {"encoder_hidden_states": self.encoder_hidden_states, "audio_embeds": self.audio_embeds,
                "reference_features": self.reference_features, "motion_features": self.motion_features,
                "conditioning_features": self.conditioning_features, "region_masks": self.region_masks}


class GuidedDenoiser:
    """The model as a sampler sees it: ``(latents, t) -> prediction``, with a guidance rule applied.

    Args:
        unet: the denoising U-Net.
        conditions: the clip's full conditions (batch 1).
        rule: one of :data:`GUIDANCE_RULES`.
        scales: (cfg_a, cfg_r) for multi-cfg and cfg-tokens, (s,) for cfg, () for none.
        null: the null conditions (batch 1) for the guidance branches; needed by multi-cfg and cfg.
        region_scales: (full, face, lip) audio-branch weights.

    Attributes:
        evaluations: denoising-U-Net evaluations so far, counted per batch element (the NFE).
    """

    def __init__(self, unet, conditions: Conditions, rule: str = "none", scales: tuple[float, ...] = (),
                 null: Conditions | None = None, region_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        if rule not in GUIDANCE_RULES:
            raise ValueError(f"unknown guidance rule {rule!r}; choose one of {', '.join(GUIDANCE_RULES)}")
        if rule in ("multi-cfg", "cfg") and null is None:
            raise ValueError(f"{rule} needs the null conditions")
        expected = {"none": 0, "multi-cfg": 2, "cfg-tokens": 2, "cfg": 1}[rule]
        if len(scales) != expected:
            raise ValueError(f"{rule} takes {expected} guidance scale(s), got {len(scales)}")
        self.unet = unet
        self.rule = rule
        self.scales = tuple(scales)
        self.region_scales = region_scales
        self.evaluations = 0
        if rule == "multi-cfg":
            no_audio = replace(conditions, audio_embeds=null.audio_embeds)
            neither = replace(no_audio, reference_features=null.reference_features)
            self.conditions = Conditions.cat([conditions, no_audio, neither])
        elif rule == "cfg":
            self.conditions = Conditions.cat([null, conditions])
        else:
            self.conditions = conditions
        self.branches = {"multi-cfg": 3, "cfg": 2}.get(rule, 1)

    def __call__(self, latents: torch.Tensor, t: int) -> torch.Tensor:
        """latents (B=1, 4, F, h, w) in the sampler's dtype -> the guided prediction, same shape and dtype."""
        kwargs = {**self.conditions.unet_kwargs(), "region_scales": self.region_scales}
        if self.rule == "cfg-tokens":
            kwargs["guidance_scales"] = self.scales
        batch = latents.repeat(self.branches, 1, 1, 1, 1) if self.branches > 1 else latents
        dtype = getattr(self.unet, "dtype", batch.dtype)  # the network's precision; the result in the sampler's
        out = self.unet(batch.to(dtype), t, **kwargs).to(latents.dtype)
        self.evaluations += batch.shape[0]
        if self.rule == "multi-cfg":
            eps_a, eps_r, eps_b = out.chunk(3)
            return multi_cfg(eps_a, eps_r, eps_b, *self.scales)
        if self.rule == "cfg":
            eps_u, eps_c = out.chunk(2)
            return cfg(eps_u, eps_c, *self.scales)
        return out
