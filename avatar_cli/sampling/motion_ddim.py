"""DDIM sampling of Ditto's motion DiT (x0-prediction, eta = 1, per-step noises injected).

Follows Ditto ``core/models/modules/LMDM.py`` (``init_diff``, ``setup``, ``ddim_sample``,
``predict_noise_from_start``): DDIM (Song et al. 2021, eq. 12 with eq. 16's sigma at eta = 1) on the
cosine schedule (Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999), "trailing" timesteps
``linspace(-1, 999, S+1)`` truncated to int, and the last step returning the model's x0.

Why not diffusers' ``DDIMScheduler``: with ``beta_schedule="squaredcos_cap_v2"``,
``timestep_spacing="trailing"``, ``prediction_type="sample"``, ``set_alpha_to_one=True`` and the
noises passed as ``variance_noise`` it gives the same steps when S divides 1000 (10, 50; the tests
check that), but for other S its timesteps are rounded (999, 666, 332 for S=3) where Ditto's are
truncated (999, 665, 332), and its previous timestep is always ``t - 1000 // S``. Ditto's rule is
kept here for every S.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

TRAIN_STEPS = 1000


def cosine_alphas_cumprod(n: int = TRAIN_STEPS, s: float = 0.008) -> torch.Tensor:
    """(n,) float32 cumulative alphas: betas ``1 - abar(t+1)/abar(t)`` with
    ``abar(t) = cos((t/n + s)/(1 + s) * pi/2)^2`` in float64, clipped to [0, 0.999], cast to float32,
    then ``cumprod(1 - betas)`` in float32 (Ditto casts before the cumprod)."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n + s
    abar = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
    betas = (1 - abar[1:] / abar[:-1]).clamp(0, 0.999).float()
    return torch.cumprod(1 - betas, dim=0)


def timestep_pairs(steps: int, n: int = TRAIN_STEPS) -> list[tuple[int, int]]:
    """``[(t, t_next), ...]`` from 999 down: S=10 -> (999, 899), ..., (99, -1); -1 marks the last step."""
    times = torch.linspace(-1, n - 1, steps + 1).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:]))


def draw_noises(steps: int, shape: Sequence[int], generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The S-1 per-step noises z, drawn in order (Ditto draws them once in ``setup`` and reuses them for
    every window; draw x_T per window after these from the same generator)."""
    return [torch.randn(tuple(shape), generator=generator, device=device) for _ in range(steps - 1)]


def sample_motion_ddim(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
                       noises: Sequence[torch.Tensor], steps: int,
                       alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """Run S DDIM steps from ``x_T`` and return the final x0.

    Args:
        denoise: ``(x_t (B, N, F), t (B,) int64) -> x0`` (e.g. guided :meth:`MotionDecoder.guided`).
        x_T: (B, N, F) starting noise.
        noises: S-1 tensors shaped like ``x_T`` (:func:`draw_noises`), z of steps 1..S-1.
        steps: S.
        alphas_cumprod: (1000,) float32; default :func:`cosine_alphas_cumprod`.
    Raises:
        ValueError: ``len(noises) != steps - 1``.
    """
    if len(noises) != steps - 1:
        raise ValueError(f"need {steps - 1} per-step noises for {steps} steps, got {len(noises)}")
    ac = (cosine_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).to(x_T.device)
    x = x_T
    for i, (t, t_next) in enumerate(timestep_pairs(steps, len(ac))):
        x0 = denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        if t_next < 0:
            return x0
        a, a_next = ac[t], ac[t_next]
        eps = x * torch.sqrt(1 / (1 - a)) - x0 / torch.sqrt(1 / a - 1)  # noise implied by x0
        sigma = ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()  # eta = 1
        # 1 - a_next - sigma^2 = (1 - a_next) * (1 - (1 - a/a_next)/(1 - a)) >= 0 in exact arithmetic, but
        # float32 rounding takes it to -6e-8 on some (t, t_next) pairs (999 -> 665 for S = 3 here, 999 -> 799
        # for S = 5 on other CPUs), whose sqrt is NaN: the motion, then the face, would be NaN (black).
        c_eps = (1 - a_next - sigma ** 2).clamp_min(0).sqrt()
        x = x0 * a_next.sqrt() + c_eps * eps + sigma * noises[i].to(x)
    return x
