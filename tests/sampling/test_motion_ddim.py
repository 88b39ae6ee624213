"""Ditto's motion DDIM against an independent implementation: diffusers' DDIMScheduler.

(Equality with Ditto's own sampler is in tests/models/ditto/test_equivalence.py.) With S dividing
1000, diffusers' DDIM (cosine "squaredcos_cap_v2" betas, trailing spacing, x0 prediction, eta = 1,
``variance_noise`` injected, final alpha 1) must take the same steps; for other S Ditto truncates
its timesteps where diffusers rounds, which is why the project has its own loop.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from avatar_cli.sampling.motion_ddim import (cosine_alphas_cumprod, draw_noises, sample_motion_ddim,
                                             timestep_pairs)


def _scheduler(steps: int) -> DDIMScheduler:
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                      clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    s.set_timesteps(steps)
    return s


def _denoiser():
    """A smooth x0 predictor that depends on x and t (stands in for the DiT)."""
    w = torch.linspace(-0.5, 0.5, 12)

    def denoise(x, t):
        return torch.tanh(x * 0.7 + w) * (1 + t[:, None, None].float() / 2000)
    return denoise


def test_schedule_matches_diffusers_cosine():
    torch.testing.assert_close(cosine_alphas_cumprod(), _scheduler(10).alphas_cumprod, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps", [10, 50])
def test_timesteps_match_diffusers_trailing_when_steps_divide_1000(steps):
    pairs = timestep_pairs(steps)
    assert [t for t, _ in pairs] == _scheduler(steps).timesteps.tolist()
    assert pairs[0] == (999, 999 - 1000 // steps) and pairs[-1] == (1000 // steps - 1, -1)


def test_timesteps_truncate_for_other_step_counts():
    assert timestep_pairs(3) == [(999, 665), (665, 332), (332, -1)]
    assert [t for t, _ in timestep_pairs(3)] != _scheduler(3).timesteps.tolist()  # diffusers: 999, 666, 332


def test_ten_steps_match_diffusers_ddim_eta_1():
    g = torch.Generator().manual_seed(0)
    noises = draw_noises(10, (2, 8, 12), generator=g)
    x_T = torch.randn(2, 8, 12, generator=g)
    denoise = _denoiser()
    ours = sample_motion_ddim(denoise, x_T, noises, steps=10)

    sched = _scheduler(10)
    x = x_T
    for i, t in enumerate(sched.timesteps):
        x0 = denoise(x, torch.full((2,), int(t)))
        noise = noises[i] if i < len(noises) else torch.zeros_like(x)  # the last step has sigma = 0
        x = sched.step(x0, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_noises_are_used_and_counted():
    g = torch.Generator().manual_seed(1)
    noises = draw_noises(4, (1, 8, 12), generator=g)
    x_T = torch.randn(1, 8, 12, generator=g)
    denoise = _denoiser()
    a = sample_motion_ddim(denoise, x_T, noises, steps=4)
    b = sample_motion_ddim(denoise, x_T, [n * 0 for n in noises], steps=4)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="need 3 per-step noises for 4 steps, got 2"):
        sample_motion_ddim(denoise, x_T, noises[:2], steps=4)


def test_motion_is_finite_at_every_step_count():
    """Issue 23: at the first step (999 -> t_next) the coefficient of the implied noise,
    sqrt(1 - abar_next - sigma^2), is 0 in exact arithmetic but rounds to -6e-8 in float32 for some step
    counts (S = 3 on this project's CPU, S = 5 on others), which made the motion NaN and the face black.
    Every --steps 1..100 must give finite motion, with the noise and the start both still mattering."""
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(1, 8, 12, generator=g)
    denoise = _denoiser()
    for steps in range(1, 101):
        noises = draw_noises(steps, (1, 8, 12), generator=g)
        x0 = sample_motion_ddim(denoise, x_T, noises, steps=steps)
        assert torch.isfinite(x0).all(), f"--steps {steps} gives non-finite motion"
        # the result is the denoiser's x0 of a finite x_t: bounded as tanh * (1 + t/2000) is
        assert x0.abs().max() <= 1.5, steps

