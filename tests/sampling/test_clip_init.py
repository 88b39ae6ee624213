"""Clip initialisation (OSA-LCM sec. 4.2) against a hand computation from alphas_cumprod."""

import pytest
import torch

from avatar_cli.sampling.clip_init import initial_latents
from tests.sampling.test_methods import alphas_cumprod_by_hand

ALPHAS = alphas_cumprod_by_hand()


def _inputs(frames=4):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, frames, 8, 8, generator=g, dtype=torch.float64)
    previous = torch.randn(1, 4, frames, 8, 8, generator=g, dtype=torch.float64)
    z_ref = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    return noise, previous, z_ref


def test_gaussian_is_pure_noise_at_999():
    noise, previous, z_ref = _inputs()
    for clip in (0, 3):
        latents, t = initial_latents("gaussian", clip, noise, previous, z_ref, ALPHAS, 980)
        assert t == 999 and torch.equal(latents, noise)


@pytest.mark.parametrize("tau", [980, 950, 900, 850])
def test_rolling_noises_the_previous_clip_to_tau(tau):
    noise, previous, z_ref = _inputs()
    latents, t = initial_latents("rolling", 2, noise, previous, z_ref, ALPHAS, tau)
    a = ALPHAS[tau].item()
    assert t == tau
    torch.testing.assert_close(latents, a ** 0.5 * previous + (1 - a) ** 0.5 * noise, rtol=0, atol=1e-12)


def test_rolling_first_clip_uses_the_reference_latent_and_fills_short_clips():
    noise, previous, z_ref = _inputs()
    a = ALPHAS[900].item()
    latents, _ = initial_latents("rolling", 0, noise, None, z_ref, ALPHAS, 900)
    torch.testing.assert_close(latents, a ** 0.5 * z_ref[:, :, None] + (1 - a) ** 0.5 * noise, rtol=0, atol=1e-12)
    short = previous[:, :, :3]
    latents, _ = initial_latents("rolling", 1, noise, short, z_ref, ALPHAS, 900)
    source = torch.cat([z_ref[:, :, None], short], dim=2)  # reference repeated in front
    torch.testing.assert_close(latents, a ** 0.5 * source + (1 - a) ** 0.5 * noise, rtol=0, atol=1e-12)


def test_combined_rolling_is_gaussian_for_clip_zero_only():
    noise, previous, z_ref = _inputs()
    first, t0 = initial_latents("combined-rolling", 0, noise, None, z_ref, ALPHAS, 950)
    later, t1 = initial_latents("combined-rolling", 1, noise, previous, z_ref, ALPHAS, 950)
    assert t0 == 999 and torch.equal(first, noise)
    rolling, _ = initial_latents("rolling", 1, noise, previous, z_ref, ALPHAS, 950)
    assert t1 == 950 and torch.equal(later, rolling)


def test_unknown_mode():
    noise, previous, z_ref = _inputs()
    with pytest.raises(ValueError, match="unknown init mode"):
        initial_latents("uniform", 0, noise, previous, z_ref, ALPHAS, 950)
