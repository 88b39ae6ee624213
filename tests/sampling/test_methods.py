"""LCM (OSA-LCM eq. 1) and DDIM sampling against diffusers' schedulers stepped by hand."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from avatar_cli.models.presets import SD15_SCHEDULER
from avatar_cli.sampling.methods import METHODS, sample


def alphas_cumprod_by_hand() -> torch.Tensor:
    """SD1.5's scaled-linear schedule computed here, in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def _lcm():
    scheduler = METHODS["osa-lcm"].make_scheduler(SD15_SCHEDULER)
    assert isinstance(scheduler, LCMScheduler)
    return scheduler


def test_one_step_lcm_equals_lcm_scheduler_step_and_the_closed_form():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    calls = []

    def model(latents, t):
        calls.append(t)
        return eps

    scheduler = _lcm()
    assert METHODS["osa-lcm"].set_timesteps(scheduler, 1) == [999]
    ours = sample(model, x, scheduler)
    assert calls == [999]
    reference = LCMScheduler.from_config(SD15_SCHEDULER)
    reference.set_timesteps(1)
    expected = reference.step(eps, 999, x).denoised
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # OSA-LCM eq. 1 with diffusers' boundary scalings: s = 10 t, sigma = 0.5
    a = alphas_cumprod_by_hand()[999]
    s = 10.0 * 999
    c_skip, c_out = 0.25 / (s * s + 0.25), s / math.sqrt(s * s + 0.25)
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    # (diffusers keeps alphas_cumprod in float32, hence the relative tolerance)
    torch.testing.assert_close(ours, c_skip * x + c_out * x0, rtol=1e-5, atol=1e-6)


def test_lcm_schedules_with_rolling_starts():
    s, m = _lcm(), METHODS["osa-lcm"]
    assert m.set_timesteps(s, 1, start=980) == [980]
    assert m.set_timesteps(s, 2) == [999, 499]
    assert m.set_timesteps(s, 2, start=950) == [950, 499]
    assert m.set_timesteps(s, 4, start=600) == [600, 499, 259]


@pytest.mark.parametrize("steps", [2, 4])
def test_multi_step_lcm_renoises_with_the_generator(steps):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    model = lambda latents, t: 0.1 * latents + t / 1000.0  # noqa: E731
    scheduler = _lcm()
    METHODS["adv-lcm"].set_timesteps(scheduler, steps)
    ours = sample(model, x, scheduler, torch.Generator().manual_seed(5))
    reference = LCMScheduler.from_config(SD15_SCHEDULER)
    reference.set_timesteps(steps)
    generator = torch.Generator().manual_seed(5)
    latents = x
    for t in reference.timesteps:
        out = reference.step(model(latents, int(t)), t, latents, generator=generator)
        latents = out.prev_sample
    torch.testing.assert_close(ours, out.denoised, rtol=0, atol=1e-6)


def _ddim_by_hand(reference: DDIMScheduler, model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """diffusers' DDIMScheduler stepped by hand over ``steps`` timesteps from ``x``."""
    reference.set_timesteps(steps)
    latents = x
    for t in reference.timesteps:
        latents = reference.step(model(latents, int(t)), t, latents).prev_sample
    return latents


def test_ddim_equals_ddim_scheduler_stepped_by_hand():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    model = lambda latents, t: torch.tanh(latents) * (t / 1000.0)  # noqa: E731
    scheduler = METHODS["teacher"].make_scheduler(SD15_SCHEDULER)
    timesteps = METHODS["teacher"].set_timesteps(scheduler, 25)
    assert len(timesteps) == 25 and timesteps[0] == 961 and timesteps[-1] == 1  # SD1.5: leading, offset 1
    ours = sample(model, x, scheduler)
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    torch.testing.assert_close(ours, _ddim_by_hand(reference, model, x, 25), rtol=0, atol=1e-6)


def test_method_table_nfe():
    table = {name: (m.default_steps, m.nfe(m.default_steps), m.guidance) for name, m in METHODS.items()}
    assert table == {"osa-lcm": (1, 1, "none"), "adv-lcm": (2, 2, "none"), "fada": (6, 6, "cfg-tokens"),
                     "fada-balanced": (6, 18, "multi-cfg"), "teacher": (25, 75, "multi-cfg"),
                     "hallo": (40, 80, "cfg"), "ditto": (10, 20, "cfg"), "echomimic": (30, 60, "cfg"),
                     "echomimic-acc": (6, 6, "none")}
    assert METHODS["adv-lcm"].nfe(4) == 4


def test_hallo_ddim_v_prediction_zero_snr_trailing_equals_diffusers():
    from avatar_cli.models.presets import HALLO_SCHEDULER

    torch.manual_seed(3)
    x = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    model = lambda latents, t: torch.sin(latents) * (1 - t / 1000.0)  # noqa: E731  (a "v" prediction)
    scheduler = METHODS["hallo"].make_scheduler(HALLO_SCHEDULER)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    timesteps = METHODS["hallo"].set_timesteps(scheduler, 40)
    assert timesteps[0] == 999 and len(timesteps) == 40  # trailing spacing starts at the last timestep
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6     # zero terminal SNR
    ours = sample(model, x, scheduler)
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                              steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                              timestep_spacing="trailing")
    torch.testing.assert_close(ours, _ddim_by_hand(reference, model, x, 40), rtol=0, atol=1e-6)


def test_ddim_rolling_start_begins_at_the_first_timestep_at_or_below_tau():
    scheduler = METHODS["teacher"].make_scheduler(SD15_SCHEDULER)
    full = METHODS["teacher"].set_timesteps(scheduler, 25)
    rolled = METHODS["teacher"].set_timesteps(scheduler, 25, start=900)
    assert rolled == [t for t in full if t <= 900] and rolled[0] <= 900
