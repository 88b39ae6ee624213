"""Training a teacher: the multi-step base model's denoising loss (FADA eq. 1).

L = E ||eps - eps_theta(z_t, t, c)||^2 (or the v target for v-prediction models), with the audio
and the reference dropped at random (each with probability ``drop``) so that the model learns the
null conditions multi-CFG needs. The students' trainings start from such a teacher; the test suite
trains a tiny one on synthetic videos.
"""

from __future__ import annotations

import dataclasses

import torch

from .conditioning import Conditioner, NoiseSchedule


class TeacherStep:
    """One training step of the teacher's denoising U-Net (all its parameters train; the reference
    net, projectors, VAE and audio encoder stay frozen).

    Args:
        models: :class:`AvatarModels` to train (its denoising U-Net is trained in place, in float32).
        drop: probability of dropping the audio, and independently the reference, per sample.
    """

    discriminator = None

    def __init__(self, models, device, dtype, drop: float = 0.1):
        self.models, self.drop = models, drop
        self.student = models.denoising_unet.to(device, torch.float32)
        self.conditioner = Conditioner(models, device, dtype)
        self.schedule = NoiseSchedule(models.scheduler_config)
        self.device, self.dtype = device, dtype
        self.method = "hallo" if models.settings.default_method == "hallo" else "teacher"

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.student.parameters())

    def generator_step(self, unet, example: dict, generator: torch.Generator, step: int) -> dict[str, torch.Tensor]:
        x0 = example["latents"].to(self.device, torch.float32)
        cond = self.conditioner(example)
        null = self.conditioner.null(cond)
        if float(torch.rand((), generator=generator)) < self.drop:
            cond = dataclasses.replace(cond, audio_embeds=null.audio_embeds)
        if float(torch.rand((), generator=generator)) < self.drop:
            cond = dataclasses.replace(cond, reference_features=null.reference_features,
                                       conditioning_features=null.conditioning_features)
        t = int(torch.randint(0, 1000, (1,), generator=generator))
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        xt = self.schedule.add_noise(x0, noise, t)
        target = noise
        if self.schedule.prediction_type == "v_prediction":
            a = self.schedule.alpha(t, x0)
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        out = unet(xt.to(self.dtype), t, **cond.unet_kwargs()).float()
        loss = ((out - target) ** 2).mean()
        return {"loss": loss, "denoise": loss.detach()}
