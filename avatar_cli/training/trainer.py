"""The training loop shared by the teacher and both distillations, on Hugging Face accelerate.

accelerate provides the devices, bf16/fp16 mixed precision, gradient accumulation and data-parallel
training over GPUs and nodes (``accelerate launch``); this module adds what a long run needs:

- one example per process per micro-step, drawn by a generator seeded from (seed, step, micro-step,
  rank), so a resumed run draws exactly the examples an uninterrupted one would;
- checkpoints every N steps: ``OUT/checkpoints/step-N/state`` (accelerate's ``save_state``:
  models, optimizers, schedulers, RNG states) and ``OUT/checkpoints/step-N/weights`` (the student
  in the project's weights layout, loadable by ``avatar render --weights``), keeping the last few;
- ``--resume``: continue from the newest checkpoint, with the same next loss;
- metrics: ``OUT/metrics.jsonl`` (one line per step: every loss term, learning rates, samples per
  second, W and R for FADA, discriminator accuracy for OSA-LCM), TensorBoard when installed;
- ``OUT/weights``: the final student, and ``OUT/summary.json``.

A *step object* (``TeacherStep``, ``LCMStep``, ``FADAStep``) holds the method: its ``student``
(the denoising U-Net that trains), ``trainable()``, ``generator_step(student, example, generator,
step) -> {"loss", ...}``, and optionally a ``discriminator`` with ``discriminator_step``. The two
are updated in alternate iterations: every step one generator update, then one discriminator update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..atomic import atomic_folder

CHECKPOINTS = "checkpoints"


@dataclass
class TrainConfig:
    """Settings of the loop (the method's own settings live in its config).

    Attributes:
        output: run folder.
        max_steps: optimizer steps of the student.
        learning_rate: student's peak learning rate.
        lr_decay_at: fraction of ``max_steps`` after which the rate is multiplied by
            ``lr_decay``: OSA-LCM's Adv-LCM uses 3e-6 for the first half, then 1.5e-6.
        disc_learning_rate: the discriminator's (OSA-LCM: 1e-5).
        gradient_accumulation_steps: micro-steps (one example each per process) per update.
        mixed_precision: "no", "bf16" or "fp16": accelerate's autocast around every step, so the
            frozen networks' matmuls and convolutions run in that precision too; their weights stay
            float32 (memory: a bf16 copy of the frozen teacher is not made).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many checkpoints to keep (older ones are deleted).
        resume: continue from the newest checkpoint in ``output``.
        seed: seed of the example draws and noises.
        optimizer: "adamw" or "adamw8bit" (bitsandbytes).
        gradient_checkpointing: recompute activations of the student in the backward pass.
        max_grad_norm: gradient clipping (0: none).
        cpu: force the CPU even where CUDA is available.
        progress: show a progress bar (main process only).
    """

    output: Path
    max_steps: int = 1000
    learning_rate: float = 1e-5
    lr_decay_at: float = 1.0
    lr_decay: float = 1.0
    disc_learning_rate: float = 1e-5
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 0
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    cpu: bool = False
    progress: bool = True


def make_accelerator(config: TrainConfig):
    """accelerate's ``Accelerator`` for a run (devices, precision, accumulation, data parallel)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    if config.mixed_precision not in ("no", "bf16", "fp16"):
        raise InputError(f"--mixed-precision must be no, bf16 or fp16 (got {config.mixed_precision!r})")
    # cpu=True also selects accelerate's multi-CPU (gloo) data parallel under a multi-process launch
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, config.mixed_precision):
        raise InputError(f"this process already trained with mixed precision {state['_mixed_precision']}; "
                         f"accelerate keeps that per process: run the {config.mixed_precision} training in a new one")
    cpu = config.cpu or not torch.cuda.is_available()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu,
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       project_config=ProjectConfiguration(project_dir=str(config.output)),
                       # motion modules of blocks without attention exist but may be unused
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _optimizer(config: TrainConfig, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes; pip install bitsandbytes") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
    raise InputError(f"--optimizer must be adamw or adamw8bit (got {config.optimizer!r})")


def checkpoints(output: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = Path(output) / CHECKPOINTS
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _example_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank) % (2 ** 63)


class Trainer:
    """Runs a step object for ``config.max_steps`` updates (see module docstring).

    Args:
        method: the step object, built on ``accelerator.device``.
        dataset: a ``ClipDataset``.
        save_models: student U-Net -> the ``AvatarModels`` to write as weights.
        accelerator: from :func:`make_accelerator`.
    """

    def __init__(self, method, dataset, config: TrainConfig, accelerator,
                 save_models: Callable[[torch.nn.Module], object]):
        self.method, self.dataset, self.config = method, dataset, config
        self.accelerator, self.save_models = accelerator, save_models
        self.output = Path(config.output)

    # ------------------------------------------------------------------ setup
    def _prepare(self):
        cfg, acc, method = self.config, self.accelerator, self.method
        student = method.student
        student.requires_grad_(False)
        params = method.trainable()
        for p in params:
            p.requires_grad_(True)
        student.train()
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        optimizer = _optimizer(cfg, params, cfg.learning_rate)
        decay_step = math.ceil(cfg.lr_decay_at * cfg.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 1.0 if s < decay_step else cfg.lr_decay)
        # the schedule counts optimizer updates, so it is stepped here, not by accelerate (which
        # would step it once per process); registered so that save_state/load_state carry it
        self.scheduler = scheduler
        acc.register_for_checkpointing(scheduler)
        self.student, self.optimizer = acc.prepare(student, optimizer)
        self.discriminator = self.disc_optimizer = None
        if method.discriminator is not None:
            disc = method.discriminator.train()
            disc_opt = _optimizer(cfg, list(disc.parameters()), cfg.disc_learning_rate)
            self.discriminator, self.disc_optimizer = acc.prepare(disc, disc_opt)

    def _resume(self) -> int:
        """Load the newest checkpoint; returns the next step (0 for a fresh run)."""
        found = checkpoints(self.output)
        if not self.config.resume or not found:
            if self.config.resume:
                self.accelerator.print(f"no checkpoint in {self.output}; starting from step 0")
            return 0
        last = found[-1]
        self.accelerator.load_state(str(last / "state"))
        step = json.loads((last / "trainer.json").read_text())["step"]
        self.accelerator.print(f"resuming from {last} (step {step})")
        return step

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train; returns the summary also written to ``OUT/summary.json``."""
        import warnings

        # DDP's note on 1x1-convolution gradients laid out channels-last: harmless, said every step
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        acc, cfg = self.accelerator, self.config
        self.output.mkdir(parents=True, exist_ok=True)
        self._prepare()
        start = self._resume()
        metrics_path = self.output / "metrics.jsonl"
        if acc.is_main_process:
            _truncate_metrics(metrics_path, start)
        writer = _tensorboard(self.output) if acc.is_main_process else None
        progress = _Progress(cfg.max_steps, start, enabled=cfg.progress and acc.is_main_process)
        last: dict[str, float] = {}
        step = start
        try:
            for step in range(start, cfg.max_steps):
                began = time.perf_counter()
                record = self._step(step)
                record["samples_per_s"] = (acc.num_processes * cfg.gradient_accumulation_steps
                                           / max(time.perf_counter() - began, 1e-9))
                record["lr"] = self.scheduler.get_last_lr()[0]
                if self.disc_optimizer is not None:
                    record["disc_lr"] = self.disc_optimizer.param_groups[0]["lr"]
                record = {"step": step + 1, **record}
                last = record
                if acc.is_main_process:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for key, value in record.items():
                            if key != "step":
                                writer.add_scalar(key, value, step + 1)
                progress.update(step + 1, record)
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps:
                    self.save_checkpoint(step + 1)
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        final = cfg.max_steps
        if not checkpoints(self.output) or int(checkpoints(self.output)[-1].name.split("-")[1]) != final:
            self.save_checkpoint(final)
        weights = self.output / "weights"
        if acc.is_main_process:
            with atomic_folder(weights) as tmp:
                shutil.copytree(checkpoints(self.output)[-1] / "weights", tmp)
        checksum = self.replica_checksums()
        summary = {"steps": final, "resumed_from": start, "processes": acc.num_processes,
                   "weights": str(weights), "last": last, "replica_checksums": checksum,
                   "replicas_identical": len(set(checksum)) == 1}
        if acc.is_main_process:
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    def _step(self, step: int) -> dict[str, float]:
        """One generator update (and one discriminator update); returns process-averaged metrics."""
        acc, cfg, method = self.accelerator, self.config, self.method
        totals: dict[str, torch.Tensor] = {}

        def add(out: dict[str, torch.Tensor], prefix: str = "") -> None:
            for key, value in out.items():
                name = prefix + key
                totals[name] = totals.get(name, 0) + value.detach().float().reshape(()) / cfg.gradient_accumulation_steps

        rank = acc.process_index
        for micro in range(cfg.gradient_accumulation_steps):
            generator = torch.Generator().manual_seed(_example_seed(cfg.seed, step, micro, rank))
            example = self.dataset.sample(generator)
            with acc.accumulate(self.student), acc.autocast():
                out = method.generator_step(self.student, example, generator, step)
                acc.backward(out["loss"])
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.student.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            add(out)
        if self.discriminator is not None:
            for micro in range(cfg.gradient_accumulation_steps):
                generator = torch.Generator().manual_seed(_example_seed(cfg.seed + 1, step, micro, rank))
                example = self.dataset.sample(generator)
                with acc.accumulate(self.discriminator), acc.autocast():
                    out = method.discriminator_step(self.discriminator, example, generator, step)
                    acc.backward(out["loss"])
                    self.disc_optimizer.step()
                    self.disc_optimizer.zero_grad(set_to_none=True)
                add({k: v for k, v in out.items() if k != "loss"})
        names = sorted(totals)
        values = acc.reduce(torch.stack([totals[n] for n in names]).to(acc.device), reduction="mean")
        return {n: float(v) for n, v in zip(names, values.cpu())}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Path:
        """Write ``checkpoints/step-N`` (state + weights) atomically and drop old ones."""
        acc = self.accelerator
        folder = self.output / CHECKPOINTS / f"step-{step}"
        tmp = self.output / CHECKPOINTS / f"step-{step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))
        if acc.is_main_process:
            models = self.save_models(acc.unwrap_model(self.student))
            models.save_pretrained(tmp / "weights")
            (tmp / "trainer.json").write_text(json.dumps({"step": step, "config": _jsonable(self.config)}, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            for old in checkpoints(self.output)[:-max(1, self.config.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return folder

    def replica_checksums(self) -> list[float]:
        """Per process, a checksum of the student's trainable weights (data parallel keeps them
        identical; a mismatch means the replicas diverged)."""
        model = self.accelerator.unwrap_model(self.student)
        total = torch.zeros((), dtype=torch.float64)
        for i, p in enumerate(p for p in model.parameters() if p.requires_grad):
            total += (p.detach().double().cpu() * (1 + (i % 7) / 7)).sum()
        gathered = self.accelerator.gather(total.reshape(1).to(self.accelerator.device))
        return [float(x) for x in gathered.cpu()]


def _jsonable(config) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines beyond ``step`` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / "tensorboard"))


class _Progress:
    """A rich progress bar with the latest loss (no-op when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), transient=True)
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, record: dict) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=f"loss {record.get('loss', float('nan')):.4g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
