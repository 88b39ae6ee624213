"""Ditto's motion diffusion transformer (LMDM ``MotionDecoder``): audio/eye/emotion conditions -> motion.

Re-implemented from Ditto (antgroup/ditto-talkinghead, Apache-2.0) ``core/models/modules/lmdm_modules/
{model,rotary_embedding_torch,utils}.py``; file ``lmdm_v0.4_hubert.pth`` (``{"model_state_dict": sd}``).
The design is EDGE's (Tseng et al. 2023, "EDGE: Editable Dance Generation", sec. 3): a transformer
decoder over the noisy motion sequence whose blocks are FiLM-modulated by the diffusion time (plus a
pooled condition), with cross-attention to the encoded condition tokens and two time tokens; rotary
position embeddings (Su et al. 2021, RoFormer eq. 34) on queries and keys. It predicts x0.

The rotary module is one instance registered under every layer, so its ``freqs`` buffer appears in the
state dict 11 times (``rotary``, ``cond_encoder.{0,1}.rotary``, ``seqTransDecoder.stack.{i}.rotary``),
as in the released file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full feature width (interleaved pairs).

    ``freqs[i] = 1 / 10000^(2i/dim)``; position p rotates pair (2i, 2i+1) by angle ``p * freqs[i]``:
    ``(a, b) -> (a cos - b sin, b cos + a sin)``. Positions are 0..n-1 along dim -2.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n, dim) -> (..., n, dim)."""
        freqs = self.freqs.float()  # angles in float32 even when the module runs in half precision
        pos = torch.arange(x.shape[-2], device=x.device, dtype=freqs.dtype)
        angles = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


class SinusoidalTimeEmbedding(nn.Module):
    """(B,) integer timesteps -> (B, dim) ``[sin(t f), cos(t f)]``, ``f_i = exp(-ln(1e4) i / (dim/2 - 1))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class DenseFiLM(nn.Module):
    """(B, dim) -> (scale, shift), each (B, 1, dim): ``Linear(Mish(t))`` split in two."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.block(t).unsqueeze(1).chunk(2, dim=-1)
        return scale, shift


def _film(x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = scale_shift
    return (scale + 1) * x + shift


def _pre_norm_layer(layer: nn.Module, dim: int, heads: int, ff_size: int, dropout: float, cross: bool) -> None:
    """The parts of Ditto's encoder (``cross=False``) and decoder (``cross=True``: cross-attention
    ``multihead_attn`` and a third norm) layers, under PyTorch's ``nn.Transformer*Layer`` names (the
    checkpoint's keys), created in their order (so seeded random weights stay the same)."""
    layer.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
    if cross:
        layer.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
    layer.linear1 = nn.Linear(dim, ff_size)
    layer.linear2 = nn.Linear(ff_size, dim)
    layer.norm1 = nn.LayerNorm(dim)
    layer.norm2 = nn.LayerNorm(dim)
    if cross:
        layer.norm3 = nn.LayerNorm(dim)
    layer.dropout = nn.Dropout(dropout)


class CondEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary q/k (v unrotated): ``x + SA(LN1 x)``, ``x + FF(LN2 x)``.

    Not ``nn.TransformerEncoderLayer``: its fused inference path would skip the rotary embedding.
    """

    def __init__(self, dim: int, heads: int, ff_size: int, dropout: float, rotary: RotaryEmbedding):
        super().__init__()
        _pre_norm_layer(self, dim, heads, ff_size, dropout, cross=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h)
        x = x + self.dropout(self.self_attn(qk, qk, h, need_weights=False)[0])
        h = self.norm2(x)
        return x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(h)))))


class FiLMDecoderLayer(nn.Module):
    """Pre-norm decoder layer; each branch's output is FiLM-modulated by the time vector before the add:
    ``x += film1(t)(SA(LN1 x))``, ``x += film2(t)(XA(LN2 x, memory))``, ``x += film3(t)(FF(LN3 x))``."""

    def __init__(self, dim: int, heads: int, ff_size: int, dropout: float, rotary: RotaryEmbedding):
        super().__init__()
        _pre_norm_layer(self, dim, heads, ff_size, dropout, cross=True)
        self.film1 = DenseFiLM(dim)
        self.film2 = DenseFiLM(dim)
        self.film3 = DenseFiLM(dim)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h)
        x = x + _film(self.dropout(self.self_attn(qk, qk, h, need_weights=False)[0]), self.film1(t))
        h = self.norm2(x)
        attn = self.multihead_attn(self.rotary.rotate(h), self.rotary.rotate(memory), memory, need_weights=False)[0]
        x = x + _film(self.dropout(attn), self.film2(t))
        h = self.norm3(x)
        ff = self.linear2(self.dropout(F.gelu(self.linear1(h))))
        return x + _film(self.dropout(ff), self.film3(t))


class DecoderStack(nn.Module):
    def __init__(self, layers: list[FiLMDecoderLayer]):
        super().__init__()
        self.stack = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for layer in self.stack:
            x = layer(x, memory, t)
        return x


class MotionDecoder(nn.Module):
    """Ditto's LMDM denoiser: predicts clean motion x0 from noisy motion x_t.

    Released config: ``nfeats=265, seq_len=80, latent_dim=512, ff_size=1024, num_layers=8,
    num_heads=8, dropout=0.1, cond_feature_dim=1103`` (1103 = HuBERT 1024 + emotion 8 + eye open 2 +
    eye ball 6 + source keypoints 63; 265 = the motion vector, see DITTO.md sec. 6).
    """

    def __init__(self, nfeats: int = 265, seq_len: int = 80, latent_dim: int = 512, ff_size: int = 1024,
                 num_layers: int = 8, num_heads: int = 8, dropout: float = 0.1, cond_feature_dim: int = 1103):
        super().__init__()
        d = latent_dim
        self.rotary = RotaryEmbedding(d)
        self.time_mlp = nn.Sequential(SinusoidalTimeEmbedding(d), nn.Linear(d, 4 * d), nn.Mish())
        self.to_time_cond = nn.Sequential(nn.Linear(4 * d, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * d, 2 * d))  # 2 time tokens for cross-attention
        self.null_cond_embed = nn.Parameter(torch.randn(1, seq_len, d))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, d))
        self.norm_cond = nn.LayerNorm(d)
        self.input_projection = nn.Linear(2 * nfeats, d)
        self.cond_encoder = nn.Sequential(
            *[CondEncoderLayer(d, num_heads, ff_size, dropout, self.rotary) for _ in range(2)])
        self.cond_projection = nn.Linear(cond_feature_dim, d)
        self.non_attn_cond_projection = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.seqTransDecoder = DecoderStack(
            [FiLMDecoderLayer(d, num_heads, ff_size, dropout, self.rotary) for _ in range(num_layers)])
        self.final_layer = nn.Linear(d, nfeats)

    def forward(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                drop_cond: bool | torch.Tensor = False) -> torch.Tensor:
        """x0 prediction.

        Args:
            x: (B, seq_len, nfeats) noisy motion x_t.
            cond_frame: (B, nfeats) the motion the window continues from (source motion / last frame).
            cond: (B, seq_len, cond_feature_dim) per-frame conditions.
            t: (B,) int64 diffusion timesteps in [0, 1000).
            drop_cond: True for the unconditional branch (null condition embedding and hidden), or a
                (B,) bool tensor, True where the condition is dropped (classifier-free guidance training).
        Returns:
            (B, seq_len, nfeats) predicted x0.
        """
        b, n = x.shape[:2]
        h = self.input_projection(torch.cat([x, cond_frame.unsqueeze(1).expand(b, n, -1)], dim=-1))

        drop = torch.as_tensor(drop_cond, device=x.device).expand(b)
        tokens = self.cond_encoder(self.cond_projection(cond))
        tokens = torch.where(drop[:, None, None], self.null_cond_embed.to(tokens.dtype), tokens)
        cond_hidden = self.non_attn_cond_projection(tokens.mean(dim=-2))

        embed, linear, mish = self.time_mlp
        t_hidden = mish(linear(embed(t).to(h.dtype)))
        t_vec = self.to_time_cond(t_hidden)
        t_tokens = self.to_time_tokens(t_hidden).view(b, 2, -1)
        t_vec = t_vec + torch.where(drop[:, None], self.null_cond_hidden.to(t_vec.dtype), cond_hidden)

        memory = self.norm_cond(torch.cat([tokens, t_tokens], dim=-2))
        return self.final_layer(self.seqTransDecoder(h, memory, t_vec))

    def guided(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
               guidance: float = 2.0) -> torch.Tensor:
        """Classifier-free guidance as Ditto runs it (two forward calls, LMDM ``guided_forward``):
        ``unc + guidance * (cond - unc)``. Same shapes as :meth:`forward`."""
        unc = self.forward(x, cond_frame, cond, t, drop_cond=True)
        con = self.forward(x, cond_frame, cond, t, drop_cond=False)
        return unc + (con - unc) * guidance
