"""``avatar data prepare``, ``avatar train teacher`` and ``avatar distill osa-lcm|fada``: thin shells
over :mod:`avatar_cli.training`. Multi-GPU: ``accelerate launch -m avatar_cli distill ...``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import note

data_app = typer.Typer(help="Training data: talking-head videos -> latents + audio features.", no_args_is_help=True,
                       rich_markup_mode="rich")
train_app = typer.Typer(help="Train the multi-step teacher the distillations start from.", no_args_is_help=True,
                        rich_markup_mode="rich")
distill_app = typer.Typer(help="Distil a one-step (OSA-LCM) or six-step (FADA) student from a teacher.",
                          no_args_is_help=True, rich_markup_mode="rich")


def _choices(name: str, *values: str) -> type[Enum]:
    """A ``str`` Enum of option values (members named by the value, ``-`` as ``_``) for a typer option."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


Quality = _choices("Quality", "high", "moderate")
Stage = _choices("Stage", "adv-lcm", "eft")
GanLoss = _choices("GanLoss", "hinge", "non-saturating")
Trainable = _choices("Trainable", "temporal", "all")
Precision = _choices("Precision", "no", "bf16", "fp16")
Optim = _choices("Optim", "adamw", "adamw8bit")


def _echo(result: dict, as_json: bool, text: str, quiet: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result))
    elif not quiet:
        typer.echo(f"avatar: {text}", err=True)


def _pair(option: str, value: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{option} takes LOW,HIGH, e.g. 4.5,8.5 (got {value!r})") from None
    if not low <= high:
        raise InputError(f"{option} needs LOW <= HIGH (got {value})")
    return low, high


DATA_EPILOG = """\
[bold]Examples[/bold]

  avatar data prepare videos/*.mp4 -o dataset --weights ./teacher
  avatar data prepare extra/*.mp4 -o dataset --weights ./teacher --quality moderate   [dim]# FADA's set B[/dim]

Writes dataset/index.jsonl and dataset/shards/<id>.safetensors (latents and wav2vec2 features, float16).
Run it again with more videos to extend the data set; videos already in it are skipped.
[bold]Exit codes[/bold]: 0 all videos added (or already there), 1 some videos failed (the others were added), 2 bad option.
"""


@data_app.command("prepare", epilog=DATA_EPILOG)
def data_prepare(
    videos: Annotated[list[Path], typer.Argument(help="Talking-head videos with their speech track.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder.", show_default=False)],
    fps: Annotated[float, typer.Option(help="Frame rate the videos are resampled to.")] = 25.0,
    size: Annotated[int, typer.Option(help="Side of the centre-cropped square frames, in pixels.")] = 512,
    quality: Annotated[Quality, typer.Option(help="Tag: high (FADA's set A, teacher data) or moderate (set B).")]
    = Quality.high,
    weights: Annotated[Optional[Path], typer.Option(help="Weights folder whose VAE and audio encoder encode the data "
                                                    "(the teacher's).", show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random weights (tests, demos).")] = False,
    arch: Annotated[str, typer.Option(help="Architecture for --random-weights: full or tiny.")] = "full",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-video lines.")] = False,
) -> None:
    """Encode talking-head videos into a training data set (resumable; bad videos are reported and skipped)."""
    from ..pipelines.unet import UNetPipeline
    from ..runtime import resolve_device
    from ..training.data import prepare

    if not 1 <= fps <= 120:
        raise InputError(f"--fps must be 1..120 (got {fps:g})")
    if size < 64 or size % 8:
        raise InputError(f"--size must be a multiple of 8 and at least 64 (got {size})")
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise InputError(f"video {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if (weights is None) == (not random_weights):
        raise InputError("pass --weights DIR (the teacher's) or --random-weights")
    dev = resolve_device(device)
    pipe = (UNetPipeline.from_preset(arch, device=dev, dtype="float32") if random_weights
            else UNetPipeline.from_pretrained(weights, device=dev, dtype="float32"))
    counts = prepare(videos, output, pipe, fps=fps, size=size, quality=quality.value,
                     log=lambda line: None if quiet or as_json else typer.echo(f"avatar: {line}", err=True))
    _echo({"output": str(output), **counts}, as_json,
          f"{output}: {counts['added']} added, {counts['skipped']} already there, {counts['failed']} failed", quiet)
    if counts["failed"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- shared training options
_Data = Annotated[Path, typer.Option("--data", help="Dataset folder ('avatar data prepare').", show_default=False)]
_Out = Annotated[Path, typer.Option("--output", "-o", help="Run folder: checkpoints/, weights/, metrics.jsonl.",
                                    show_default=False)]
_MaxSteps = Annotated[int, typer.Option("--max-steps", help="Optimizer steps of the student.")]
_Lr = Annotated[Optional[float], typer.Option("--lr", help="Learning rate.",
                                              show_default="the paper's, see --help text")]
_Accum = Annotated[int, typer.Option("--gradient-accumulation", help="Examples per process per update.")]
_Precision = Annotated[Precision, typer.Option("--mixed-precision", help="accelerate's mixed precision.")]
_Every = Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints (0: at the end only).")]
_Keep = Annotated[int, typer.Option("--keep-checkpoints", help="Checkpoints kept (older ones deleted).")]
_Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --output.")]
_Seed = Annotated[int, typer.Option(help="Seed of the example draws and noises.")]
_Optimizer = Annotated[Optim, typer.Option(help="adamw, or adamw8bit (needs bitsandbytes).")]
_Checkpointing = Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations (less memory).")]
_ClipFrames = Annotated[int, typer.Option(help="Frames per training clip (F).")]
_Cpu = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even where CUDA is available.")]
_Json = Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")]
_Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")]
_InitWeights = Annotated[Optional[Path], typer.Option("--init-weights", help="Weights folder training starts from.",
                                                      show_default=False)]


# The options every training command shares, declared once: (name, annotation, default). A command
# lists its own options and takes these as **run (``with_run_options``), with its own defaults.
RUN_OPTIONS = (
    ("max_steps", _MaxSteps, 1000), ("lr", _Lr, None), ("accum", _Accum, 1), ("precision", _Precision, Precision.no),
    ("every", _Every, 1000), ("keep", _Keep, 2), ("resume", _Resume, False), ("seed", _Seed, 0),
    ("optimizer", _Optimizer, Optim.adamw), ("checkpointing", _Checkpointing, False), ("clip_frames", _ClipFrames, 16),
    ("cpu", _Cpu, False), ("as_json", _Json, False), ("quiet", _Quiet, False),
)


def with_run_options(**defaults):
    """Give a command (taking ``**run``) the shared training options after its own, with ``defaults``
    overriding the table's (e.g. ``max_steps=30000``)."""
    import inspect

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name, default),
                                    annotation=annotation) for name, annotation, default in RUN_OPTIONS]
        command.__signature__ = signature.replace(parameters=[*own, *shared])
        return command
    return decorate


def _config(output, run: dict, lr: float, lr_decay_at: float = 1.0, lr_decay: float = 1.0, disc_lr: float = 1e-5):
    """The shared options (``run``) as a :class:`TrainConfig`; ``lr`` is the command's default
    learning rate (``--lr`` wins). Raises InputError for values out of range or a run folder in use."""
    from ..training.trainer import TrainConfig, checkpoints

    lr = run["lr"] or lr
    if run["max_steps"] < 1:
        raise InputError(f"--max-steps must be >= 1 (got {run['max_steps']})")
    if run["accum"] < 1:
        raise InputError(f"--gradient-accumulation must be >= 1 (got {run['accum']})")
    if lr <= 0:
        raise InputError(f"--lr must be > 0 (got {lr:g})")
    if not run["resume"] and checkpoints(output):
        raise InputError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    return TrainConfig(output=output, max_steps=run["max_steps"], learning_rate=lr, lr_decay_at=lr_decay_at,
                       lr_decay=lr_decay, disc_learning_rate=disc_lr, gradient_accumulation_steps=run["accum"],
                       mixed_precision=run["precision"].value, checkpoint_every=run["every"],
                       keep_checkpoints=run["keep"], resume=run["resume"], seed=run["seed"],
                       optimizer=run["optimizer"].value, gradient_checkpointing=run["checkpointing"], cpu=run["cpu"],
                       progress=not run["quiet"])


def _teacher(value: str) -> Path:
    """``--teacher``: a weights folder; ``hallo:DIR`` (a converted Hallo folder, checked to hold
    Hallo's face locator); or ``hallo`` (the folder 'avatar weights convert --from hallo' wrote)."""
    from ..weights import converted_folder

    if value == "hallo":
        folder = converted_folder("hallo")
        if folder is None:
            raise InputError("--teacher hallo needs Hallo's converted weights: 'avatar weights download hallo' and "
                             "'avatar weights convert --from hallo', or pass --teacher hallo:DIR")
        return folder
    if value.startswith("hallo:"):
        folder = Path(value[len("hallo:"):])
        _folder("--teacher", folder)
        if not (folder / "face_locator").is_dir():
            raise InputError(f"--teacher {value}: {folder} holds no Hallo weights (no face_locator/); convert them "
                             f"with 'avatar weights convert --from hallo -o {folder}'")
        return folder
    folder = Path(value)
    _folder("--teacher", folder)
    return folder


_Teacher = Annotated[str, typer.Option(help="Teacher: a weights folder, hallo:DIR (converted Hallo weights) or hallo "
                                            "(the installed conversion).", show_default=False)]


def _folder(option: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        raise InputError(f"{option} {path} is not a folder; give a weights folder (e.g. a run's weights/)")


def _finish(summary: dict, as_json: bool, quiet: bool) -> None:
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch: one report, from rank 0
        return
    last = summary.get("last") or {}
    _echo(summary, as_json, f"trained {summary['steps']} steps; loss {last.get('loss', float('nan')):.4g}; "
          f"weights in {summary['weights']} (avatar render --weights {summary['weights']})", quiet)


TEACHER_EPILOG = """\
[bold]Examples[/bold]

  avatar train teacher --data dataset --init-weights ./base -o teacher --max-steps 100000
  avatar train teacher --data dataset --arch tiny -o tiny-teacher --max-steps 300 --lr 1e-3 --cpu

Loss: FADA eq. 1 (epsilon or v by the weights' schedule), audio and reference dropped with
probability --drop each, so multi-CFG has its null branches. Only the denoising U-Net trains.
"""


@train_app.command("teacher", epilog=TEACHER_EPILOG)
@with_run_options(max_steps=1000, every=500)
def train_teacher_command(
    data: _Data,
    output: _Out,
    init: _InitWeights = None,
    arch: Annotated[str, typer.Option(help="Without --init-weights: random weights of this architecture (full or tiny).")]
    = "full",
    drop: Annotated[float, typer.Option(help="Condition-dropout probability (audio, reference).")] = 0.1,
    quality: Annotated[Optional[Quality], typer.Option(help="Train on videos of this tag only.")] = Quality.high,
    **run,
) -> None:
    """Train a multi-step teacher (DDIM + multi-CFG) on data set A. Default --lr 1e-5."""
    from ..models.bundle import AvatarModels
    from ..training.recipes import train_teacher

    _folder("--init-weights", init)
    if not 0 <= drop < 1:
        raise InputError(f"--drop must be in [0, 1) (got {drop:g})")
    config = _config(output, run, 1e-5)
    models = AvatarModels.from_pretrained(init) if init is not None else AvatarModels.from_preset(arch)
    summary = train_teacher(models, data, config, clip_frames=run["clip_frames"], drop=drop,
                            quality=quality.value if quality else None)
    _finish(summary, run["as_json"], run["quiet"])


OSA_EPILOG = """\
[bold]Examples[/bold]

  avatar distill osa-lcm --teacher ./teacher --data dataset --stage adv-lcm -o adv --max-steps 30000
  avatar distill osa-lcm --teacher ./teacher --data dataset --stage eft --init-weights adv/weights -o osa --max-steps 15000
  accelerate launch --multi_gpu --num_processes 8 -m avatar_cli distill osa-lcm --teacher ./teacher ...
  avatar render face.png speech.wav --weights osa/weights --model osa-lcm

Defaults are the paper's: Adv-LCM lr 3e-6 for the first half, then 1.5e-6; EFT 1.5e-6; discriminator
1e-5; only the temporal modules train; batch 1 per GPU. See docs/distillation.md for each loss.
"""


@distill_app.command("osa-lcm", epilog=OSA_EPILOG)
@with_run_options(max_steps=30000)
def distill_osa_lcm_command(
    teacher: _Teacher,
    data: _Data,
    output: _Out,
    stage: Annotated[Stage, typer.Option(help="adv-lcm (Algorithm 1) or eft (Algorithm 2, from --init-weights adv/weights).")]
    = Stage.adv_lcm,
    init: _InitWeights = None,
    skip: Annotated[int, typer.Option(help="k: the teacher's DDIM solver step, in timesteps (eq. 2).")] = 20,
    guidance_audio: Annotated[float, typer.Option(help="cfg_a of the solver's multi-CFG.")] = 6.5,
    guidance_ref: Annotated[float, typer.Option(help="cfg_r of the solver's multi-CFG.")] = 2.5,
    gan_loss: Annotated[GanLoss, typer.Option(help="Adversarial loss form (eqs. 4-5).")] = GanLoss.hinge,
    lambda_adv: Annotated[float, typer.Option(help="Weight of the adversarial term (eq. 9).")] = 0.1,
    lambda_motion: Annotated[float, typer.Option(help="Weight of the motion loss (eq. 9).")] = 1.0,
    huber_c: Annotated[Optional[float], typer.Option(help="Pseudo-Huber c.",
                                                     show_default="0.00054 sqrt(d)")] = None,
    disc_t_start: Annotated[int, typer.Option(help="Discriminator noise at the start (eq. 6).")] = 500,
    disc_t_end: Annotated[int, typer.Option(help="Discriminator noise at the end (eq. 6).")] = 100,
    eft_t_min: Annotated[int, typer.Option(help="EFT: t drawn from [this, 999] (high noise).")] = 800,
    gen_noise_max: Annotated[int, typer.Option(help="The generator's samples reach the discriminator noised to "
                                                    "s ~ U(0, this) (eq. 6's fake side).")] = 100,
    train_what: Annotated[Trainable, typer.Option("--train", help="temporal (the paper) or all weights.")]
    = Trainable.temporal,
    disc_lr: Annotated[float, typer.Option("--disc-lr", help="Discriminator learning rate.")] = 1e-5,
    **run,
) -> None:
    """OSA-LCM: Adv-LCM (consistency + adversarial + motion losses), then EFT (one-step editing fine-tune)."""
    from ..training.osa_lcm import LCMConfig
    from ..training.recipes import distill_osa_lcm

    teacher = _teacher(teacher)
    _folder("--init-weights", init)
    if not 1 <= skip < 1000:
        raise InputError(f"--skip must be 1..999 (got {skip})")
    if not 0 <= disc_t_end <= 999 or not 0 <= disc_t_start <= 999:
        raise InputError("--disc-t-start and --disc-t-end must be 0..999")
    if not 0 <= eft_t_min <= 999:
        raise InputError(f"--eft-t-min must be 0..999 (got {eft_t_min})")
    if not 0 <= gen_noise_max <= 999:
        raise InputError(f"--gen-noise-max must be 0..999 (got {gen_noise_max})")
    eft = stage == Stage.eft
    if eft and init is None:
        note("note: --stage eft without --init-weights starts from the teacher; the paper starts EFT from the "
             "Adv-LCM student (--init-weights ADV/weights)", run["quiet"])
    config = _config(output, run, 1.5e-6 if eft else 3e-6, 1.0 if eft else 0.5, 1.0 if eft else 0.5, disc_lr)
    lcm = LCMConfig(skip=skip, guidance=(guidance_audio, guidance_ref), huber_c=huber_c, gan_loss=gan_loss.value,
                    lambda_adv=lambda_adv, lambda_motion=lambda_motion, disc_t_start=disc_t_start,
                    disc_t_end=disc_t_end, eft_t_min=eft_t_min, gen_noise_max=gen_noise_max, train=train_what.value)
    summary = distill_osa_lcm(teacher, data, config, stage=stage.value, lcm=lcm, init=init,
                              clip_frames=run["clip_frames"])
    _finish(summary, run["as_json"], run["quiet"])


FADA_EPILOG = """\
[bold]Examples[/bold]

  avatar distill fada --teacher ./teacher --data dataset -o fada --max-steps 20000
  accelerate launch --multi_gpu --num_processes 8 -m avatar_cli distill fada --teacher ./teacher ...
  avatar render face.png speech.wav --weights fada/weights --model fada

Loss: PeRFlow distillation on K windows with the teacher's multi-CFG solver (FADA eqs. 2-5) plus
W(R) x the ground-truth loss (eqs. 6-8); the student gets CFG tokens (eq. 10) with (cfg_a, cfg_r)
drawn per sample from --cfg-audio-range and --cfg-ref-range. Default --lr 1e-5.
"""


@distill_app.command("fada", epilog=FADA_EPILOG)
@with_run_options(max_steps=20000)
def distill_fada_command(
    teacher: _Teacher,
    data: _Data,
    output: _Out,
    init: _InitWeights = None,
    solver_steps: Annotated[int, typer.Option(help="Teacher DDIM steps per window (eq. 2).")] = 8,
    cfg_audio_range: Annotated[str, typer.Option(help="cfg_a drawn uniformly from LOW,HIGH per sample.")] = "4.5,8.5",
    cfg_ref_range: Annotated[str, typer.Option(help="cfg_r drawn uniformly from LOW,HIGH per sample.")] = "1.5,3.0",
    cfg_tokens: Annotated[int, typer.Option(help="Learnable CFG tokens per set (eq. 10).")] = 4,
    mixed: Annotated[bool, typer.Option("--mixed/--no-mixed", help="Add W(R) x the ground-truth loss (eq. 7).")] = True,
    w0: Annotated[float, typer.Option(help="W0 of eq. 8.")] = 0.2,
    s: Annotated[float, typer.Option("--s", help="s of eq. 8.")] = 0.25,
    r_peak: Annotated[float, typer.Option(help="R_p of eq. 8.")] = 30.0,
    r_dead: Annotated[float, typer.Option(help="R_d of eq. 8.")] = 100.0,
    train_what: Annotated[Trainable, typer.Option("--train", help="all weights (the paper) or temporal + CFG layers.")]
    = Trainable.all,
    **run,
) -> None:
    """FADA: mixed-supervised PeRFlow distillation with learnable-token multi-CFG (6 steps, NFE 6)."""
    from ..training.fada import FADAConfig
    from ..training.recipes import distill_fada

    teacher = _teacher(teacher)
    _folder("--init-weights", init)
    if solver_steps < 1 or cfg_tokens < 1:
        raise InputError("--solver-steps and --cfg-tokens must be >= 1")
    if not 0 <= r_peak < r_dead:
        raise InputError(f"--r-peak must be in [0, --r-dead) (got {r_peak:g}, {r_dead:g})")
    config = _config(output, run, 1e-5)
    fada = FADAConfig(solver_steps=solver_steps,
                      cfg_audio=_pair("--cfg-audio-range", cfg_audio_range), cfg_ref=_pair("--cfg-ref-range", cfg_ref_range),
                      cfg_tokens=cfg_tokens, mixed=mixed, w0=w0, s=s, r_peak=r_peak, r_dead=r_dead, train=train_what.value)
    summary = distill_fada(teacher, data, config, fada=fada, init=init, clip_frames=run["clip_frames"])
    _finish(summary, run["as_json"], run["quiet"])


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    app.add_typer(distill_app, name="distill")
