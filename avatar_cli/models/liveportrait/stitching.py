"""Stitching network S: a keypoint correction so that the animated crop pastes back without seams.

LivePortrait ``src/modules/stitching_retargeting_network.py`` (= Ditto
``core/models/modules/stitching_network.py``); file ``stitch_network.pth``, entry
``retarget_shoulder`` (the file's ``retarget_mouth`` / ``retarget_eye`` are unused by Ditto).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class StitchingNetwork(nn.Module):
    """MLP ``cat(x_s.flat, x_d.flat)`` (B, 2*3*K) -> delta (B, 3*K + 2); ``forward`` applies it (:func:`stitch`).

    Released config: ``input_size=126, hidden_sizes=(128, 128, 64), output_size=65`` (K = 21).
    """

    def __init__(self, input_size: int = 126, hidden_sizes: Sequence[int] = (128, 128, 64), output_size: int = 65):
        super().__init__()
        layers: list[nn.Module] = []
        for n_in, n_out in zip([input_size, *hidden_sizes[:-1]], hidden_sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(hidden_sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """x_s, x_d (B, K, 3) -> stitched x_d (B, K, 3) (a new tensor; inputs are not modified)."""
        return stitch(self, kp_source, kp_driving)


def stitch(net: StitchingNetwork, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """``delta = net.mlp(cat(x_s, x_d))``; ``x_d + delta[:, :3K].view(K, 3)``, then ``+ delta[:, 3K:3K+2]``
    on every keypoint's x, y (LivePortrait ``stitching``). Shapes (B, K, 3) -> (B, K, 3)."""
    b, k = kp_source.shape[:2]
    delta = net.mlp(torch.cat([kp_source.reshape(b, -1), kp_driving.reshape(b, -1)], dim=1))
    out = kp_driving + delta[:, :3 * k].reshape(b, k, 3)
    shift = torch.zeros_like(out)
    shift[..., :2] = delta[:, 3 * k:3 * k + 2].reshape(b, 1, 2)
    return out + shift
