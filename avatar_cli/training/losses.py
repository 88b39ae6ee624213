"""Loss terms of the two distillations, each with its paper equation.

Tensors are latents (B, C, F, h, w) unless said; every loss returns one value per sample (B,) so
that per-sample weights (FADA's W) can be applied, and callers take the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """OSA-LCM eq. 3's distance d: the pseudo-Huber loss sqrt(||a - b||^2 + c^2) - c per sample.

    ``c`` defaults to 0.00054 * sqrt(d) with d the number of values per sample (the choice of the
    consistency-model papers for images, used by LCM).
    """
    diff = (prediction - target).flatten(1).float()
    if c is None:
        c = 0.00054 * diff.shape[1] ** 0.5
    squared = (diff ** 2).sum(1)
    return squared / (torch.sqrt(squared + c * c) + c)  # = sqrt(x + c^2) - c, without cancellation


def motion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OSA-LCM eqs. 7-8: the mean squared difference of frame-to-frame changes,
    ||(x_{f+1} - x_f) - (y_{f+1} - y_f)||^2 averaged over frames and values; (B,)."""
    motion_pred = prediction[:, :, 1:] - prediction[:, :, :-1]
    motion_true = target[:, :, 1:] - target[:, :, :-1]
    return ((motion_pred - motion_true).float() ** 2).flatten(1).mean(1)


def generator_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """OSA-LCM eq. 5, the adversarial term of the generator: hinge -D(fake), or non-saturating
    softplus(-D(fake)); (B,)."""
    if kind == "hinge":
        return -logits_fake
    if kind == "non-saturating":
        return F.softplus(-logits_fake)
    raise ValueError(f"unknown GAN loss {kind!r} (hinge or non-saturating)")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """OSA-LCM eq. 4: hinge relu(1 - D(real)) + relu(1 + D(fake)), or the non-saturating
    softplus(-D(real)) + softplus(D(fake)); (B,)."""
    if kind == "hinge":
        return F.relu(1 - logits_real) + F.relu(1 + logits_fake)
    if kind == "non-saturating":
        return F.softplus(-logits_real) + F.softplus(logits_fake)
    raise ValueError(f"unknown GAN loss {kind!r} (hinge or non-saturating)")


def mixed_supervision_weight(ratio: torch.Tensor, w0: float = 0.2, s: float = 0.25, r_peak: float = 30.0,
                             r_dead: float = 100.0) -> torch.Tensor:
    """FADA eq. 8: W(R) = W0 * { R^s on [0, R_p); R_p^s (R_d - R) / (R_d - R_p) on [R_p, R_d); 0 beyond },
    R = L_gt / L_teacher per sample. No gradient flows through W."""
    ratio = ratio.detach().float().clamp(min=0)
    rising = ratio ** s
    falling = r_peak ** s * (r_dead - ratio) / (r_dead - r_peak)
    weight = torch.where(ratio < r_peak, rising, torch.where(ratio < r_dead, falling, torch.zeros_like(ratio)))
    return w0 * weight
