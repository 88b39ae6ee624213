"""Head pose and implicit keypoints: pose bins -> degrees, Euler angles -> rotation, keypoint transform.

LivePortrait eq. 2 (Guo et al. 2024, "LivePortrait", sec. 3.1): ``x = s * (x_c R + delta) + t``, as in
Ditto ``core/atomic_components/motion_stitch.py`` (``bin66_to_degree``, ``get_rotation_matrix``,
``transform_keypoint``), written here in torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(B, 66) pose-bin logits -> (B,) degrees: ``sum(softmax(logits) * arange(66)) * 3 - 97.5``.

    The expected bin index under the softmax, mapped linearly to degrees (3 degrees per bin, bin 0 at
    -97.5): LivePortrait ``headpose_pred_to_degree``, Ditto ``bin66_to_degree``.
    """
    idx = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return (torch.softmax(logits, dim=-1) * idx).sum(dim=-1) * 3 - 97.5


def _degrees(angle: torch.Tensor) -> torch.Tensor:
    """Logits (B, 66) -> degrees (B,); degrees (B,) or (B, 1) pass through as (B,)."""
    if angle.ndim > 1 and angle.shape[-1] == 66:
        return bins_to_degrees(angle)
    return angle.reshape(angle.shape[0])


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (B,) each -> (B, 3, 3) ``(Rz(roll) @ Ry(yaw) @ Rx(pitch))^T``, right-handed axes.

    Transposed so that row-vector keypoints rotate as ``kp @ R`` (LivePortrait ``get_rotation_matrix``).
    """
    x, y, z = (a * (math.pi / 180) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def transform_keypoint(info: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Motion dict -> (B, K, 3) keypoints ``scale * (kp @ R + exp) + [tx, ty, 0]``.

    ``info``: ``kp`` (B, 3K) or (B, K, 3) canonical keypoints; ``pitch``/``yaw``/``roll`` (B, 66) logits
    or (B,) degrees; ``t`` (B, 3) (z ignored); ``exp`` (B, 3K); ``scale`` (B, 1).
    """
    kp = info["kp"]
    b = kp.shape[0]
    k = kp.shape[1] // 3 if kp.ndim == 2 else kp.shape[1]
    rot = rotation_matrix(_degrees(info["pitch"]), _degrees(info["yaw"]), _degrees(info["roll"]))
    out = (kp.reshape(b, k, 3) @ rot + info["exp"].reshape(b, k, 3)) * info["scale"].reshape(b, 1, 1)
    shift = torch.zeros_like(out)
    shift[..., :2] = info["t"].reshape(b, 1, 3)[..., :2]
    return out + shift
