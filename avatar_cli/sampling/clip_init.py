"""Clip initialisation: where the sampling of each clip starts (OSA-LCM sec. 4.2, supplement sec. 7).

- ``gaussian``: x ~ N(0, I) at t = T - 1 = 999 for every clip (the paper's default, best FVD).
- ``rolling``: x = sqrt(a_tau) z_prev + sqrt(1 - a_tau) eps, sampled from t = tau, where z_prev
  are the previous clip's generated latents (clip 0: the reference latent repeated, which ghosts).
  This is the SDEdit-style start that EFT (OSA-LCM eqs. 10-12) trains the model for.
- ``combined-rolling``: gaussian for clip 0, rolling afterwards (identity consistency for FVD).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INIT_MODES = ("gaussian", "rolling", "combined-rolling")


def initial_latents(
    mode: str,
    clip_index: int,
    noise: torch.Tensor,
    previous_latents: torch.Tensor | None,
    reference_latent: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise_level: int,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, int]:
    """Starting latents and starting timestep of one clip.

    Args:
        mode: one of :data:`INIT_MODES`.
        clip_index: n, 0 for the first clip of the video.
        noise: eps, (B, 4, F, h, w) standard normal.
        previous_latents: z_prev, the previous clip's generated latents (B, 4, F', h, w), or None.
        reference_latent: z_ref, the portrait latent (B, 4, h, w).
        alphas_cumprod: (T,) the training schedule's cumulative alphas.
        noise_level: tau in [1, T - 1], the rolling start timestep.

    Returns:
        (latents (B, 4, F, h, w), start timestep).

    Raises:
        ValueError: unknown mode.
    """
    import torch  # here, not at the top: the modes are read before any model loads

    if mode not in INIT_MODES:
        raise ValueError(f"unknown init mode {mode!r}; choose one of {', '.join(INIT_MODES)}")
    if mode == "gaussian" or (mode == "combined-rolling" and clip_index == 0):
        return noise, num_train_timesteps - 1
    frames = noise.shape[2]
    source = reference_latent[:, :, None].expand(-1, -1, frames, -1, -1) if previous_latents is None \
        else previous_latents[:, :, -frames:]
    if source.shape[2] < frames:  # paper sec. 4.2: repeat the reference latent in front to fill
        fill = reference_latent[:, :, None].expand(-1, -1, frames - source.shape[2], -1, -1)
        source = torch.cat([fill, source], dim=2)
    alpha = alphas_cumprod[noise_level].to(noise.device, torch.float64)
    latents = alpha.sqrt() * source.double() + (1 - alpha).sqrt() * noise.double()
    return latents.to(noise.dtype), noise_level
