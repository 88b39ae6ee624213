"""Motion extractor M: portrait crop -> canonical keypoints, head pose bins, translation, expression, scale.

LivePortrait ``src/modules/{motion_extractor,convnextv2}.py`` (= Ditto
``core/models/modules/{motion_extractor,convnextv2}.py``); file ``motion_extractor.pth``. The
backbone is ConvNeXt V2 (Woo et al. 2023, "ConvNeXt V2", sec. 3: blocks with Global Response
Normalization), the "tiny" size, with seven linear heads on the pooled features.

Why not timm's ConvNeXt V2: its state dict is laid out as ``stem.*``, ``stages.N.downsample.*``,
``stages.N.blocks.M.conv_dw`` / ``mlp.fc1`` / ``mlp.grn.weight`` ..., while the released file uses
the reference implementation's ``downsample_layers.N.*`` / ``stages.N.M.dwconv`` / ``pwconv1`` /
``grn.gamma``. Loading the file into timm would need a key remap (and a GRN parameter reshape) at
load time; the blocks are a few lines, so they are written here with the file's names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor (ConvNeXt's "channels_first" LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2 eq. 1-3) on channels-last (B, H, W, C) input:
    ``G = ||x||_2 over (H, W)``, ``N = G / (mean_C G + 1e-6)``, ``out = gamma * (x * N) + beta + x``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """x + pwconv2(GRN(GELU(pwconv1(LN(dwconv7x7(x)))))) on (B, C, H, W); no layer scale, no drop path."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2 trunk plus LivePortrait's heads (the ``detector`` of :class:`MotionExtractor`).

    Stem: 4x4 stride-4 conv + LayerNorm; then per stage i: (for i > 0: LayerNorm + 2x2 stride-2 conv)
    and ``depths[i]`` blocks of width ``dims[i]``; global average pool; LayerNorm; heads.
    """

    def __init__(self, in_chans: int = 3, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), num_kp: int = 21, num_bins: int = 66):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtV2Block(dim) for _ in range(depth)]) for dim, depth in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        width = dims[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return (self.fc_pitch(x), self.fc_yaw(x), self.fc_roll(x), self.fc_t(x), self.fc_exp(x),
                self.fc_scale(x), self.fc_kp(x))


class MotionExtractor(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] (released: 256x256, no ImageNet normalisation) -> the tuple
    ``(pitch, yaw, roll, t, exp, scale, kp)`` of shapes (B, num_bins) x3 (pose logits over 3-degree
    bins, see :func:`~.keypoints.bins_to_degrees`), (B, 3), (B, 3*num_kp), (B, 1), (B, 3*num_kp).

    Released config: ``num_kp=21``, ConvNeXt V2 tiny (``depths=(3, 3, 9, 3)``,
    ``dims=(96, 192, 384, 768)``), 66 bins.
    """

    def __init__(self, num_kp: int = 21, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), num_bins: int = 66, in_chans: int = 3):
        super().__init__()
        self.detector = ConvNeXtV2(in_chans, depths, dims, num_kp, num_bins)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector(image)
