"""The three trainings as library calls: the teacher, OSA-LCM's two stages, FADA.

Each loads the frozen models, builds the method's step object on accelerate's device, samples
clips from a dataset written by :func:`avatar_cli.training.data.prepare`, and runs the
:class:`Trainer`. The CLI (``avatar train teacher``, ``avatar distill osa-lcm|fada``) is a thin
shell over these; ``accelerate launch`` runs them on many GPUs unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import InputError
from .data import ClipDataset
from .trainer import Trainer, TrainConfig, make_accelerator


def load_teacher(path: str | Path):
    """The teacher's :class:`AvatarModels` (float32; frozen parts stay frozen)."""
    from ..models.bundle import AvatarModels

    return AvatarModels.from_pretrained(path)


def _dataset(data: str | Path, models, clip_frames: int, quality: str | None, pairs: bool) -> ClipDataset:
    from ..media.features import fingerprint

    index = Path(data) / "index.jsonl"
    if index.is_file():
        wanted = fingerprint(models.audio_encoder)
        used = {json.loads(line).get("audio_model") for line in index.read_text().splitlines() if line.strip()}
        if used - {wanted}:
            raise InputError(f"dataset {data} was encoded with another audio encoder than these weights; "
                             "run 'avatar data prepare' again with the teacher's --weights")
    motion = models.denoising_unet.config.num_motion_frames
    return ClipDataset(data, clip_frames, motion, quality=quality, pairs=pairs)


def _saver(models, method: str):
    """student U-Net -> the AvatarModels written as weights (the teacher's parts + the student)."""
    def save_models(student):
        settings = dataclasses.replace(models.settings, default_method=method)
        return dataclasses.replace(models, denoising_unet=student, settings=settings)
    return save_models


def train_teacher(models, data: str | Path, config: TrainConfig, clip_frames: int = 16, drop: float = 0.1,
                  quality: str | None = "high") -> dict:
    """Train a multi-step teacher's denoising U-Net (FADA eq. 1) on data set A (``quality``).

    Args:
        models: :class:`AvatarModels` to start from (e.g. ``AvatarModels.from_preset("tiny")``).
        drop: condition-dropout probability (audio, reference) for multi-CFG's null branches.

    Returns:
        the run summary (``OUT/summary.json``).
    """
    from .teacher import TeacherStep

    accelerator = make_accelerator(config)
    models.to(accelerator.device)
    method = TeacherStep(models, accelerator.device, models.denoising_unet.dtype, drop=drop)
    dataset = _dataset(data, models, clip_frames, quality, pairs=False)
    return Trainer(method, dataset, config, accelerator, _saver(models, method.method)).run()


def distill_osa_lcm(teacher: str | Path, data: str | Path, config: TrainConfig, stage: str = "adv-lcm",
                    lcm=None, init: str | Path | None = None, clip_frames: int = 16) -> dict:
    """OSA-LCM's distillation stage ``adv-lcm`` (Algorithm 1) or ``eft`` (Algorithm 2).

    Args:
        teacher: the teacher's weights folder (frozen: ODE solver and discriminator backbone).
        lcm: :class:`LCMConfig` (None: the paper's defaults).
        init: weights folder whose denoising U-Net the student starts from (EFT: the Adv-LCM
            student's ``OUT/weights``); None: the teacher's.
    """
    from .osa_lcm import LCMConfig, LCMStep

    accelerator = make_accelerator(config)
    models = load_teacher(teacher).to(accelerator.device)
    student = load_teacher(init).denoising_unet if init is not None else None
    method = LCMStep(models, accelerator.device, models.denoising_unet.dtype, lcm or LCMConfig(), stage,
                     config.max_steps, student=student, seed=config.seed)
    dataset = _dataset(data, models, clip_frames, None, pairs=stage == "eft")
    return Trainer(method, dataset, config, accelerator, _saver(models, method.method)).run()


def distill_fada(teacher: str | Path, data: str | Path, config: TrainConfig, fada=None,
                 init: str | Path | None = None, clip_frames: int = 16, quality: str | None = None) -> dict:
    """FADA's mixed-supervised PeRFlow distillation with CFG tokens, on data set B (all qualities).

    Args:
        fada: :class:`FADAConfig` (None: the paper's defaults).
        init: weights folder of a student to continue from (None: teacher + CFG layers).
    """
    from .fada import FADAConfig, FADAStep

    accelerator = make_accelerator(config)
    models = load_teacher(teacher)
    if models.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise InputError(f"FADA distils an epsilon-prediction PeRFlow student, and the teacher {teacher} predicts "
                         f"{models.scheduler_config['prediction_type']} on a zero-terminal-SNR schedule (Hallo); "
                         f"distil it with 'avatar distill osa-lcm' instead")
    models = models.to(accelerator.device)
    student = load_teacher(init).denoising_unet if init is not None else None
    method = FADAStep(models, accelerator.device, models.denoising_unet.dtype, fada or FADAConfig(), student=student,
                      seed=config.seed)
    dataset = _dataset(data, models, clip_frames, quality, pairs=False)
    return Trainer(method, dataset, config, accelerator, _saver(models, method.method)).run()
