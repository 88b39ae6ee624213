"""SPADE decoder G: warped features -> 512x512 RGB.

LivePortrait ``src/modules/spade_generator.py`` and ``util.py:SPADE / SPADEResnetBlock`` (= Ditto
``core/models/modules/{spade_generator,util}.py``); file ``decoder.pth``. SPADE is Park et al. 2019
("Semantic Image Synthesis with Spatially-Adaptive Normalization", eq. 1): parameter-free instance
norm, then ``* (1 + gamma(seg)) + beta(seg)``; here the segmentation map is the decoder's own input.

The residual blocks' convs carry spectral norm through ``torch.nn.utils.spectral_norm`` (the
pre-parametrization API), whose state-dict keys ``weight_orig`` / ``weight_u`` / ``weight_v`` are those
of the released file. In eval mode it does no power iteration: the weight is
``weight_orig / (u . (weight_orig.reshape(out, -1) @ v))`` with the stored u, v. (In train mode it
would update u and v in place, like the original.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class SPADE(nn.Module):
    """(B, C, H, W) features, (B, label_nc, h, w) segmap -> (B, C, H, W); the segmap is resized nearest."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE -> LeakyReLU 0.2 -> SN-conv3x3, twice, plus the shortcut (learned SPADE + SN-conv1x1 without
    bias when ``fin != fout``)."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEDecoder(nn.Module):
    """(B, C_in, H, W) warped features, ``C_in = min(max_features, block_expansion * 2**num_down_blocks)``
    -> (B, 3, 8H, 8W) RGB in (0, 1) (released: (1, 256, 64, 64) -> (1, 3, 512, 512)).

    ``fc`` (3x3, C_in -> 2 C_in) -> six SPADE blocks at 2 C_in -> nearest x2 -> ``up_0`` (-> C_in) ->
    nearest x2 -> ``up_1`` (-> ``out_channels``) -> LeakyReLU 0.2 -> ``conv_img`` (3x3 to 12 channels,
    PixelShuffle 2) -> sigmoid. ``spade_hidden`` is the SPADE MLP width (128 in the release).
    """

    def __init__(self, upscale: int = 2, max_features: int = 512, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2, spade_hidden: int = 128):
        super().__init__()
        if upscale != 2:
            raise ValueError("only the released upscale=2 (PixelShuffle 2) head is implemented")
        c = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.fc = nn.Conv2d(c, 2 * c, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * c, 2 * c, c, spade_hidden))
        self.up_0 = SPADEResnetBlock(2 * c, c, c, spade_hidden)
        self.up_1 = SPADEResnetBlock(c, out_channels, c, spade_hidden)
        self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
