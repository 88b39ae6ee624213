"""FADA's distillation: mixed-supervised PeRFlow with multi-CFG learnt by CFG tokens (FADA sec. 3).

For one sample (clip latents z0, conditions c, noise eps) and guidance scales (cfg_a, cfg_r) drawn
from their ranges:

    window k ~ U{1..K}, [t_s, t_e] = [k/K, (k-1)/K]            (t = 1 is noise; K = 4)
    z_s  = sqrt(a_s) z0 + sqrt(1 - a_s) eps                    window start from the data marginal
    z_e  = Phi(z_s, t_s, t_e; teacher, multi-CFG)              window end, DDIM solver   (eq. 2)
    z_e* = sqrt(a_e) z0 + sqrt(1 - a_e) eps                    ground-truth window end   (sec. 3.2)
    t ~ U(t_e, t_s];  z_t = z_s + (z_e - z_s)(t_s - t)/(t_s - t_e)  and z_t* likewise  (eq. 3)
    eps_hat = (z_e - lambda_s z_s) / eta_s,  eps* from z_e*      target noise            (eq. 4)
    L_teacher = ||eps_hat - eps_stu(z_t, t, c, cfg)||^2                                   (eq. 5)
    L_gt      = ||eps*    - eps_stu(z_t*, t, c, cfg)||^2                                  (eq. 6)
    R = L_gt / L_teacher,  W = W(R)  (per sample, no gradient)                            (eq. 8)
    L = L_teacher + W L_gt                                                                (eq. 7)

a, lambda_s and eta_s are those of ``sampling/perflow.py`` (alphas_cumprod at int(1000 t) - 1 at
window boundaries, the last end clamped to index 0), so the sampler walks exactly the straight
lines trained here; the student sees timestep int(1000 t). The student is the teacher plus CFG
tokens and CFG layers (eq. 10, ``DenoisingUNet3D.with_cfg_layers``); all its weights train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.guidance import Conditions, GuidedDenoiser
from ..sampling.methods import METHODS
from ..sampling.perflow import PeRFlowScheduler
from .conditioning import Conditioner, NoiseSchedule, float32_copy
from .losses import mixed_supervision_weight


@dataclass
class FADAConfig:
    """Settings of FADA's distillation. From the paper: K = 4 windows and eq. 8's W0, s, R_p, R_d.
    Ours (the paper does not give them): 8 teacher DDIM steps per window, 4 tokens per CFG set,
    and the (cfg_a, cfg_r) ranges, centred on the inference defaults (6.5, 2.0-2.5) so the tokens
    learn the neighbourhood they are used in (docs/distillation.md)."""

    num_windows: int = 4                         # K
    solver_steps: int = 8                        # DDIM steps of the teacher inside one window
    cfg_audio: tuple[float, float] = (4.5, 8.5)  # cfg_a drawn uniformly from this range per sample
    cfg_ref: tuple[float, float] = (1.5, 3.0)    # cfg_r likewise
    cfg_tokens: int = 4
    mixed: bool = True                           # add W * L_gt (False: plain PeRFlow distillation)
    w0: float = 0.2
    s: float = 0.25
    r_peak: float = 30.0
    r_dead: float = 100.0
    train: str = "all"                           # "all" or "temporal"


class FADAStep:
    """One generator step of FADA's distillation (no discriminator).

    Args:
        teacher_models: the teacher's :class:`AvatarModels` (frozen here).
        student: the student's denoising U-Net (with CFG layers); None: the teacher's plus CFG
            layers (FADA sec. 4.1: "initialized from the teacher model and integrated with CFG
            learnable tokens and CFG layers").
    """

    discriminator = None

    def __init__(self, teacher_models, device, dtype, config: FADAConfig, student=None, seed: int = 0):
        self.models, self.config = teacher_models, config
        self.teacher = teacher_models.denoising_unet.requires_grad_(False).eval()
        if student is None:
            student = float32_copy(self.teacher)
        if not student.config.cfg_tokens:
            with torch.random.fork_rng(devices=[]):  # the CFG tokens' initialisation is part of the run's seed
                torch.manual_seed(seed)
                student = student.with_cfg_layers(config.cfg_tokens)
        self.student = student.to(device)
        self.conditioner = Conditioner(teacher_models, device, dtype)
        self.schedule = NoiseSchedule(teacher_models.scheduler_config)
        self.perflow = METHODS["fada"].make_scheduler(teacher_models.scheduler_config)
        if self.perflow.config.num_windows != config.num_windows:
            self.perflow = PeRFlowScheduler.from_config(self.perflow.config, num_windows=config.num_windows)
        self.device, self.dtype = device, dtype
        self.method = "fada"

    def trainable(self) -> list[torch.nn.Parameter]:
        if self.config.train == "all":
            return list(self.student.parameters())
        return [p for n, p in self.student.named_parameters()
                if ".motion_modules." in n or ".cfg_modules." in n or n.startswith("cfg_embedding.")]

    def _index(self, t: float) -> int:
        """alphas_cumprod index of a window boundary t (the sampler's own rule)."""
        return self.perflow.alpha_index(t)

    def window(self, k: int) -> tuple[float, float, float, float]:
        """(t_s, t_e, lambda_s, eta_s) of window k in 1..K (FADA eq. 4's coefficients), from the
        PeRFlow scheduler that samples the student, so training and sampling walk the same lines."""
        t_s, t_e, lambda_s, eta_s = self.perflow.window(k)
        return float(t_s), float(t_e), float(lambda_s), float(eta_s)

    @torch.no_grad()
    def solve(self, z: torch.Tensor, t_s: float, t_e: float, cond: Conditions, scales) -> torch.Tensor:
        """FADA eq. 2: the teacher's DDIM solver with 3-way multi-CFG from t_s to t_e."""
        null = self.conditioner.null(cond)
        denoiser = GuidedDenoiser(self.teacher, cond, "multi-cfg", tuple(scales), null)
        points = torch.linspace(self._index(t_s), self._index(t_e), self.config.solver_steps + 1).round().long()
        for i in range(self.config.solver_steps):
            t, t_next = int(points[i]), int(points[i + 1])
            eps, x0 = self.schedule.to_eps_x0(denoiser(z, t).float(), z, t)
            z = self.schedule.ddim(z, eps, x0, t_next)
        return z

    def generator_step(self, student, example: dict, generator: torch.Generator, step: int) -> dict:
        cfg = self.config
        z0 = example["latents"].to(self.device, torch.float32)
        cond = self.conditioner(example)
        k = int(torch.randint(1, cfg.num_windows + 1, (1,), generator=generator))
        t_s, t_e, lambda_s, eta_s = self.window(k)
        noise = torch.randn(z0.shape, generator=generator).to(self.device)
        z_s = self.schedule.add_noise(z0, noise, self._index(t_s))
        z_e_gt = self.schedule.add_noise(z0, noise, self._index(t_e))
        u = float(torch.rand((), generator=generator))   # t = t_s - u (t_s - t_e), u in [0, 1)
        scales = (cfg.cfg_audio[0] + (cfg.cfg_audio[1] - cfg.cfg_audio[0]) * float(torch.rand((), generator=generator)),
                  cfg.cfg_ref[0] + (cfg.cfg_ref[1] - cfg.cfg_ref[0]) * float(torch.rand((), generator=generator)))
        z_e = self.solve(z_s, t_s, t_e, cond, scales)
        t = t_s - u * (t_s - t_e)
        timestep = int(t * len(self.schedule.alphas))
        target = (z_e - lambda_s * z_s) / eta_s                      # eq. 4
        inputs, targets = [z_s + u * (z_e - z_s)], [target]          # eq. 3
        if cfg.mixed:
            inputs.append(z_s + u * (z_e_gt - z_s))
            targets.append((z_e_gt - lambda_s * z_s) / eta_s)
        batch = torch.cat(inputs)
        both = Conditions.cat([cond] * len(inputs))
        # one student call for both losses (one forward, as data parallel training needs)
        prediction = student(batch.to(self.dtype), timestep, **both.unet_kwargs(), guidance_scales=scales).float()
        per_sample = ((prediction - torch.cat(targets)) ** 2).flatten(1).mean(1)
        n = z0.shape[0]
        loss_teacher = per_sample[:n]
        metrics = {"teacher_loss": loss_teacher.mean().detach(), "window": torch.tensor(float(k)),
                   "cfg_audio": torch.tensor(scales[0]), "cfg_ref": torch.tensor(scales[1])}
        loss = loss_teacher
        if cfg.mixed:
            loss_gt = per_sample[n:]
            ratio = loss_gt.detach() / loss_teacher.detach().clamp(min=1e-12)
            weight = mixed_supervision_weight(ratio, cfg.w0, cfg.s, cfg.r_peak, cfg.r_dead)    # eq. 8
            loss = loss_teacher + weight * loss_gt                                              # eq. 7
            metrics.update(gt_loss=loss_gt.mean().detach(), R=ratio.mean(), W=weight.mean())
        return {"loss": loss.mean(), **metrics}
