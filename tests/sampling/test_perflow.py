"""PeRFlow (FADA eqs. 2-5) against an independent closed form and the reference values in docs/sampling.md."""

import pytest
import torch

from avatar_cli.sampling.methods import METHODS, sample
from avatar_cli.sampling.perflow import PeRFlowScheduler, window_split
from avatar_cli.models.presets import SD15_SCHEDULER
from tests.sampling.test_methods import alphas_cumprod_by_hand


def _closed_form_end(z: torch.Tensor, eps: torch.Tensor, windows: int = 4) -> torch.Tensor:
    """With a fixed eps the flow in each window is the straight line to its DDIM end point
    z_e = lambda_s z_s + eta_s eps, whatever the number of steps inside."""
    alphas = alphas_cumprod_by_hand()
    for k in range(windows):
        t_s, t_e = 1 - k / windows, 1 - (k + 1) / windows
        a_s = alphas[round(t_s * 1000) - 1]
        a_e = alphas[max(round(t_e * 1000) - 1, 0)]
        lam = (a_e / a_s).sqrt()
        eta = (1 - a_e).sqrt() - (a_e * (1 - a_s) / a_s).sqrt()
        z = lam * z + eta * eps
    return z


@pytest.mark.parametrize("steps,windows", [(6, [2, 2, 1, 1]), (4, [1, 1, 1, 1]), (8, [2, 2, 2, 2]),
                                           (7, [2, 2, 2, 1]), (6, [3, 1, 1, 1])])
def test_end_point_equals_the_piecewise_linear_flow(steps, windows):
    torch.manual_seed(0)
    z = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(z)
    calls = []

    def model(latents, t):
        calls.append(t)
        return eps

    scheduler = METHODS["fada"].make_scheduler(SD15_SCHEDULER)
    given = windows if windows != window_split(steps, 4) else None
    METHODS["fada"].set_timesteps(scheduler, steps, window_steps=given)
    assert scheduler.window_steps == windows
    out = sample(model, z, scheduler)
    assert len(calls) == steps  # NFE counted by the wrapped model
    torch.testing.assert_close(out, _closed_form_end(z, eps), rtol=0, atol=1e-6)


def test_six_step_schedule_and_reference_coefficients():
    s = PeRFlowScheduler()
    s.set_timesteps(6)
    assert s.window_steps == [2, 2, 1, 1]
    assert s.timesteps.tolist() == [1000, 875, 750, 625, 500, 250]
    # docs/sampling.md, "PeRFlow": z_next = A z + B eps, SD1.5 schedule, ddim_eps, 6 steps (1e-4)
    a_ref = [2.2429, 1.5542, 1.6072, 1.3778, 1.5597, 1.2163]
    b_ref = [-1.2532, -0.5587, -0.6505, -0.4047, -0.7558, -0.6638]
    for i in range(6):
        a, b = s.coefficients(i)
        assert abs(a - a_ref[i]) < 1e-4 and abs(b - b_ref[i]) < 1e-4, (i, a, b)
    # the last point of a window lands on its predicted end: A = lambda_t, B = eta_t there
    z = torch.ones(1, dtype=torch.float64)
    e = torch.zeros(1, dtype=torch.float64)
    s.set_timesteps(6)
    out = s.step(e, 1000, z)
    assert abs(out.prev_sample.item() - s.coefficients(0)[0]) < 1e-12


def test_window_splits_and_errors():
    assert window_split(6, 4) == [2, 2, 1, 1]
    assert window_split(9, 4) == [3, 2, 2, 2]
    s = PeRFlowScheduler()
    with pytest.raises(ValueError, match="at least one step"):
        s.set_timesteps(3)
    with pytest.raises(ValueError, match="at least one step"):
        s.set_timesteps(window_steps=[2, 2, 2])
    s.set_timesteps(6)
    with pytest.raises(ValueError, match="expects timestep 1000"):
        s.step(torch.zeros(1), 875, torch.zeros(1))
