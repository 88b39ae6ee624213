"""PeRFlow: piecewise rectified flow sampling (FADA eqs. 2-5, after PeRFlow, Yan et al. 2024).

diffusers has no PeRFlow scheduler; this one has diffusers' interface (``set_timesteps``,
``step`` returning an output with ``prev_sample``) and follows the PeRFlow reference scheduler's
conventions (restated in docs/sampling.md, "PeRFlow"):

- time t in [0, 1], t = 1 is noise; K equal windows [1, 1-1/K], ..., [1/K, 0];
- steps per window: n // K each, the n % K extra steps go to the windows nearest t = 1
  (n = 6, K = 4 -> 2, 2, 1, 1, FADA's "Ours-Fast"); inside a window the points are equally spaced
  from its start, its end excluded; the model sees timestep int(t * 1000) (1000 at the start);
- the model predicts epsilon in the DDIM form of FADA eq. 4: for the window [t_s, t_e] with
  a_s = alphas_cumprod[int(1000 t_s) - 1], a_e = alphas_cumprod[max(int(1000 t_e) - 1, 0)],
  lambda_s = sqrt(a_e / a_s), eta_s = sqrt(1 - a_e) - sqrt(a_e (1 - a_s) / a_s);
- at a point t_c: D = lambda_s (t_c - t_s) + (t_e - t_c), lambda_t = lambda_s (t_e - t_s) / D,
  eta_t = eta_s (t_e - t_c) / D; predicted window end z_e = lambda_t z + eta_t eps;
  velocity v = (z_e - z) / (t_e - t_c); z_next = z + (t_next - t_c) v, so the last step of a window
  lands exactly on z_e. Deterministic; no final denoising step; the start is N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput


@dataclass
class PeRFlowSchedulerOutput(BaseOutput):
    """``prev_sample``: latents at the next point; ``pred_window_end``: z_e of the current window."""

    prev_sample: torch.Tensor
    pred_window_end: torch.Tensor


def window_split(num_inference_steps: int, num_windows: int) -> list[int]:
    """Steps per window, nearest t = 1 first: n // K each, the n % K extra ones to the first windows."""
    base, extra = divmod(num_inference_steps, num_windows)
    return [base + (1 if k < extra else 0) for k in range(num_windows)]


class PeRFlowScheduler(SchedulerMixin, ConfigMixin):
    """Piecewise rectified flow sampler with DDIM-form epsilon prediction (see module docstring).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule: the training noise schedule
            (SD1.5's scaled-linear by default); alphas_cumprod are computed in float64.
        num_windows: K, the number of time windows (FADA: 4).
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", num_windows: int = 4):
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            raise NotImplementedError(f"beta_schedule {beta_schedule!r} is not supported by PeRFlowScheduler")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.init_noise_sigma = 1.0
        self.window_steps: list[int] = []
        self.points: list[Fraction] = []
        self.timesteps = torch.tensor([], dtype=torch.long)
        self._step_index = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      window_steps: list[int] | None = None) -> None:
        """Choose the sampling points.

        Args:
            num_inference_steps: n, split over the windows by :func:`window_split`.
            window_steps: explicit steps per window, nearest t = 1 first (e.g. [2, 2, 1, 1]);
                overrides ``num_inference_steps``.

        Raises:
            ValueError: a window would get no step, or the split has the wrong length.
        """
        k = self.config.num_windows
        steps = list(window_steps) if window_steps is not None else window_split(num_inference_steps, k)
        if len(steps) != k or any(s < 1 for s in steps):
            raise ValueError(f"PeRFlow needs at least one step in each of its {k} windows (got {steps})")
        self.window_steps = steps
        self.points = []
        for window, count in enumerate(steps):
            t_start, t_end = Fraction(k - window, k), Fraction(k - window - 1, k)
            self.points += [t_start + (t_end - t_start) * i / count for i in range(count)]
        self.timesteps = torch.tensor([int(t * self.config.num_train_timesteps) for t in self.points],
                                      dtype=torch.long, device=device)
        self._step_index = 0

    @property
    def num_inference_steps(self) -> int:
        return len(self.points)

    def alpha_index(self, t: Fraction | float) -> int:
        """The alphas_cumprod index of time t in [0, 1]: int(1000 t) - 1, clamped to 0 at t = 0."""
        return max(int(Fraction(t).limit_denominator(10**6) * self.config.num_train_timesteps) - 1, 0)

    def window(self, k: int) -> tuple[Fraction, Fraction, torch.Tensor, torch.Tensor]:
        """(t_s, t_e, lambda_s, eta_s) of window k in 1..K, k = K nearest t = 1 (FADA eq. 4):
        lambda_s = sqrt(a_e / a_s), eta_s = sqrt(1 - a_e) - sqrt(a_e (1 - a_s) / a_s), float64.
        The sampler's steps and FADA's distillation (``training/fada.py``) both use these."""
        big_k = self.config.num_windows
        t_s, t_e = Fraction(k, big_k), Fraction(k - 1, big_k)
        a_s, a_e = self.alphas_cumprod[self.alpha_index(t_s)], self.alphas_cumprod[self.alpha_index(t_e)]
        lambda_s = torch.sqrt(a_e / a_s)
        eta_s = torch.sqrt(1 - a_e) - torch.sqrt(a_e * (1 - a_s) / a_s)
        return t_s, t_e, lambda_s, eta_s

    def _point(self, index: int) -> tuple[float, float, float]:
        """(lambda_t, eta_t, frac) at sampling point ``index``: z_e = lambda_t z + eta_t eps and
        z_next = z + frac (z_e - z), frac = (t_next - t_c) / (t_e - t_c). float64 maths."""
        t_c = self.points[index]
        k = self.config.num_windows - min(int((1 - t_c) * self.config.num_windows), self.config.num_windows - 1)
        t_s, t_e, lambda_s, eta_s = self.window(k)
        t_next = self.points[index + 1] if index + 1 < len(self.points) else Fraction(0)
        d = lambda_s * float(t_c - t_s) + float(t_e - t_c)
        lambda_t = lambda_s * float(t_e - t_s) / d
        eta_t = eta_s * float(t_e - t_c) / d
        return lambda_t.item(), eta_t.item(), float((t_next - t_c) / (t_e - t_c))

    def coefficients(self, index: int) -> tuple[float, float]:
        """(A, B) with z_next = A z + B eps at sampling point ``index``."""
        lambda_t, eta_t, frac = self._point(index)
        return 1 + frac * (lambda_t - 1), frac * eta_t

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True) -> PeRFlowSchedulerOutput | tuple:
        """Advance from the current point to the next (FADA eqs. 4-5).

        Args:
            model_output: eps, same shape as ``sample``.
            timestep: the current model timestep (checked against the schedule).
            sample: z at the current point.

        Raises:
            ValueError: ``timestep`` is not the schedule's current one.
        """
        index = self._step_index
        if int(timestep) != int(self.timesteps[index]):
            raise ValueError(f"PeRFlow step {index} expects timestep {int(self.timesteps[index])}, got {int(timestep)}")
        lambda_t, eta_t, frac = self._point(index)
        window_end = lambda_t * sample + eta_t * model_output       # FADA eq. 4, DDIM form
        prev_sample = sample + frac * (window_end - sample)          # straight flow inside the window
        self._step_index += 1
        if not return_dict:
            return (prev_sample, window_end)
        return PeRFlowSchedulerOutput(prev_sample=prev_sample, pred_window_end=window_end)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
