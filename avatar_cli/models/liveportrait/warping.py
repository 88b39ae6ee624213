"""Warping network W with its dense-motion estimator: warps f_s from the source to the driving keypoints.

LivePortrait ``src/modules/{warping_network,dense_motion}.py`` and the hourglass of ``util.py`` (= Ditto
``core/models/modules/{warping_network,dense_motion,util}.py``); file ``warp_network.pth``. The dense
motion follows face-vid2vid (Wang et al. 2021, sec. 3.3): per-keypoint 3D flows ("sparse motions")
blended by a softmax mask predicted by a 3D hourglass, plus a 2D occlusion map.

Argument order is Ditto's, ``(feature_3d, kp_source, kp_driving)``; LivePortrait's own wrapper takes
(feature, kp_driving, kp_source) and returns a dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SameBlock2d


def coordinate_grid(d: int, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    """(d, h, w, 3) identity grid in ``grid_sample``'s xyz order: ``x = 2*i/(w-1) - 1`` on the w axis,
    y on h, z on d (LivePortrait ``util.make_coordinate_grid``)."""
    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, device=ref.device, dtype=ref.dtype) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, d: int, h: int, w: int, variance: float = 0.01) -> torch.Tensor:
    """(B, K, 3) keypoints -> (B, K, d, h, w) heatmaps ``exp(-0.5 * |grid - kp|^2 / variance)``."""
    grid = coordinate_grid(d, h, w, kp)
    diff = grid.view(1, 1, d, h, w, 3) - kp.view(*kp.shape[:2], 1, 1, 1, 3)
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


class DownBlock3d(nn.Module):
    """3x3x3 conv -> BatchNorm3d -> ReLU -> average pool (1, 2, 2)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest upsample (1, 2, 2) -> 3x3x3 conv -> BatchNorm3d -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=(1, 2, 2)))))


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        widths = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(num_blocks)):
            n_in = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            self.up_blocks.append(UpBlock3d(n_in, min(max_features, block_expansion * 2 ** i)))
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3D U-Net: (B, in_features, d, h, w) -> (B, block_expansion + in_features, d, h, w)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """Dense 3D flow (and occlusion) from sparse keypoint motion (LivePortrait ``dense_motion.py``).

    Released config (hard-coded in LivePortrait's warping network): ``block_expansion=32,
    num_blocks=5, max_features=1024, num_kp=21, feature_channel=32, reshape_depth=16, compress=4``.
    """

    def __init__(self, block_expansion: int = 32, num_blocks: int = 5, max_features: int = 1024,
                 num_kp: int = 21, feature_channel: int = 32, reshape_depth: int = 16, compress: int = 4,
                 estimate_occlusion_map: bool = True):
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress)
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
                          if estimate_occlusion_map else None)

    def forward(self, feature: torch.Tensor, kp_source: torch.Tensor,
                kp_driving: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature (B, C, d, h, w), keypoints (B, K, 3) in grid units ([-1, 1] xyz) -> dict with
        ``deformation`` (B, d, h, w, 3) sampling grid, ``mask`` (B, K+1, d, h, w) softmax weights and,
        if estimated, ``occlusion_map`` (B, 1, h, w) in (0, 1)."""
        b, _, d, h, w = feature.shape
        k = self.num_kp + 1
        feature = F.relu(self.norm(self.compress(feature)))  # (B, compress, d, h, w)

        # Sparse motions: entry 0 the identity (background), entry 1+k maps driving -> source around kp k.
        grid = coordinate_grid(d, h, w, kp_source).view(1, 1, d, h, w, 3)
        to_source = grid - kp_driving.view(b, self.num_kp, 1, 1, 1, 3) + kp_source.view(b, self.num_kp, 1, 1, 1, 3)
        sparse_motion = torch.cat([grid.expand(b, 1, d, h, w, 3), to_source], dim=1)  # (B, K+1, d, h, w, 3)

        deformed = F.grid_sample(
            feature.unsqueeze(1).expand(b, k, *feature.shape[1:]).reshape(b * k, -1, d, h, w),
            sparse_motion.reshape(b * k, d, h, w, 3), align_corners=False).view(b, k, -1, d, h, w)

        heatmap = keypoint_gaussians(kp_driving, d, h, w) - keypoint_gaussians(kp_source, d, h, w)
        heatmap = torch.cat([heatmap.new_zeros(b, 1, d, h, w), heatmap], dim=1).unsqueeze(2)
        prediction = self.hourglass(torch.cat([heatmap, deformed], dim=2).view(b, -1, d, h, w))

        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, d, h, w)
        deformation = (sparse_motion.permute(0, 1, 5, 2, 3, 4) * mask.unsqueeze(2)).sum(dim=1)
        out = {"mask": mask, "deformation": deformation.permute(0, 2, 3, 4, 1)}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    """f_s (B, reshape_channel, reshape_depth, H, W), x_s, x_d (B, num_kp, 3) -> (B, 4*block_expansion, H, W)
    (released: (1, 32, 16, 64, 64) -> (1, 256, 64, 64)).

    ``out = fourth(third(grid_sample(f_s, deformation).view(B, C*D, H, W))) * occlusion_map``.
    ``reshape_channel * reshape_depth`` is the ``max_features`` input width of ``third``; the
    ``dense_*`` widths are the dense-motion hourglass' (LivePortrait hard-codes them).
    """

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2, reshape_channel: int = 32, reshape_depth: int = 16,
                 estimate_occlusion_map: bool = True, dense_block_expansion: int = 32,
                 dense_max_features: int = 1024, dense_num_blocks: int = 5, compress: int = 4):
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(
            dense_block_expansion, dense_num_blocks, dense_max_features, num_kp, reshape_channel,
            reshape_depth, compress, estimate_occlusion_map)
        out_features = block_expansion * 2 ** num_down_blocks
        self.third = SameBlock2d(max_features, out_features, lrelu=True)
        self.fourth = nn.Conv2d(out_features, out_features, kernel_size=1)

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        kp_source, kp_driving = kp_source.to(feature_3d.dtype), kp_driving.to(feature_3d.dtype)
        dense = self.dense_motion_network(feature_3d, kp_source, kp_driving)
        out = F.grid_sample(feature_3d, dense["deformation"], align_corners=False)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(b, c * d, h, w)))
        if "occlusion_map" in dense:
            out = out * dense["occlusion_map"]
        return out
