"""Conv + norm + activation blocks shared by LivePortrait's networks.

Follows LivePortrait ``src/modules/util.py`` (same in Ditto ``core/models/modules/util.py``): the
attribute names (``conv``, ``norm``, ``conv1``...) are those of the released state dicts.
BatchNorms run on their running statistics (eval mode), eps 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SameBlock2d(nn.Module):
    """3x3 conv -> BatchNorm2d -> ReLU (or LeakyReLU 0.01): (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
                 lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """3x3 conv -> BatchNorm2d -> ReLU -> 2x2 average pool: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x)))))), 3x3x3, same width."""

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(features, features, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x
