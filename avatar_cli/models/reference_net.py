"""The reference net (OSA-LCM sec. 3 "2D Reference U-Net"; EMO's ReferenceNet; Hallo).

SD1.5's ``UNet2DConditionModel`` itself, run at timestep 0 on clean latents. What matters is not
its output but the input of every spatial self-attention, which is recorded (see
``models/attention.py``) and handed to the denoising U-Net: the portrait's tokens become the
*reference features* (once per video), the motion frames' tokens the *motion features* (once per
clip).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from .attention import ReferenceCaptureProcessor, install_processors

_DTYPES = {None: None, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ReferenceNet(UNet2DConditionModel):
    """An SD1.5 U-Net whose spatial self-attention inputs can be extracted.

    Same config and parameters as diffusers' ``UNet2DConditionModel`` (SD1.5's ``unet`` folder loads
    into it as is), plus two fields:

    Args:
        output_layers: keep ``conv_norm_out``/``conv_out``. The features never pass through them;
            Hallo's reference net has none (its checkpoint lacks the 12,164 parameters), so its
            conversion sets False.
        feature_dtype: store the extracted features in this dtype ("float16" as Hallo's inference
            does, even in float32 runs); None keeps the compute dtype.
        cross_attention: keep the transformer blocks' cross-attention (``attn2``, ``norm2``).
            EchoMimic's reference U-Net has none (antgroup/echomimic ``src/models/attention.py``:
            its ``BasicTransformerBlock`` is self-attention + feed-forward only, and the pipeline calls
            it with ``encoder_hidden_states=None``), so its conversion sets False; the context
            tokens are then ignored.
        **kwargs: ``UNet2DConditionModel``'s config.
    """

    def __init__(self, output_layers: bool = True, feature_dtype: str | None = None, cross_attention: bool = True,
                 **kwargs):
        super().__init__(**kwargs)  # registers the U-Net's config
        if feature_dtype not in _DTYPES:
            raise ValueError(f"feature_dtype must be one of {list(_DTYPES)} (got {feature_dtype!r})")
        self.register_to_config(output_layers=output_layers, feature_dtype=feature_dtype,
                                cross_attention=cross_attention)
        if not cross_attention:  # diffusers' BasicTransformerBlock skips a missing attn2
            from diffusers.models.attention import BasicTransformerBlock

            for module in self.modules():
                if isinstance(module, BasicTransformerBlock):
                    module.attn2 = None
                    module.norm2 = None
        if not output_layers:
            self.conv_norm_out = None
            self.conv_act = None
            self.conv_out = torch.nn.Identity()

    @staticmethod
    def _get_init_keys(input_class):
        # diffusers reads a model's config fields from its __init__ signature; ours are the U-Net's
        # plus the two above.
        return ConfigMixin._get_init_keys(UNet2DConditionModel) | {"output_layers", "feature_dtype", "cross_attention"}

    def _ensure_capture(self) -> None:
        processors = self.attn_processors.values()
        if not any(isinstance(p, ReferenceCaptureProcessor) for p in processors):
            install_processors(self, ReferenceCaptureProcessor)

    @torch.no_grad()
    def extract_features(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Run the net at t = 0 and return the inputs of its spatial self-attentions.

        Args:
            latents: (N, 4, h, w) clean latents (portrait latent, or motion-frame latents).
            encoder_hidden_states: (N or 1, T, cross_attention_dim) tokens for the cross-attention
                slot (face tokens or null tokens), one row per latent or one for all.

        Returns:
            ``"<block>.attentions.<j>.transformer_blocks.<k>.attn1" -> (N, h_l*w_l, C_l)``, in
            ``feature_dtype`` when set.
        """
        self._ensure_capture()
        if not self.config.cross_attention or encoder_hidden_states is None:
            encoder_hidden_states = None
        elif encoder_hidden_states.shape[0] != latents.shape[0]:
            encoder_hidden_states = encoder_hidden_states.expand(latents.shape[0], -1, -1)
        sink: dict[str, torch.Tensor] = {}
        timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=torch.long)
        self(latents, timestep, encoder_hidden_states=encoder_hidden_states,
             cross_attention_kwargs={"feature_sink": sink}, return_dict=False)
        dtype = _DTYPES[self.config.feature_dtype]
        return sink if dtype is None else {k: v.to(dtype) for k, v in sink.items()}
