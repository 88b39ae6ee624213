"""Sampling methods: each is one object that owns its scheduler, timesteps, step bounds, guidance
rule and what it needs of the weights; the clip loop (``pipelines/unet.py``) and the trainings
(``training/``) only call it.

| name | paper | scheduler | steps | guidance | NFE per clip |
|---|---|---|---|---|---|
| osa-lcm | OSA-LCM | LCM from t=999 (or tau) | 1 | none | 1 |
| adv-lcm | OSA-LCM sec. 4.1 | LCM | 2 (or 4) | none | 2 / 4 |
| fada | FADA "Ours-Fast" | PeRFlow, 4 windows, 2+2+1+1 | 6 | CFG tokens (eq. 10), 6.5 / 2.0 | 6 |
| fada-balanced | FADA "Ours-Balanced" | PeRFlow | 6 | multi-CFG (eq. 9), 6.5 / 2.5 | 18 |
| teacher | FADA teacher / OSA-LCM base | DDIM | 25 | multi-CFG (eq. 9), 6.5 / 2.5, batch of 3 | 75 |
| hallo | Hallo | DDIM (its v-prediction, zero-SNR, trailing schedule) | 40 | CFG 3.5, batch of 2 | 80 |
| ditto | Ditto | DDIM eta 1 on the cosine schedule over 80-frame motion windows (``motion_ddim.py``) | 10 | CFG 2, two calls | 20 per window |
| echomimic | EchoMimic | DDIM (Hallo's v-prediction, zero-SNR, trailing schedule) | 30 | CFG 2.5, batch of 2 | 60 per window |
| echomimic-acc | EchoMimic "acc" | DDIM fed EchoMimic-acc's pseudo-velocity (``pseudo_velocity.py``) | 6 | none (CFG 1) | 6 per window |

The echomimic methods sample EchoMimic's whole-video latents over its context windows
(``context_windows.py``): "per window" is per 12-frame window, and the windows overlap (F frames
take about F / 9 windows per step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import torch

# The table below is read when options are checked, before any model loads: torch and diffusers
# are imported by the methods that use them, so that bad input is reported at once.

PERFLOW_WINDOWS = 4  # FADA's K


@dataclass(frozen=True)
class Method:
    """A sampling method.

    Attributes:
        name: the ``--method`` name.
        paper: where it comes from.
        scheduler: "lcm", "perflow", "ddim", "pseudo-velocity" (diffusers' or ours, over U-Net
            latents; "pseudo-velocity" is EchoMimic-acc's DDIM step, ``sampling/pseudo_velocity.py``)
            or "motion-ddim" (Ditto's DiT over motion windows, ``sampling/motion_ddim.py``).
        default_steps: num_inference_steps when none is given.
        guidance: "none", "multi-cfg", "cfg-tokens" or "cfg" (``sampling/guidance.py``).
        scales: default guidance scales: (cfg_a, cfg_r) for multi-cfg and cfg-tokens, (s,) for cfg.
        family: the weights it needs ("osa-lcm": any U-Net; "hallo": a U-Net with a face locator;
            "ditto": Ditto's motion DiT; "echomimic": EchoMimic's U-Nets with their face locator).
    """

    name: str
    paper: str
    scheduler: str
    default_steps: int
    guidance: str
    scales: tuple[float, ...] = ()
    family: str = "osa-lcm"

    # ------------------------------------------------------------ what it costs and accepts
    @property
    def branches(self) -> int:
        """Model evaluations per step: 3 for multi-CFG, 2 for CFG, else 1."""
        return {"multi-cfg": 3, "cfg": 2}.get(self.guidance, 1)

    def nfe(self, num_inference_steps: int) -> int:
        """Denoising-U-Net evaluations per clip."""
        return num_inference_steps * self.branches

    @property
    def step_range(self) -> tuple[int, int]:
        """(fewest, most) num_inference_steps: PeRFlow needs a step in each of its 4 windows."""
        return {"lcm": (1, 50), "perflow": (PERFLOW_WINDOWS, 100), "ddim": (1, 1000), "pseudo-velocity": (1, 1000),
                "motion-ddim": (1, 100)}[self.scheduler]

    @property
    def supports_rolling(self) -> bool:
        """Rolling starts (from a timestep tau < 999): LCM (tau is the first step) and DDIM (the
        schedule starts at its first timestep <= tau, SDEdit; also EchoMimic-acc's DDIM step); not
        PeRFlow, whose windows start at t=1."""
        return self.scheduler in ("lcm", "ddim", "pseudo-velocity")

    @property
    def num_windows(self) -> int | None:
        """PeRFlow's window count K (None for the other schedulers)."""
        return PERFLOW_WINDOWS if self.scheduler == "perflow" else None

    def check_weights(self, denoising_unet_config, scheduler_config: dict, has_face_locator: bool) -> None:
        """Raise :class:`InputError` when the weights cannot be sampled by this method."""
        if self.guidance == "cfg-tokens" and not denoising_unet_config.cfg_tokens:
            raise InputError(f"--method {self.name} needs a FADA student with CFG-token layers and these weights "
                             f"have none; distil one, or pass --add-cfg-layers (zero-initialised: no guidance)")
        if self.family == "hallo" and not has_face_locator:
            raise InputError(f"--method {self.name} needs Hallo's weights (with a face locator); convert them with "
                             f"'avatar weights convert --from hallo' and pass --weights DIR")
        if self.family == "echomimic" and (not has_face_locator
                                           or getattr(denoising_unet_config, "audio_attention", "blocks") != "attn2"):
            raise InputError(f"--method {self.name} needs EchoMimic's weights (audio in attn2, a face locator); convert them "
                             f"with 'avatar weights convert --from echomimic' and pass --weights DIR")
        if self.scheduler == "pseudo-velocity" and scheduler_config.get("prediction_type", "epsilon") != "v_prediction":
            raise InputError(f"--method {self.name} converts a v-prediction (EchoMimic-acc); these weights predict "
                             f"{scheduler_config.get('prediction_type', 'epsilon')}")
        if self.scheduler == "perflow" and scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise InputError(f"--method {self.name} samples epsilon-prediction students; these weights predict "
                             f"{scheduler_config['prediction_type']}")

    # ------------------------------------------------------------ scheduler and timesteps
    def make_scheduler(self, training_schedule: dict):
        """The method's scheduler on the model's training noise schedule (unknown keys dropped)."""
        from diffusers import DDIMScheduler, LCMScheduler

        from .perflow import PeRFlowScheduler
        from .pseudo_velocity import PseudoVelocityScheduler

        klass = {"lcm": LCMScheduler, "ddim": DDIMScheduler, "perflow": PeRFlowScheduler,
                 "pseudo-velocity": PseudoVelocityScheduler}[self.scheduler]
        accepted = set(inspect.signature(klass.__init__).parameters)
        config = {k: v for k, v in training_schedule.items() if k in accepted}
        if self.scheduler == "perflow":
            config["num_windows"] = PERFLOW_WINDOWS
        return klass(**config)

    def set_timesteps(self, scheduler, num_inference_steps: int, start: int | None = None,
                      window_steps: list[int] | None = None) -> list[int]:
        """Set the scheduler's timesteps for one clip and return them.

        Args:
            num_inference_steps: steps of the method.
            start: a rolling start timestep tau (LCM and DDIM); None = from pure noise.
            window_steps: PeRFlow steps per window (overrides the even split).

        Raises:
            ValueError: a DDIM rolling start below every timestep of the schedule.
        """
        import torch
        from diffusers.utils import logging as diffusers_logging

        if self.scheduler == "perflow":
            scheduler.set_timesteps(num_inference_steps, window_steps=window_steps)
        elif self.scheduler in ("ddim", "pseudo-velocity"):
            scheduler.set_timesteps(num_inference_steps)
            if start is not None:  # rolling (SDEdit): begin at the schedule's first timestep <= tau
                kept = [t for t in scheduler.timesteps if int(t) <= start]
                if not kept:
                    raise ValueError(f"no DDIM timestep at or below {start}")
                scheduler.timesteps = torch.stack(kept)
        else:
            scheduler.set_timesteps(num_inference_steps)
            timesteps = [int(t) for t in scheduler.timesteps]
            if start is not None and start < timesteps[0]:
                # rolling: tau replaces the first timestep, later ones at or above it are dropped
                timesteps = [start] + [t for t in timesteps[1:] if t < start]
            previous = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # a custom first timestep is intended here
            try:
                scheduler.set_timesteps(timesteps=timesteps)
            finally:
                diffusers_logging.set_verbosity(previous)
        return [int(t) for t in scheduler.timesteps]

    # ------------------------------------------------------------ guidance
    def denoiser(self, unet, conditions, null, scales: tuple[float, ...],
                 region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        """The U-Net as this method's sampler sees it: a :class:`GuidedDenoiser` with its rule, its
        branches batched (multi-CFG: 3, CFG: 2) and combined."""
        from .guidance import GuidedDenoiser

        return GuidedDenoiser(unet, conditions, self.guidance, scales, null if self.guided else None, region_weights)

    @property
    def guided(self) -> bool:
        """Whether the method needs the null conditions (multi-CFG, CFG)."""
        return self.guidance in ("multi-cfg", "cfg")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("osa-lcm", "OSA-LCM (one-step)", "lcm", 1, "none"),
    Method("adv-lcm", "OSA-LCM sec. 4.1 Adv-LCM", "lcm", 2, "none"),
    Method("fada", 'FADA "Ours-Fast"', "perflow", 6, "cfg-tokens", (6.5, 2.0)),
    Method("fada-balanced", 'FADA "Ours-Balanced"', "perflow", 6, "multi-cfg", (6.5, 2.5)),
    Method("teacher", "FADA teacher / OSA-LCM base (DDIM)", "ddim", 25, "multi-cfg", (6.5, 2.5)),
    Method("hallo", "Hallo (DDIM, CFG)", "ddim", 40, "cfg", (3.5,), family="hallo"),
    Method("ditto", "Ditto (motion DiT, DDIM eta 1, CFG 2)", "motion-ddim", 10, "cfg", (2.0,), family="ditto"),
    # EchoMimic (antgroup/echomimic infer_audio2vid.py / infer_audio2vid_acc.py): DDIM 30 steps CFG 2.5 on
    # Hallo's scheduler kwargs; the acc weights 6 steps without guidance through the pseudo-velocity step.
    Method("echomimic", "EchoMimic (DDIM, CFG 2.5, context windows)", "ddim", 30, "cfg", (2.5,), family="echomimic"),
    Method("echomimic-acc", "EchoMimic-acc (6 steps, pseudo-velocity DDIM, no CFG)", "pseudo-velocity", 6, "none",
           family="echomimic"),
)}


def sample(model: Callable[["torch.Tensor", int], "torch.Tensor"], latents: "torch.Tensor", scheduler,
           generator: "torch.Generator | None" = None) -> "torch.Tensor":
    """Run a scheduler's timesteps over a model; returns the final latents.

    One loop for every method: ``latents = scheduler.step(model(latents, t), t, latents).prev_sample``
    (for LCM the last step's ``prev_sample`` is its consistency output f, OSA-LCM eq. 1).

    Args:
        model: (latents, t) -> epsilon, e.g. a ``GuidedDenoiser``.
        latents: x at the first timestep, e.g. (B, 4, F, h, w).
        scheduler: a scheduler after :meth:`Method.set_timesteps`.
        generator: LCM/DDIM noise between steps.
    """
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        latents = scheduler.step(model(latents, int(t)), t, latents, **extra).prev_sample
    return latents
