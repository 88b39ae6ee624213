"""Appearance feature extractor F: portrait crop -> 3D appearance feature volume f_s.

LivePortrait ``src/modules/appearance_feature_extractor.py`` (= Ditto
``core/models/modules/appearance_feature_extractor.py``); file ``appearance_extractor.pth``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, reshape_channel, reshape_depth, H/4, W/4) (released: H=W=256
    -> (B, 32, 16, 64, 64)).

    ``first`` (3x3 conv+BN+ReLU) -> ``num_down_blocks`` DownBlock2d (x2 channels, /2 size each) ->
    ``second`` (1x1 conv to ``max_features``) -> view as ``reshape_channel`` x ``reshape_depth`` ->
    ``num_resblocks`` ResBlock3d. ``reshape_channel * reshape_depth`` must equal ``max_features``.
    """

    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16,
                 num_resblocks: int = 6):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError("reshape_channel * reshape_depth must equal max_features")
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        widths = [min(max_features, block_expansion * 2**i) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        return self.resblocks_3d(out.view(b, self.reshape_channel, self.reshape_depth, h, w))
