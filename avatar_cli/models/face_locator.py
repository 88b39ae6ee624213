"""Face locator (Hallo): a face-region mask image -> features added to the denoising U-Net's input.

A small stride-8 conv net (the ControlNet conditioning-embedding shape): the mask image (3, H, W)
becomes (C, H/8, W/8) features added after the denoising U-Net's ``conv_in``. Its output
convolution starts at zero, so an untrained locator changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FaceLocator(ModelMixin, ConfigMixin):
    """conv_in -> (conv, conv stride 2) per width -> conv_out, SiLU between.

    Args:
        conditioning_channels: mask image channels (3).
        block_out_channels: widths of the stages, (16, 32, 64, 128) in Hallo: three stride-2 steps.
        embedding_channels: output channels, the denoising U-Net's first block width (320).
    """

    @register_to_config
    def __init__(self, conditioning_channels: int = 3, block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
                 embedding_channels: int = 320):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, widths[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask_image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) mask image in [0, 1] -> (N, embedding_channels, H/8, W/8)."""
        x = F.silu(self.conv_in(mask_image.to(self.dtype)))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)
