"""EchoMimic-acc's step: each v-prediction turned into x0, then into a "pseudo-velocity" toward t = -1,
which diffusers' DDIM v-prediction step consumes (antgroup/echomimic, ``src/utils/step_func.py`` and
its use in ``src/pipelines/pipeline_echo_mimic_acc.py``).

With a_t = sqrt(alphas_cumprod[t]), b_t = sqrt(1 - alphas_cumprod[t]) and alphas_cumprod[-1] := 1:

- x0 = a_t x_t - b_t v                                       (``origin_by_velocity_and_sample``)
- u_{t->s} = (x0 - (a_s a_t + b_s b_t) x_t) / (b_s a_t - a_s b_t)
                                                             (``psuedo_velocity_wrt_noisy_and_timestep``)
  the velocity of the straight DDIM path from x_t (at t) to its point at s;
- EchoMimic-acc takes s = -1 (a_s = 1, b_s = 0): u = (a_t x_t - x0) / b_t, averages u over the
  context windows (and applies CFG when the scale is > 1), and hands it to ``DDIMScheduler.step`` of
  its v-prediction, zero-terminal-SNR, trailing scheduler as if it were v.

In exact arithmetic u_{t->-1} = v: a_t x_t - x0 = b_t v. The acc step is therefore DDIM with
v-prediction; the conversion changes only float rounding (measured: 0 and 1e-16 in float64 at
t = 999 and 166; tests/sampling/test_pseudo_velocity.py). It is kept as its own scheduler so that
the method reproduces EchoMimic's arithmetic and so that other targets s can be tried.

The pipeline also passes ``t`` as the model's timestep and scales nothing (DDIM's
``scale_model_input`` is the identity). Note diffusers' DDIM quirk with trailing spacing: with 6
steps the timesteps are 999, 832, 666, 499, 332, 166 while each step goes to t - 1000 // 6, i.e.
999 -> 833, ..., 166 -> 0 (alphas_cumprod[0], not 1); EchoMimic inherits it and so does this class.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def alpha_at(alphas_cumprod: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
    """alphas_cumprod[t] for t >= 0 and 1 for t < 0 (``step_func.get_alpha``); t may be a tensor."""
    t = torch.as_tensor(timestep, device=alphas_cumprod.device)
    value = alphas_cumprod[t.clamp(min=0).long()]
    return torch.where(t < 0, torch.ones_like(value), value)


def _ab(alphas_cumprod: torch.Tensor, timestep, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) = (sqrt(alpha), sqrt(1 - alpha)) computed in the schedule's dtype, then cast to ``like``'s
    dtype (as step_func does), shaped to broadcast over (B, C, F, h, w)."""
    alpha = alpha_at(alphas_cumprod.to(like.device), timestep)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return (alpha ** 0.5).to(like.dtype).reshape(shape), ((1 - alpha) ** 0.5).to(like.dtype).reshape(shape)


def x0_from_v(v: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor, timestep) -> torch.Tensor:
    """x0 = a_t x_t - b_t v (``step_func.origin_by_velocity_and_sample``). Shapes: any (B, ...), t scalar or (B,)."""
    a_t, b_t = _ab(alphas_cumprod, timestep, sample)
    return a_t * sample - b_t * v


def pseudo_velocity(sample: torch.Tensor, pred_original: torch.Tensor, alphas_cumprod: torch.Tensor,
                    timestep, target_timestep=-1) -> torch.Tensor:
    """u = (x0 - (a_s a_t + b_s b_t) x_t) / (b_s a_t - a_s b_t), the velocity from x_t (at t) toward s
    (``step_func.psuedo_velocity_wrt_noisy_and_timestep``; s = -1 means alpha_s = 1).

    Shapes as ``sample``; t and s scalars or (B,). At s = t the denominator is 0 (inf/nan, as
    upstream): callers pass s != t.
    """
    a_t, b_t = _ab(alphas_cumprod, timestep, sample)
    a_s, b_s = _ab(alphas_cumprod, target_timestep, sample)
    return (pred_original - (a_s * a_t + b_s * b_t) * sample) / (b_s * a_t - a_s * b_t)


class PseudoVelocityScheduler(DDIMScheduler):
    """diffusers' ``DDIMScheduler`` whose ``step`` first replaces the model's v-prediction by
    EchoMimic-acc's pseudo-velocity toward ``target_timestep`` (see the module docstring).

    Configure it as EchoMimic does (``configs/inference/inference_v2.yaml``: linear betas
    0.00085..0.012, ``prediction_type="v_prediction"``, ``rescale_betas_zero_snr=True``,
    ``timestep_spacing="trailing"``, ``clip_sample=False``, ``steps_offset=1``: the project's
    ``HALLO_SCHEDULER``). ``set_timesteps``, ``timesteps``, ``scale_model_input`` are DDIM's.

    Attributes:
        target_timestep: s of the pseudo-velocity; EchoMimic-acc: -1.
    """

    target_timestep: int = -1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        """One acc step: v -> x0 -> u_{t->s} -> ``DDIMScheduler.step(u, t, x_t)``.

        Args:
            model_output: v-prediction, (B, C, F, h, w) (or any shape matching ``sample``).
            timestep: t (int or 0-dim tensor).
            sample: x_t.
            *args, **kwargs: DDIM's (eta, generator, return_dict, ...).

        Returns:
            DDIM's ``DDIMSchedulerOutput`` (``prev_sample``, ``pred_original_sample``) or tuple.

        Raises:
            ValueError: the scheduler is not configured for v-prediction (the conversion assumes it).
        """
        if self.config.prediction_type != "v_prediction":
            raise ValueError(f"the pseudo-velocity step converts a v-prediction; this scheduler predicts "
                             f"{self.config.prediction_type}")
        x0 = x0_from_v(model_output, sample, self.alphas_cumprod, timestep)
        u = pseudo_velocity(sample, x0, self.alphas_cumprod, timestep, self.target_timestep)
        return super().step(u, timestep, sample, *args, **kwargs)
