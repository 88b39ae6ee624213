"""OSA-LCM's two training stages (OSA-LCM sec. 4).

Stage 1, Adv-LCM (Algorithm 1): consistency distillation from the teacher plus the avatar
discriminator's adversarial loss and the motion loss:

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,  t ~ U{k..999}, t' = t - k (skipping step k)
    x_t' = Phi(x_t, t, t'; teacher)   DDIM step with multi-CFG except the motion frames   (eq. 2)
    L_cd = d(f_theta(x_t, t), sg[f_theta(x_t', t')]),  d = pseudo-Huber                 (eq. 3)
    L_adv = -D(q(f_theta(x_t, t), s))  (hinge; or non-saturating)                         (eq. 5)
    L_mot = ||Delta f_theta - Delta x0||^2 over frames                                    (eqs. 7-8)
    L = L_cd + lambda_adv L_adv + lambda_mot L_mot                                        (eq. 9)

f_theta = c_skip(t) x + c_out(t) x0_hat (eq. 1, diffusers' LCM scalings). Only the temporal
(motion) modules train, so the target network is the student itself under stop-gradient (the
paper: no EMA needed). The discriminator (eq. 4) trains in alternate iterations on real clips and
the student's predictions, both noised to s drawn by the progressive forward process (eq. 6): s ~
U(0, s_max(i)), s_max falling linearly from ``disc_t_start`` to ``disc_t_end`` over training
(our reading of the garbled eq. 6: a harder task while the generator is weak).

Stage 2, EFT (Algorithm 2, eqs. 10-12): the student, given clip n noised to t in the high-noise
range [``eft_t_min``, 999], predicts clip n+1 (its conditions: clip n+1's audio, clip n's last
motion frames): L = d(f_theta(x_t(clip n), t), clip n+1) + the same adversarial and motion terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.guidance import Conditions, GuidedDenoiser
from .conditioning import Conditioner, NoiseSchedule, float32_copy
from .discriminator import AvatarDiscriminator
from .losses import discriminator_loss, generator_loss, motion_loss, pseudo_huber


@dataclass
class LCMConfig:
    """Settings of both stages. Loss weights and the GAN form are flags because the paper's eq. 9
    and eq. 4 are garbled (docs/distillation.md says why these defaults)."""

    skip: int = 20                     # k, the teacher's solver step
    guidance: tuple[float, float] = (6.5, 2.5)   # the solver's multi-CFG (cfg_a, cfg_r)
    huber_c: float | None = None
    gan_loss: str = "hinge"
    lambda_adv: float = 0.1
    lambda_motion: float = 1.0
    gen_noise_max: int = 100           # the generator's fake samples are noised to s ~ U(0, this)
    disc_t_start: int = 500
    disc_t_end: int = 100
    eft_t_min: int = 800
    train: str = "temporal"            # "temporal" (the paper) or "all"


class LCMStep:
    """Generator and discriminator steps of Adv-LCM (``stage="adv-lcm"``) or EFT (``stage="eft"``)."""

    def __init__(self, teacher_models, device, dtype, config: LCMConfig, stage: str, total_steps: int,
                 student=None, seed: int = 0):
        from diffusers import LCMScheduler

        if stage not in ("adv-lcm", "eft"):
            raise ValueError(f"unknown OSA-LCM stage {stage!r} (adv-lcm or eft)")
        self.models, self.config, self.stage = teacher_models, config, stage
        self.teacher = teacher_models.denoising_unet.requires_grad_(False).eval()
        if student is None:  # Adv-LCM starts from the teacher (EFT from the Adv-LCM student)
            student = float32_copy(self.teacher)
        self.student = student.to(device)
        self.method = "osa-lcm"
        self.conditioner = Conditioner(teacher_models, device, dtype)
        self.schedule = NoiseSchedule(teacher_models.scheduler_config)
        self.lcm = LCMScheduler(**{k: v for k, v in teacher_models.scheduler_config.items()
                                   if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                            "timestep_scaling")})
        with torch.random.fork_rng(devices=[]):  # the heads' initialisation is part of the run's seed
            torch.manual_seed(seed)
            self.discriminator = AvatarDiscriminator(self.teacher).to(device)
        self.device, self.dtype, self.total = device, dtype, max(1, total_steps)

    def trainable(self) -> list[torch.nn.Parameter]:
        if self.config.train == "all":
            return list(self.student.parameters())
        return [p for n, p in self.student.named_parameters() if ".motion_modules." in n]

    def _consistency(self, unet, x: torch.Tensor, t: int, cond) -> torch.Tensor:
        """f(x, t) = c_skip x + c_out x0_hat (OSA-LCM eq. 1)."""
        out = unet(x.to(self.dtype), t, **cond.unet_kwargs()).float()
        _, x0 = self.schedule.to_eps_x0(out, x, t)
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        return float(c_skip) * x + float(c_out) * x0

    def _noisy(self, x: torch.Tensor, s: int, generator) -> torch.Tensor:
        return self.schedule.add_noise(x, torch.randn(x.shape, generator=generator).to(x.device), s)

    def _source(self, example, generator):
        """(x_t, t, clean target, conditions) of a stage."""
        cond = self.conditioner(example)
        target = example["latents"].to(self.device, torch.float32)
        noise = torch.randn(target.shape, generator=generator).to(self.device)
        if self.stage == "eft":
            t = int(torch.randint(self.config.eft_t_min, 1000, (1,), generator=generator))
            source = example["previous"].to(self.device, torch.float32)       # clip n -> predicts clip n+1
            return self.schedule.add_noise(source, noise, t), t, target, cond
        t = int(torch.randint(self.config.skip, 1000, (1,), generator=generator))
        return self.schedule.add_noise(target, noise, t), t, target, cond

    def generator_step(self, student, example, generator, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        xt, t, target, cond = self._source(example, generator)
        prediction = self._consistency(student, xt, t, cond)
        if self.stage == "eft":
            distance = pseudo_huber(prediction, target, cfg.huber_c).mean()
        else:
            with torch.no_grad():  # eq. 2: the teacher's DDIM step with multi-CFG (motion frames kept)
                denoiser = GuidedDenoiser(self.teacher, cond, "multi-cfg", cfg.guidance, self.conditioner.null(cond))
                eps, x0 = self.schedule.to_eps_x0(denoiser(xt, t), xt, t)
                previous = self.schedule.ddim(xt, eps, x0, t - cfg.skip)
                goal = self._consistency(self.student, previous, t - cfg.skip, cond)  # sg[f_theta], no EMA
            distance = pseudo_huber(prediction, goal, cfg.huber_c).mean()
        s = int(torch.randint(0, cfg.gen_noise_max + 1, (1,), generator=generator))
        logits = self._judge(self._noisy(prediction, s, generator).to(self.dtype), s, cond)
        adversarial = generator_loss(logits.float(), cfg.gan_loss).mean()
        motion = motion_loss(prediction, target).mean()
        loss = distance + cfg.lambda_adv * adversarial + cfg.lambda_motion * motion
        return {"loss": loss, "distance": distance.detach(), "adversarial": adversarial.detach(),
                "motion": motion.detach(), "t": torch.tensor(float(t))}

    def _judge(self, latents: torch.Tensor, s: int, cond) -> torch.Tensor:
        """D's logits for the generator's loss: gradients reach the latents, not D's heads (their
        parameters enter detached, so D is neither updated nor synchronised by this step)."""
        from torch.func import functional_call

        detached = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, detached, (latents, s), cond.unet_kwargs())

    def disc_noise_max(self, step: int) -> int:
        """eq. 6, progressive forward process: the largest discriminator noise level at ``step``."""
        cfg = self.config
        return int(round(cfg.disc_t_start + (cfg.disc_t_end - cfg.disc_t_start) * min(1.0, step / self.total)))

    def discriminator_step(self, discriminator, example, generator, step: int) -> dict[str, torch.Tensor]:
        """eq. 4: D learns real clips from the student's outputs, both noised to s ~ U(0, s_max(step))."""
        xt, t, target, cond = self._source(example, generator)
        with torch.no_grad():
            fake = self._consistency(self.student, xt, t, cond)
        s = int(torch.randint(0, self.disc_noise_max(step) + 1, (1,), generator=generator))
        # real and fake as one batch: one discriminator forward per backward, as data parallel needs
        latents = torch.cat([self._noisy(target, s, generator), self._noisy(fake, s, generator)]).to(self.dtype)
        logits = discriminator(latents, s, **Conditions.cat([cond, cond]).unet_kwargs()).float()
        real_logits, fake_logits = logits.chunk(2)
        loss = discriminator_loss(real_logits, fake_logits, self.config.gan_loss).mean()
        accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
        return {"loss": loss, "disc_loss": loss.detach(), "disc_accuracy": accuracy.detach(),
                "disc_noise_max": torch.tensor(float(self.disc_noise_max(step)))}
