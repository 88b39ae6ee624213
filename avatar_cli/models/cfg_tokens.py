"""FADA's learnable CFG tokens (FADA sec. 3.3, eq. 10): multi-CFG in one model evaluation.

Three learnable token sets gamma_a, gamma_r, gamma_b (tokens x dim) stand for the three branches of
multi-CFG (audio + reference, reference only, neither). For guidance scales (cfg_a, cfg_r) the
student receives

    Emb_cfg = cfg_a (gamma_a - gamma_r) + cfg_r (gamma_r - gamma_b) + gamma_b        (FADA eq. 10)

through a CFG cross-attention layer after each audio-attention layer of the denoising U-Net. The
layers' output projections start at zero, so adding them to a trained model changes nothing until
they are trained (distillation).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn


def cfg_embedding(gamma_a: torch.Tensor, gamma_r: torch.Tensor, gamma_b: torch.Tensor,
                  guidance_audio: float, guidance_ref: float) -> torch.Tensor:
    """FADA eq. 10: cfg_a (gamma_a - gamma_r) + cfg_r (gamma_r - gamma_b) + gamma_b; (tokens, dim)."""
    return guidance_audio * (gamma_a - gamma_r) + guidance_ref * (gamma_r - gamma_b) + gamma_b


class CFGTokens(nn.Module):
    """The learnable gamma_a, gamma_r, gamma_b, stored as one (3, tokens, dim) parameter ``gammas``."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.gammas = nn.Parameter(torch.randn(3, tokens, dim) * dim ** -0.5)

    def forward(self, guidance_audio: float, guidance_ref: float) -> torch.Tensor:
        """(tokens, dim) embedding for the given guidance scales (eq. 10)."""
        gamma_a, gamma_r, gamma_b = self.gammas
        return cfg_embedding(gamma_a, gamma_r, gamma_b, guidance_audio, guidance_ref)


class CFGAttentionBlock(nn.Module):
    """Cross-attention from a frame's tokens to the CFG embedding, residual, zero-initialised output.

    Args:
        channels: channels of the feature map.
        num_heads: attention heads.
        cfg_dim: width of the CFG tokens.
        norm_num_groups: GroupNorm groups.
    """

    def __init__(self, channels: int, num_heads: int, cfg_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.attn = Attention(query_dim=channels, cross_attention_dim=cfg_dim, heads=num_heads,
                              dim_head=channels // num_heads, bias=False)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden_states: torch.Tensor, cfg_tokens: torch.Tensor) -> torch.Tensor:
        """hidden_states (N, C, H, W), cfg_tokens (N, tokens, cfg_dim) -> (N, C, H, W)."""
        n, c, h, w = hidden_states.shape
        x = self.norm(hidden_states).reshape(n, c, h * w).transpose(1, 2)
        out = self.attn(x, encoder_hidden_states=cfg_tokens)
        return hidden_states + out.transpose(1, 2).reshape(n, c, h, w)
