"""EchoMimic's whole-video generation with context windows, a mixin of :class:`~avatar_cli.pipelines.
unet.UNetPipeline` (moved from ``pipelines/unet.py``): all latent frames denoised together, each step's
prediction averaged over the overlapping windows that hold a frame (``sampling/context_windows.py``;
antgroup/echomimic ``src/pipelines/context.py`` and ``pipeline_echo_mimic.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import InputError
from ..options import RenderOptions
from ..progress import CountedDenoiser
from ..sampling.context_windows import WindowedDenoiser
from ..sampling.guidance import Conditions
from ..sampling.methods import sample
from .base import RenderStats


class ContextWindowsMixin:
    """EchoMimic's context-window schedule for :class:`UNetPipeline` (which supplies ``models``,
    ``conditions``, ``device``, ``dtype``, ``vae_scale``, ``decode_latents`` and ``to_uint8``)."""

    def frame_audio_tokens(self, features: torch.Tensor, frames: int, fps: float) -> torch.Tensor:
        """Whisper features (T_steps, L + 1, D) at 50 Hz -> per-frame tokens (frames, T_a, D) on the
        device: EchoMimic's window of Whisper steps around each frame (``frame_tokens`` of
        ``models/whisper_features.py``; 50 x 384 for Whisper-tiny)."""
        from ..models.whisper_features import frame_tokens

        return torch.as_tensor(frame_tokens(features, frames, fps)).to(self.device, self.dtype)

    def context_windows(self, step: int, frames: int, settings) -> list[list[int]]:
        """The frame indices of each context window at sampling step ``step`` (0 = the first
        timestep), as EchoMimic's ``uniform`` schedule (antgroup/echomimic ``src/pipelines/
        context.py``) shifted by 2 frames a step (``pipeline_echo_mimic.py``):
        ``sampling/context_windows.py``'s :func:`echomimic_windows`."""
        from ..sampling.context_windows import echomimic_windows

        return echomimic_windows(step, frames, settings.context_frames, settings.context_overlap)

    def _generate_windows(self, opts: RenderOptions, total: int, frame_tokens: torch.Tensor | None,
                          face_tokens: torch.Tensor, locator: torch.Tensor | None, z_ref: torch.Tensor,
                          reference, null_reference, scheduler, generator, stats: RenderStats, on_progress,
                          keep_latents) -> Iterator[np.ndarray]:
        """EchoMimic's frame schedule: all ``total`` latent frames denoised together, each step's
        prediction the average over the context windows that hold a frame (``WindowedDenoiser``),
        then decoded and yielded ``opts.clip_frames`` at a time.

        The method's guidance runs inside each window; as guidance is linear, combining per window
        and then averaging equals EchoMimic's averaging of both branches first."""
        settings, build, unet, method = self.models.settings, self.conditions, self.models.denoising_unet, opts.sampling
        latent = opts.size // self.vae_scale
        progress = stats.progress
        with stats("sampling"):
            method.set_timesteps(scheduler, opts.steps, None, list(opts.window_steps) if opts.window_steps else None)
            windows = sum(len(self.context_windows(k, total, settings)) for k in range(len(scheduler.timesteps)))
            progress.stage("sampling", method.branches * windows, "evaluations")
            progress.expect("frames", total, "frames")
            noise = torch.randn((1, z_ref.shape[1], total, latent, latent), generator=generator, device=self.device,
                                dtype=torch.float32)
            if settings.noise_clamp:  # EchoMimic's prepare_latents: clamp(-1.5, 1.5) * init_noise_sigma
                noise = noise.clamp(-settings.noise_clamp, settings.noise_clamp)
            latents = noise * float(getattr(scheduler, "init_noise_sigma", 1.0))

            def window_denoiser(index: list[int]):
                rows = torch.tensor(index)
                if frame_tokens is not None:
                    tokens = frame_tokens[rows.to(frame_tokens.device)][None]
                else:
                    raise InputError("context windows need per-frame audio tokens (the EchoMimic family)")
                features = None if locator is None else locator[:, :, :1].expand(-1, -1, len(index), -1, -1)
                conditions = Conditions(face_tokens, tokens, reference, None, features, None)
                null = build.null(conditions, null_reference) if method.guided else None
                return CountedDenoiser(method.denoiser(unet, conditions, null, opts.scales, opts.audio_weights),
                                       progress)

            denoiser = WindowedDenoiser(window_denoiser, lambda step: self.context_windows(step, total, settings))
            latents = sample(denoiser, latents, scheduler, generator)
            stats.evaluations += denoiser.evaluations
        if keep_latents is not None:
            keep_latents.append(latents)
        chunks = -(-total // opts.clip_frames)
        progress.stage("frames")
        for n in range(chunks):
            with stats("decode"):
                part = latents[:, :, n * opts.clip_frames:(n + 1) * opts.clip_frames]
                frames = self.to_uint8(self.decode_latents(part, opts.decode_batch_size, opts.decoder))
            progress.advance(len(frames))
            if on_progress is not None:
                on_progress(n + 1, chunks)
            yield frames
