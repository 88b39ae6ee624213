"""Audio cross-attention block of the denoising U-Net (OSA-LCM sec. 3 "audio-atten layer"; Hallo).

One block follows every spatial attention of the denoising U-Net. Its queries are a frame's
tokens, its keys/values are that frame's audio tokens (the audio projector's output). Hallo's
form, which the ``full`` preset keeps so that its public weights load, splits the cross-attention
into three masked branches (background/"full", face, lip), each followed by a zero-initialised
1x1 convolution and scaled by a per-region weight (``--motion-scale pose,face,lip``). With no face
information the masks are all ones and the three branches act as one audio attention.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

REGIONS = ("full", "face", "lip")


class AudioTransformerBlock(nn.Module):
    """Self-attention, three masked audio cross-attentions, feed-forward (pre-LayerNorm each).

    Args:
        dim: token width (the block's inner width).
        num_heads: attention heads; head width = dim // num_heads.
        audio_dim: width of the audio tokens (768 for wav2vec2-base through the projector).
    """

    def __init__(self, dim: int, num_heads: int, audio_dim: int):
        super().__init__()
        head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=num_heads, dim_head=head_dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.audio_attn = nn.ModuleDict({
            region: Attention(query_dim=dim, cross_attention_dim=audio_dim, heads=num_heads,
                              dim_head=head_dim, bias=False)
            for region in REGIONS
        })
        self.zero_conv = nn.ModuleDict({region: nn.Conv2d(dim, dim, kernel_size=1) for region in REGIONS})
        for conv in self.zero_conv.values():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, hidden_states: torch.Tensor, audio_tokens: torch.Tensor, height: int,
                region_masks: dict[str, torch.Tensor] | None = None,
                region_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        """Args:
            hidden_states: (N, H*W, dim) frame tokens, N = batch * frames.
            audio_tokens: (N, T, audio_dim) that frame's audio tokens.
            height: H, to view tokens as a map for the 1x1 convolutions.
            region_masks: region -> (N or 1, H*W) weights in [0, 1]; None = all ones.
            region_scales: (full, face, lip) multipliers (Hallo's pose/face/lip weights).

        Returns:
            (N, H*W, dim).
        """
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states))
        normed = self.norm2(hidden_states)
        n, length, dim = normed.shape
        width = length // height
        for region, scale in zip(REGIONS, region_scales):
            out = self.audio_attn[region](normed, encoder_hidden_states=audio_tokens)
            if region_masks is not None:
                out = out * region_masks[region][:, :, None].to(out.dtype)
            # Hallo masks before the zero conv, so a masked-out token still receives the bias.
            out = out.transpose(1, 2).reshape(n, dim, height, width)
            out = self.zero_conv[region](out).reshape(n, dim, length).transpose(1, 2)
            hidden_states = hidden_states + scale * out
        return hidden_states + self.ff(self.norm3(hidden_states))


class AudioAttentionBlock(nn.Module):
    """GroupNorm -> 1x1 conv in -> :class:`AudioTransformerBlock` -> 1x1 conv out, residual.

    Args:
        channels: channels of the feature map it sits on.
        inner_dim: token width inside. Hallo takes it from the U-Net block's *input* channels
            (e.g. 320 inside a 640-channel block); see ``DenoisingUNet3D``.
        num_heads: attention heads.
        audio_dim: width of the audio tokens.
        norm_num_groups: GroupNorm groups.
    """

    def __init__(self, channels: int, inner_dim: int, num_heads: int, audio_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([AudioTransformerBlock(inner_dim, num_heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, audio_tokens: torch.Tensor,
                region_masks: dict[str, torch.Tensor] | None = None,
                region_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
        """Args:
            hidden_states: (N, C, H, W) feature maps of N = batch * frames frames.
            audio_tokens: (N, T, audio_dim).

        Returns:
            (N, C, H, W).
        """
        n, _, height, width = hidden_states.shape
        residual = hidden_states
        x = self.proj_in(self.norm(hidden_states))
        inner = x.shape[1]
        x = x.permute(0, 2, 3, 1).reshape(n, height * width, inner)
        for block in self.transformer_blocks:
            x = block(x, audio_tokens, height, region_masks, region_scales)
        x = x.reshape(n, height, width, inner).permute(0, 3, 1, 2)
        return self.proj_out(x) + residual
