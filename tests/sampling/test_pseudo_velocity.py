"""EchoMimic-acc's step (sampling/pseudo_velocity.py) against values of EchoMimic's
``src/utils/step_func.py`` (tests/data/echomimic_parts.safetensors, float64 with the scheduler's
float32 alphas as its pipeline passes them) and closed forms."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from avatar_cli.errors import InputError
from avatar_cli.models.presets import HALLO_SCHEDULER, SD15_SCHEDULER
from avatar_cli.sampling.methods import METHODS, sample
from avatar_cli.sampling.pseudo_velocity import PseudoVelocityScheduler, alpha_at, pseudo_velocity, x0_from_v
from tests.conftest import DATA

TIMESTEPS = (999, 832, 666, 499, 332, 166, 0)


@pytest.fixture(scope="module")
def recorded():
    return load_file(str(DATA / "echomimic_parts.safetensors"))


def _scheduler() -> PseudoVelocityScheduler:
    scheduler = METHODS["echomimic-acc"].make_scheduler(HALLO_SCHEDULER)
    assert isinstance(scheduler, PseudoVelocityScheduler) and scheduler.alphas_cumprod.dtype == torch.float32
    return scheduler


def test_step_func_values(recorded):
    ac = _scheduler().alphas_cumprod
    x, v = recorded["step.x"], recorded["step.v"]
    # alphas_cumprod is a float32 cumprod (diffusers, as EchoMimic): its rounding follows the CPU's vector
    # path (on an AVX-512 Xeon up to 4.2e-7 relative from the recording)
    torch.testing.assert_close(alpha_at(ac, torch.tensor([-1, 0, 500, 999])), recorded["step.get_alpha"],
                               rtol=1e-6, atol=0)
    for t in TIMESTEPS:
        x0 = x0_from_v(v, x, ac, t)
        # 1e-6 (relative and absolute; inputs of order 1): the alphas' float32 rounding (above; atol 1e-12
        # held on the recording's CPU). The step maths is exact to 1e-12 on float64 alphas (tests below).
        torch.testing.assert_close(x0, recorded[f"step.x0_{t}"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pseudo_velocity(x, x0, ac, t), recorded[f"step.pv_{t}"], rtol=1e-6, atol=1e-6)
        if t >= 166:  # toward s = t - 166 (the next DDIM point) instead of -1: a genuinely different velocity
            toward = pseudo_velocity(x, x0, ac, t, t - 166)
            torch.testing.assert_close(toward, recorded[f"step.pv_to_{t - 166}_{t}"], rtol=1e-6, atol=1e-6)
            assert (toward - v).abs().max() > 1e-3


def test_pseudo_velocity_toward_minus_one_is_v_in_closed_form():
    # a_t x - x0 = b_t v when x0 = a_t x - b_t v: the velocity toward alpha = 1 is v itself
    ac = torch.linspace(0.999, 0.0, 1000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=torch.float64)
    v = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=torch.float64)
    for t in (999, 500, 1):
        torch.testing.assert_close(pseudo_velocity(x, x0_from_v(v, x, ac, t), ac, t), v, rtol=0, atol=1e-12)
    # per-sample timesteps broadcast over (B, C, F, h, w)
    t = torch.tensor([999, 10])
    x0 = x0_from_v(v, x, ac, t)
    torch.testing.assert_close(x0[1], ac[10].sqrt() * x[1] - (1 - ac[10]).sqrt() * v[1], rtol=0, atol=1e-12)


def test_acc_sampling_is_ddim_v_prediction():
    scheduler = _scheduler()
    assert METHODS["echomimic-acc"].set_timesteps(scheduler, 6) == [999, 832, 666, 499, 332, 166]
    x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = lambda latents, t: torch.sin(latents) * (1 - t / 1000.0) + 0.1  # noqa: E731  (a "v")
    ours = sample(model, x, scheduler)
    reference = DDIMScheduler(**HALLO_SCHEDULER)
    reference.set_timesteps(6)
    latents, trace = x, []
    for t in reference.timesteps:
        out = reference.step(model(latents, int(t)), t, latents)
        latents = out.prev_sample
        trace.append(out.pred_original_sample)
    torch.testing.assert_close(ours, latents, rtol=0, atol=1e-10)
    # DDIM by hand, with diffusers' trailing quirk: each step goes to t - 1000 // 6 (166 -> 0, not to 1)
    ac = reference.alphas_cumprod.double()
    z = x
    for t in [999, 832, 666, 499, 332, 166]:
        v = model(z, t)
        a, b = ac[t].sqrt(), (1 - ac[t]).sqrt()
        x0, eps = a * z - b * v, a * v + b * z
        s = t - 166
        z = ac[s].sqrt() * x0 + (1 - ac[s]).sqrt() * eps
    torch.testing.assert_close(ours, z, rtol=0, atol=1e-5)


def test_non_v_prediction_is_refused():
    scheduler = METHODS["echomimic-acc"].make_scheduler(SD15_SCHEDULER)  # epsilon-prediction config
    scheduler.set_timesteps(6)
    x = torch.zeros(1, 4, 1, 2, 2)
    with pytest.raises(ValueError, match="v-prediction"):
        scheduler.step(x, scheduler.timesteps[0], x)
    echo = SimpleNamespace(audio_attention="attn2", cfg_tokens=0)  # an EchoMimic denoising U-Net's config
    hallo = SimpleNamespace(audio_attention="blocks", cfg_tokens=0)
    with pytest.raises(InputError, match="v-prediction"):
        METHODS["echomimic-acc"].check_weights(echo, dict(SD15_SCHEDULER), has_face_locator=True)
    with pytest.raises(InputError, match="EchoMimic's weights"):
        METHODS["echomimic"].check_weights(echo, dict(HALLO_SCHEDULER), has_face_locator=False)
    with pytest.raises(InputError, match="EchoMimic's weights"):  # Hallo's U-Net: audio blocks, not attn2
        METHODS["echomimic"].check_weights(hallo, dict(HALLO_SCHEDULER), has_face_locator=True)
    METHODS["echomimic-acc"].check_weights(echo, dict(HALLO_SCHEDULER), has_face_locator=True)
