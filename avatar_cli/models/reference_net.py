"""The reference net (OSA-LCM sec. 3 "2D Reference U-Net"; EMO's ReferenceNet; Hallo).

SD1.5's ``UNet2DConditionModel`` itself, run at timestep 0 on clean latents. What matters is not
its output but the input of every spatial self-attention, which is recorded (see
``models/attention.py``) and handed to the denoising U-Net: the portrait's tokens become the
*reference features* (once per video), the motion frames' tokens the *motion features* (once per
clip).
"""

from __future__ import annotations

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from .attention import ReferenceCaptureProcessor, install_processors


class ReferenceNet(UNet2DConditionModel):
    """An SD1.5 U-Net whose spatial self-attention inputs can be extracted.

    Same config and parameters as diffusers' ``UNet2DConditionModel`` (so SD1.5's ``unet`` folder
    loads into it as is).
    """

    def _ensure_capture(self) -> None:
        processors = self.attn_processors.values()
        if not any(isinstance(p, ReferenceCaptureProcessor) for p in processors):
            install_processors(self, ReferenceCaptureProcessor)

    @torch.no_grad()
    def extract_features(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net at t = 0 and return the inputs of its spatial self-attentions.

        Args:
            latents: (N, 4, h, w) clean latents (portrait latent, or motion-frame latents).
            encoder_hidden_states: (N or 1, T, cross_attention_dim) tokens for the cross-attention
                slot (face tokens or null tokens).

        Returns:
            ``"<block>.attentions.<j>.transformer_blocks.<k>.attn1" -> (N, h_l*w_l, C_l)``.
        """
        self._ensure_capture()
        if encoder_hidden_states.shape[0] != latents.shape[0]:
            encoder_hidden_states = encoder_hidden_states.expand(latents.shape[0], -1, -1)
        sink: dict[str, torch.Tensor] = {}
        timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=torch.long)
        self(latents, timestep, encoder_hidden_states=encoder_hidden_states,
             cross_attention_kwargs={"feature_sink": sink}, return_dict=False)
        return sink
