"""Reference attention as diffusers attention processors.

OSA-LCM sec. 3 (after EMO) and Hallo: the reference net runs on the portrait latent and the
motion-frame latents; before each spatial self-attention it records its input tokens. The
denoising U-Net's spatial self-attention at the same layer then attends over its own tokens
*and* that layer's reference tokens (keys/values = concat(own, reference)).

Both sides are written as diffusers attention processors (``Attention.processor``), so the
U-Nets themselves stay diffusers' blocks. Per-call data travels through
``cross_attention_kwargs``: ``feature_sink`` (reference net, a dict that is filled) and
``reference_features`` (denoising U-Net, a dict that is read), both keyed by the attention
module's name, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


class ReferenceFeatures(dict):
    """Layer name -> (B, L, C) reference tokens, plus ``keep``: (B,) bool or None.

    A row whose ``keep`` is False has no reference (its keys are masked out): the null reference of
    a model trained to drop it that way (Hallo's unconditional branch).
    """

    def __init__(self, features: dict[str, torch.Tensor], keep: torch.Tensor | None = None):
        super().__init__(features)
        self.keep = keep


def _attention(attn: Attention, query_input: torch.Tensor, key_value_input: torch.Tensor,
               extra_key_value: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention with diffusers ``Attention`` weights.

    Args:
        query_input: (N, L, C) tokens that ask.
        key_value_input: (N, S, C_kv) tokens attended to.
        extra_key_value: optional (B, R, C) tokens shared by groups of N // B rows (reference
            tokens shared by all frames of one video); projected once, not once per frame.
        keep: optional (B,) bool; rows of a False group do not see ``extra_key_value``.

    Returns:
        (N, L, C_out) after ``to_out``.
    """
    n, length, _ = query_input.shape
    query = attn.to_q(query_input)
    key = attn.to_k(key_value_input)
    value = attn.to_v(key_value_input)
    if extra_key_value is not None:
        b = extra_key_value.shape[0]
        frames = n // b
        extra_key = attn.to_k(extra_key_value.to(query_input.dtype))
        extra_value = attn.to_v(extra_key_value.to(query_input.dtype))
        # (B, R, C) -> (B, F, R, C) -> (N, R, C): one projection, broadcast over frames.
        extra_key = extra_key[:, None].expand(b, frames, *extra_key.shape[1:]).reshape(n, -1, key.shape[-1])
        extra_value = extra_value[:, None].expand(b, frames, *extra_value.shape[1:]).reshape(n, -1, value.shape[-1])
        key = torch.cat([key, extra_key], dim=1)
        value = torch.cat([value, extra_value], dim=1)
    mask = None
    if keep is not None and extra_key_value is not None and not bool(keep.all()):
        own = key_value_input.shape[1]
        visible = keep.to(query.device).repeat_interleave(n // keep.shape[0])          # (N,)
        mask = torch.ones(n, 1, 1, key.shape[1], dtype=torch.bool, device=query.device)
        mask[:, 0, 0, own:] = visible[:, None]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    out = out.transpose(1, 2).reshape(n, length, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


class ReferenceCaptureProcessor:
    """Reference-net side: record the input of a spatial self-attention, then attend as usual.

    Args:
        name: the attention module's name in the U-Net (the dictionary key).
        is_self_attention: only self-attentions (``attn1``) record; cross-attentions just run.

    Call-time keyword ``feature_sink``: a dict that receives ``name -> (N, tokens, channels)``,
    N = the reference net's batch (portrait latent or motion-frame latents).
    """

    def __init__(self, name: str, is_self_attention: bool):
        self.name = name
        self.is_self_attention = is_self_attention

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 feature_sink: dict | None = None) -> torch.Tensor:
        if self.is_self_attention and feature_sink is not None:
            feature_sink[self.name] = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _attention(attn, hidden_states, context)


class ReferenceAttnProcessor:
    """Denoising-U-Net side: spatial self-attention with the reference tokens appended.

    Implements the reference attention of OSA-LCM sec. 3 / EMO ("concatenate [the reference
    feature map] with the input of the corresponding layer of the 3D denoising U-Net"):
    for frame tokens x (B*F, L, C) and the portrait's reference tokens r (B, L_r, C) of the
    same layer, ``softmax(q(x) [k(x), k(r)]^T / sqrt(d)) [v(x), v(r)]``.

    Call-time keyword ``reference_features``: dict ``name -> (B, L_r, C)`` (a
    :class:`ReferenceFeatures` may mask some rows' reference out); when it is None or lacks this
    layer, the layer is plain self-attention (the "no reference" null condition).

    ``output_scale`` multiplies a cross-attention's output before the block adds it to the residual
    stream: 1 in SD; EchoMimic scales its audio cross-attention by 3 (antgroup/echomimic
    ``src/models/mutual_self_attention.py``, ``audio_feature_ratio``).
    """

    def __init__(self, name: str, is_self_attention: bool):
        self.name = name
        self.is_self_attention = is_self_attention
        self.output_scale = 1.0

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 reference_features: dict | None = None) -> torch.Tensor:
        if not self.is_self_attention:
            out = _attention(attn, hidden_states, encoder_hidden_states)
            return out if self.output_scale == 1.0 else out * self.output_scale
        reference = None if reference_features is None else reference_features.get(self.name)
        keep = getattr(reference_features, "keep", None)
        return _attention(attn, hidden_states, hidden_states, reference, keep)


def spatial_attention_names(unet: torch.nn.Module) -> list[str]:
    """Names of the spatial transformer attentions (``...transformer_blocks.K.attn1|attn2``)."""
    return [name for name, module in unet.named_modules()
            if isinstance(module, Attention) and ".attentions." in name and ".transformer_blocks." in name]


def install_processors(unet: torch.nn.Module, processor_cls: type) -> None:
    """Put ``processor_cls(name, is_self_attention)`` on every spatial attention of ``unet``."""
    for name in spatial_attention_names(unet):
        module = unet.get_submodule(name)
        module.set_processor(processor_cls(name, name.endswith("attn1")))
