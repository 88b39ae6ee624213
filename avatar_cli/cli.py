"""The ``avatar`` command: a thin shell over :mod:`avatar_cli.pipeline`.

Exit codes: 0 success, 1 failed work, 2 usage error (bad input or options), 130 interrupted.
Errors are one line on stderr: ``avatar: error: <problem>; <fix>``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import AvatarError, InputError, WeightsError

app = typer.Typer(
    name="avatar",
    help="Render talking-head videos from one portrait and one speech recording.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Arch(str, Enum):
    full = "full"
    tiny = "tiny"


class Model(str, Enum):
    osa_lcm = "osa-lcm"
    adv_lcm = "adv-lcm"
    fada = "fada"
    fada_balanced = "fada-balanced"
    teacher = "teacher"
    hallo = "hallo"


class Init(str, Enum):
    gaussian = "gaussian"
    rolling = "rolling"
    combined_rolling = "combined-rolling"


class Fit(str, Enum):
    crop = "crop"
    pad = "pad"


def _note(message: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(f"avatar: {message}", err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avatar-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Render talking-head videos from one portrait and one speech recording."""


RENDER_EPILOG = """\
[bold]Examples[/bold]

  avatar render portrait.png speech.wav --weights ./weights -o talk.mp4
  avatar render face.jpg speech.mp3 --random-weights --arch tiny --size 128
  avatar render face.png voice.m4a --weights ./w --init rolling --json
  avatar render face.png voice.wav --weights ./fada --model fada
  avatar render face.png voice.wav --weights ./hallo --model hallo --no-face-embedding

[bold]Methods[/bold] (--model; NFE = U-Net evaluations per clip)

  osa-lcm        OSA-LCM: LCM, 1 step, no guidance                 NFE 1
  adv-lcm        Adv-LCM: LCM, --steps 2 (default) or 4            NFE 2 / 4
  fada           FADA Fast: PeRFlow 6 steps (2,2,1,1), CFG tokens   NFE 6
  fada-balanced  FADA Balanced: PeRFlow 6 steps, 3-way multi-CFG    NFE 18
  teacher        DDIM 25 steps, 3-way multi-CFG (batch of 3)       NFE 75
  hallo          Hallo: DDIM 40 steps, CFG 3.5 (batch of 2)         NFE 80

Guidance defaults (--guidance-audio / --guidance-ref): fada 6.5 / 2.0, fada-balanced and teacher 6.5 / 2.5; hallo --guidance-scale 3.5.

[bold]Hallo[/bold] (--model hallo, weights from 'avatar weights convert --from hallo'): the face is found with MediaPipe (the face extra) or --face-box; its ArcFace embedding comes from InsightFace (the arcface extra), --face-embedding FILE.npy, or --no-face-embedding.

[bold]Clip initialisation[/bold] (LCM and DDIM methods; PeRFlow takes gaussian only): gaussian starts every clip from noise at t=999; rolling starts clip n from clip n-1's latents noised to --noise-level; combined-rolling is gaussian for the first clip and rolling after.

[bold]Exit codes[/bold]: 0 ok, 1 failed, 2 bad input or option, 130 interrupted.
"""


def _numbers(option: str, value: str | None, kind=int, example: str = "2,2,1,1") -> tuple | None:
    if value is None:
        return None
    try:
        return tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers such as {example} (got {value!r})") from None


def _render_options(model, steps, guidance_audio, guidance_ref, guidance_scale, window_steps, face_box,
                    no_face_embedding, face_embedding, motion_scale, init, noise_level, seed, size, fit, fps,
                    clip_frames, motion_frames, crf, decoder, overlap, separate_vocals=False):
    """The command line's render options as :class:`RenderOptions` (checked)."""
    from .options import RenderOptions

    if no_face_embedding and face_embedding is not None:
        raise InputError("--no-face-embedding and --face-embedding exclude each other; pick one")
    embedding = "none" if no_face_embedding else (str(face_embedding) if face_embedding is not None else "auto")
    options = RenderOptions(model=model.value, num_inference_steps=steps, guidance_audio=guidance_audio,
                            guidance_ref=guidance_ref, guidance_scale=guidance_scale,
                            window_steps=_numbers("--window-steps", window_steps), init=init.value,
                            noise_level=noise_level, seed=seed, fps=fps, size=size, fit=fit.value,
                            clip_frames=clip_frames, motion_frames=motion_frames, crf=crf,
                            face_box=_numbers("--face-box", face_box, float, "120,80,200,240"),
                            face_embedding=embedding, decoder=decoder, overlap=overlap,
                            separate_vocals=separate_vocals,
                            motion_scale=_numbers("--motion-scale", motion_scale, float, "1,1,1"))
    options.validate()
    return options


# Render options shared by `render` and `batch`.
_Model = Annotated[Model, typer.Option(help="Sampling method (see Methods below).")]
_Steps = Annotated[Optional[int], typer.Option("--steps", help="num_inference_steps per clip",
                                                 show_default="the method's")]
_GuidanceAudio = Annotated[Optional[float], typer.Option(
        help="cfg_a, audio guidance (FADA eqs. 9-10)", show_default="the method's")]
_GuidanceRef = Annotated[Optional[float], typer.Option(
        help="cfg_r, reference guidance", show_default="the method's")]
_GuidanceScale = Annotated[Optional[float], typer.Option(
        help="The CFG scale of --model hallo", show_default="3.5")]
_WindowSteps = Annotated[Optional[str], typer.Option(
        help="PeRFlow steps per window, nearest t=1 first, e.g. 2,2,1,1.", show_default=False)]
_FaceBox = Annotated[Optional[str], typer.Option(
        help="Hallo: the face as x,y,w,h in the image's pixels", show_default="detected")]
_NoFaceEmbedding = Annotated[bool, typer.Option(
        "--no-face-embedding", help="Hallo: use the zero face embedding (no ArcFace model needed).")]
_FaceEmbedding = Annotated[Optional[Path], typer.Option(
        help="Hallo: a .npy file with the face's 512-d ArcFace embedding.", show_default=False)]
_MotionScale = Annotated[str, typer.Option(
        help="Hallo: weights of the pose/background, face and lip audio branches.")]
_Init = Annotated[Init, typer.Option(help="Clip initialisation.")]
_NoiseLevel = Annotated[int, typer.Option(help="Rolling start timestep tau, 1..999.")]
_Seed = Annotated[int, typer.Option(help="Noise seed (same seed, device, dtype: same frames).")]
_Size = Annotated[int, typer.Option(help="Frame side in pixels, a multiple of 64.")]
_Fit = Annotated[Fit, typer.Option(help="Non-square portraits: crop the centre or pad with black.")]
_Fps = Annotated[float, typer.Option(help="Video frame rate, 1..120.")]
_ClipFrames = Annotated[int, typer.Option(help="Frames generated together (F).")]
_MotionFrames = Annotated[Optional[int], typer.Option(
        help="Latents carried between clips (M)", show_default="the model's, 4")]
_Crf = Annotated[int, typer.Option(help="x264 quality, 0 (lossless)..51.")]
_Decoder = Annotated[str, typer.Option(help="Latent decoder: vae, or taesd (fast tiny autoencoder).")]
_Overlap = Annotated[bool, typer.Option("--overlap/--no-overlap",
                                          help="Encode the video in a background thread.")]
_Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the denoising U-Net and decoder.")]
_SeparateVocals = Annotated[bool, typer.Option(
        "--separate-vocals", help="Audio features from the speech's separated vocals (music or noise behind it; "
        "needs the vocals extra and 'avatar weights download hallo-audio-separator').")]
_AudioFeatures = Annotated[Optional[Path], typer.Option(
        help="Features from 'avatar audio encode' instead of the speech's own (the speech is still muxed).",
        show_default=False)]
_Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
_Dtype = Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16.")]
_Weights = Annotated[Optional[Path], typer.Option(help="Weights folder (as save_pretrained writes it).",
                                                    show_default=False)]
_RandomWeights = Annotated[bool, typer.Option("--random-weights", help="Use random weights (tests, demos, speed).")]
_AddCfgLayers = Annotated[bool, typer.Option(
        "--add-cfg-layers", help="For --model fada with weights lacking CFG-token layers: add zero-initialised ones.")]
_Arch = Annotated[Arch, typer.Option(help="Architecture for --random-weights.")]


@app.command(epilog=RENDER_EPILOG)
def render(
    image: Annotated[Path, typer.Argument(help="Portrait image (any format Pillow reads).", show_default=False)],
    audio: Annotated[Path, typer.Argument(help="Speech (wav, mp3, flac, ogg, m4a, or a video's audio track).",
                                          show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output mp4",
                                                   show_default="<image stem>.mp4")] = None,
    model: _Model = Model.osa_lcm,
    steps: _Steps = None,
    guidance_audio: _GuidanceAudio = None,
    guidance_ref: _GuidanceRef = None,
    guidance_scale: _GuidanceScale = None,
    window_steps: _WindowSteps = None,
    face_box: _FaceBox = None,
    no_face_embedding: _NoFaceEmbedding = False,
    face_embedding: _FaceEmbedding = None,
    motion_scale: _MotionScale = "1,1,1",
    init: _Init = Init.gaussian,
    noise_level: _NoiseLevel = 980,
    seed: _Seed = 0,
    size: _Size = 512,
    fit: _Fit = Fit.crop,
    fps: _Fps = 25.0,
    clip_frames: _ClipFrames = 16,
    motion_frames: _MotionFrames = None,
    crf: _Crf = 18,
    decoder: _Decoder = "vae",
    overlap: _Overlap = True,
    compile: _Compile = False,
    separate_vocals: _SeparateVocals = False,
    audio_features: _AudioFeatures = None,
    device: _Device = "auto",
    dtype: _Dtype = "auto",
    weights: _Weights = None,
    random_weights: _RandomWeights = False,
    add_cfg_layers: _AddCfgLayers = False,
    arch: _Arch = Arch.full,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the result on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")] = False,
) -> None:
    """Render IMAGE speaking AUDIO to an mp4 with the speech muxed in."""
    from .options import prepare_job

    options = _render_options(model, steps, guidance_audio, guidance_ref, guidance_scale, window_steps, face_box,
                              no_face_embedding, face_embedding, motion_scale, init, noise_level, seed, size, fit, fps,
                              clip_frames, motion_frames, crf, decoder, overlap, separate_vocals)
    output = output if output is not None else Path(f"{image.stem}.mp4")
    # Inputs are read and checked before the models load, so that bad input fails in a second.
    job = prepare_job(image, audio, output, options, overwrite, audio_features)
    from .pipeline import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

    pipe = _load_pipeline(weights, random_weights, arch, str(dev), str(dt).replace("torch.", ""), options.model,
                          quiet, compile=compile, add_cfg_layers=add_cfg_layers)
    pipe.warn = lambda message: _note(message, quiet)

    with _progress(quiet) as on_clip, _signals_interrupt():  # SIGTERM cleans up like Ctrl-C
        result = pipe.render_job(job, on_clip=on_clip)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _note(f"wrote {result.output}: {result.frames} frames, {result.duration_s:.2f} s at {result.fps:g} fps, "
              f"{result.model} NFE {result.nfe}, {result.wall_s:.1f} s wall (RTF {result.rtf:.2f}) on {result.device}",
              quiet)


BATCH_EPILOG = """\
[bold]Jobs file[/bold]: CSV with the header image,audio,output (optional columns: seed, init, model, steps,
noise_level, fps, size, fit, crf, decoder, guidance_audio, guidance_ref, guidance_scale, clip_frames,
face_box, motion_scale, face_embedding, separate_vocals, audio_features), or JSON Lines with the same keys, or - for
standard input (a headerless CSV is read as image,audio,output). Relative paths start at the jobs
file's folder.

[bold]Examples[/bold]

  avatar batch jobs.csv --weights ./weights --json > results.jsonl
  find faces -name '*.png' -printf '%p,speech.wav,out/%f.mp4\\n' | avatar batch - --weights ./w
  avatar batch jobs.csv --weights ./w --resume          [dim]# after a crash: finished jobs are kept[/dim]
  avatar batch jobs.csv --weights ./w --shard $SLURM_ARRAY_TASK_ID/8

[bold]Exit codes[/bold]: 0 every job ok (or skipped), 1 at least one job failed (the others rendered),
2 bad jobs file or option (nothing rendered), 130 interrupted (the running job leaves no file).
"""


@app.command(epilog=BATCH_EPILOG)
def batch(
    jobs: Annotated[str, typer.Argument(help="Jobs file (CSV or JSON Lines), or - for standard input.",
                                        show_default=False)],
    resume: Annotated[bool, typer.Option("--resume", help="Skip jobs the ledger shows finished and unchanged.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: only the jobs whose index mod N is I.",
                                                 show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option(
        help="Comma-separated devices (cuda:0,cuda:1): one process per device, each a shard.",
        show_default=False)] = None,
    ledger: Annotated[Optional[Path], typer.Option(help="Ledger file",
                                                   show_default="JOBS.ledger.jsonl beside the jobs file")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job.")] = False,
    model: _Model = Model.osa_lcm,
    steps: _Steps = None,
    guidance_audio: _GuidanceAudio = None,
    guidance_ref: _GuidanceRef = None,
    guidance_scale: _GuidanceScale = None,
    window_steps: _WindowSteps = None,
    face_box: _FaceBox = None,
    no_face_embedding: _NoFaceEmbedding = False,
    face_embedding: _FaceEmbedding = None,
    motion_scale: _MotionScale = "1,1,1",
    init: _Init = Init.gaussian,
    noise_level: _NoiseLevel = 980,
    seed: _Seed = 0,
    size: _Size = 512,
    fit: _Fit = Fit.crop,
    fps: _Fps = 25.0,
    clip_frames: _ClipFrames = 16,
    motion_frames: _MotionFrames = None,
    crf: _Crf = 18,
    decoder: _Decoder = "vae",
    overlap: _Overlap = True,
    compile: _Compile = False,
    separate_vocals: _SeparateVocals = False,
    device: _Device = "auto",
    dtype: _Dtype = "auto",
    weights: _Weights = None,
    random_weights: _RandomWeights = False,
    add_cfg_layers: _AddCfgLayers = False,
    arch: _Arch = Arch.full,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per job on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-job status lines.")] = False,
) -> None:
    """Render many jobs with the models loaded once: a ledger, --resume, --shard, no lost work."""
    import time as _time

    from . import batch as batchmod
    from .pipeline import resolve_device, resolve_dtype

    options = _render_options(model, steps, guidance_audio, guidance_ref, guidance_scale, window_steps, face_box,
                              no_face_embedding, face_embedding, motion_scale, init, noise_level, seed, size, fit, fps,
                              clip_frames, motion_frames, crf, decoder, overlap, separate_vocals)
    if devices:
        raise typer.Exit(_batch_on_devices(jobs, devices, shard, quiet))
    job_list = batchmod.select_shard(batchmod.read_jobs(jobs, options), shard)
    batchmod.check_outputs(job_list, overwrite, resume)
    ledger_path = ledger or batchmod.default_ledger(jobs)
    book = batchmod.Ledger(ledger_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    pipe = _load_pipeline(weights, random_weights, arch, str(dev), str(dt).replace("torch.", ""), options.model,
                          True, compile=compile, add_cfg_layers=add_cfg_layers)
    pipe.warn = lambda message: _note(message, quiet)

    def report(result, position, total):
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
            sys.stdout.flush()
        if quiet:
            return
        if result.status == "failed":
            line = f"[{position}/{total}] FAILED {result.error}"
        elif result.status == "skipped":
            line = f"[{position}/{total}] skipped {result.output} (finished, unchanged)"
        else:
            line = f"[{position}/{total}] ok {result.output} ({result.seconds:.1f} s, RTF {result.rtf:.2f})"
        typer.echo(line, err=True)

    start = _time.perf_counter()
    with _signals_interrupt():
        results = batchmod.run(pipe, job_list, options, book, resume=resume, fail_fast=fail_fast, report=report)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    _note(f"batch: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {_time.perf_counter() - start:.1f} s; ledger {ledger_path}", quiet)
    if counts["failed"]:
        raise typer.Exit(1)


class _signals_interrupt:
    """SIGTERM acts like Ctrl-C (KeyboardInterrupt: the running job cleans up); a second Ctrl-C or
    SIGTERM exits at once with code 130, removing the temporary output first."""

    def __enter__(self):
        import signal

        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.seen = False

        def handler(signum, frame):
            if self.seen:
                from .media.video import remove_partial_files

                remove_partial_files()
                os._exit(130)
            self.seen = True
            raise KeyboardInterrupt

        for sig in self.previous:
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        return False


def _batch_on_devices(jobs: str, devices: str, shard: str | None, quiet: bool) -> int:
    """One `avatar batch` process per device, each taking shard i/N; returns the worst exit code."""
    import signal
    import subprocess
    import tempfile

    from . import batch as batchmod

    if shard is not None:
        raise InputError("--devices makes its own shards; leave out --shard")
    names = [d.strip() for d in devices.split(",") if d.strip()]
    argv = list(_ARGV)
    drop = {"--devices", "--device"}
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = True
            continue
        if any(arg.startswith(d + "=") for d in drop):
            continue
        rest.append(arg)
    source = jobs
    if jobs == "-":  # children cannot share our stdin: write the jobs once, paths made absolute
        parsed = batchmod.read_jobs("-")
        handle = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, prefix="avatar-jobs-")
        for job in parsed:  # every column of the row, paths made absolute
            handle.write(json.dumps(job.row) + "\n")
        handle.close()
        source = handle.name
    if "--ledger" not in rest and not any(a.startswith("--ledger=") for a in rest):
        rest += ["--ledger", str(batchmod.default_ledger(jobs))]  # one ledger, appended by every shard
    rest = [source if a == jobs else a for a in rest]
    children = []
    for i, name in enumerate(names):
        cmd = [sys.executable, "-m", "avatar_cli", *rest, "--shard", f"{i}/{len(names)}", "--device", name]
        children.append(subprocess.Popen(cmd))
        _note(f"batch: shard {i}/{len(names)} on {name} (pid {children[-1].pid})", quiet)
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.send_signal(signal.SIGINT)
        for child in children:
            child.wait()
        raise
    return max(codes)


class _progress:
    """A rich progress bar over clips on stderr; silent with --quiet or when stderr is not a TTY."""

    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("rendering clips"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.bar.__enter__()

        def on_clip(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task("clips", total=total)
            self.bar.update(self.task, completed=done)

        return on_clip

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


@app.command()
def info(
    arch: Annotated[Arch, typer.Option(help="Architecture preset to describe.")] = Arch.full,
    weights: Annotated[Optional[Path], typer.Option(help="Describe a weights folder instead.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each model's parameter count, and the software and devices found."""
    import torch

    from .models.bundle import AvatarModels

    if weights is not None:
        models = AvatarModels.from_pretrained(weights)
    else:
        models = AvatarModels.from_preset(arch.value, device="meta")
    counts = models.parameter_counts()
    import diffusers
    import transformers

    facts = {
        "arch": arch.value if weights is None else None, "weights": str(weights) if weights else None,
        "parameters": counts, "total_parameters": sum(counts.values()),
        "versions": {"avatar-cli": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if as_json:
        typer.echo(json.dumps(facts))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"avatar model ({weights or arch.value})")
    table.add_column("model")
    table.add_column("parameters", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    table.add_row("total", f"{facts['total_parameters']:,}", style="bold")
    console = Console()
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in facts["versions"].items()))
    console.print(f"CUDA devices: {', '.join(facts['cuda_devices']) or 'none'}")


BENCH_EPILOG = """\
[bold]Examples[/bold]

  avatar bench --arch tiny --size 64 --seconds 4 --repeat 2
  avatar bench --model osa-lcm,fada,teacher --size 512 --seconds 10 --device cuda --json
  avatar bench --weights ./hallo --model hallo --audio speech.wav --plot bench.png

Random weights (the default, said in the report) run the full architecture: speed does not depend on
weight values. Numbers: median and min over --repeat warm runs; the cold start separately.
"""


@app.command(epilog=BENCH_EPILOG)
def bench(
    model: Annotated[str, typer.Option(help="Sampling method(s), comma-separated.")] = "osa-lcm",
    arch: Annotated[Arch, typer.Option(help="Architecture for random weights.")] = Arch.full,
    size: Annotated[int, typer.Option(help="Frame side in pixels.")] = 512,
    seconds: Annotated[float, typer.Option(help="Length of the synthetic speech.")] = 10.0,
    audio: Annotated[Optional[Path], typer.Option(help="Speech to use instead.", show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option(help="Portrait to use", show_default="synthetic")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16, bfloat16.")] = "auto",
    decoder: Annotated[str, typer.Option(help="vae or taesd.")] = "vae",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the denoising U-Net and decoder.")] = False,
    repeat: Annotated[int, typer.Option(help="Warm runs.")] = 3,
    weights: Annotated[Optional[Path], typer.Option(help="A weights folder instead of random weights.",
                                                    show_default=False)] = None,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count one clip's FLOPs (an extra clip).")] = True,
    overlap: Annotated[bool, typer.Option("--overlap/--no-overlap", help="Encode video in a background thread.")] = True,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of the stages and RTF (matplotlib).",
                                                      show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per method on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress notes.")] = False,
) -> None:
    """Measure render speed: RTF, first-frame delay, seconds per stage, NFE, FLOPs, peak memory."""
    from . import bench as benchmod
    from .options import RenderOptions
    from .sampling.methods import METHODS

    models = [m.strip() for m in model.split(",") if m.strip()]
    unknown = [m for m in models if m not in METHODS]
    if unknown:
        raise InputError(f"--model {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if repeat < 1:
        raise InputError(f"--repeat must be >= 1 (got {repeat})")
    if not 0.1 <= seconds <= 3600:
        raise InputError(f"--seconds must be 0.1..3600 (got {seconds:g})")
    RenderOptions(size=size, decoder=decoder).validate()
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'avatar-cli[plot]'") from None
    if weights is None:
        _note(f"note: RANDOM weights ({arch.value} architecture): timings are real, the frames are noise", quiet)
    reports = []
    for name in models:
        report = benchmod.bench(name, arch.value, size, seconds, audio, image, device, dtype, decoder, compile, repeat,
                                weights, flops, overlap, log=lambda m: _note(m, quiet),
                                command=shlex.join(["avatar", *_ARGV]))
        reports.append(report)
        if as_json:
            typer.echo(json.dumps(report))
        else:
            _print_bench(report)
    if plot_path is not None:
        benchmod.plot(reports, plot_path)
        _note(f"wrote {plot_path}", quiet)


def _print_bench(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"avatar bench: {r['model']} ({r['weights']}), {r['size']} px, {r['video_s']:.1f} s video, "
                        f"{r['device']}, {r['dtype']}")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("min", justify="right")
    table.add_row("RTF (wall s / video s)", f"{r['rtf']['median']:.3f}", f"{r['rtf']['min']:.3f}")
    if r["first_frame_delay_s"]:
        table.add_row("first-frame delay (s)", f"{r['first_frame_delay_s']['median']:.3f}",
                      f"{r['first_frame_delay_s']['min']:.3f}")
    table.add_row("frames per second", f"{r['fps']['median']:.2f}", f"{r['fps']['min']:.2f}")
    for stage, v in r["stages"].items():
        table.add_row(f"  {stage} (s)", f"{v['median']:.3f}", f"{v['min']:.3f}")
    table.add_row("  sampling per NFE (s)", f"{r['sampling_per_nfe_s']['median']:.4f}",
                  f"{r['sampling_per_nfe_s']['min']:.4f}")
    console = Console()
    console.print(table)
    facts = [f"NFE {r['nfe']}", f"cold start {r['cold_start_s']:.1f} s", f"peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB"]
    if r["tflop_per_video_s"] is not None:
        facts += [f"{r['tflop_per_video_s']:.3g} TFLOP per video second", f"{r['tflops_achieved']:.3g} TFLOP/s achieved"]
        if r["tflops_share_of_peak"] is not None:
            facts.append(f"{100 * r['tflops_share_of_peak']:.1f} % of the {r['bf16_peak_tflops']:g} TFLOP/s bf16 peak")
    if r["taesd_psnr_db"] is not None:
        facts.append(f"TAESD vs VAE PSNR {r['taesd_psnr_db']:.1f} dB")
    console.print(", ".join(facts))


audio_app = typer.Typer(help="Audio features: encode speech once, render many times.", no_args_is_help=True,
                        rich_markup_mode="rich")
app.add_typer(audio_app, name="audio")


def _load_pipeline(weights: Path | None, random_weights: bool, arch: Arch, device: str, dtype: str, model: str,
                   quiet: bool, compile: bool = False, add_cfg_layers: bool = False):
    """The pipeline for --weights DIR, --random-weights, or the installed (converted) components."""
    from .pipeline import AvatarPipeline
    from .sampling.methods import METHODS
    from .weights import converted_folder, missing_for

    method = METHODS[model]
    wants_cfg_tokens = method.guidance == "cfg-tokens"
    if weights is not None and random_weights:
        raise InputError("--weights and --random-weights exclude each other; pick one")
    if random_weights:
        _note(f"note: RANDOM weights ({arch.value} architecture): the video shows noise, not a face", quiet)
        return AvatarPipeline.from_preset(arch.value, device=device, dtype=dtype, cfg_tokens=4 if wants_cfg_tokens else 0,
                                          family=method.family, compile=compile)
    if weights is None:  # the installed components: a folder that 'avatar weights convert' wrote
        weights = converted_folder(model)
        if weights is None:
            raise InputError(f"--model {model} needs weights that are not installed: {'; '.join(missing_for(model))}. "
                             f"Or pass --weights DIR (a folder in the project's layout) or --random-weights")
    pipe = AvatarPipeline.from_pretrained(weights, device=device, dtype=dtype, compile=compile)
    if wants_cfg_tokens and add_cfg_layers and not pipe.models.denoising_unet.config.cfg_tokens:
        _note("note: added zero-initialised CFG-token layers: --model fada runs without guidance", quiet)
        pipe.models.denoising_unet = pipe.models.denoising_unet.with_cfg_layers()
    return pipe


@audio_app.command("encode")
def audio_encode(
    audio: Annotated[Path, typer.Argument(help="Speech in any format render reads.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Features file to write (.safetensors).",
                                         show_default=False)],
    fps: Annotated[float, typer.Option(help="Video frame rate the features are for.")] = 25.0,
    model: Annotated[Model, typer.Option(help="The sampling method the features are for (its model family).")]
    = Model.osa_lcm,
    clip_frames: Annotated[int, typer.Option(help="Clip length (Hallo pads the audio to whole clips).")] = 16,
    separate_vocals: _SeparateVocals = False,
    weights: Annotated[Optional[Path], typer.Option(help="Weights folder.", show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random weights (tests, demos).")] = False,
    arch: Annotated[Arch, typer.Option(help="Architecture for --random-weights.")] = Arch.full,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes.")] = False,
) -> None:
    """Compute a speech's per-frame wav2vec2 features once (frames x layers x dim, with fps, model
    fingerprint and audio sha256) for 'avatar render --audio-features' or 'avatar batch'.

    Example: avatar audio encode speech.wav -o speech.features.safetensors --weights ./weights
    """
    from .media.audio import load_speech
    from .media.features import save_features
    from .media.video import check_output_path
    from .pipeline import resolve_device

    if not 1 <= fps <= 120:
        raise InputError(f"--fps must be 1..120 (got {fps:g})")
    check_output_path(output, overwrite)
    load_speech(audio)  # fail on bad audio before loading a model
    if separate_vocals:
        from .media.vocals import check_separator_installed

        check_separator_installed()
    pipe = _load_pipeline(weights, random_weights, arch, str(resolve_device(device)), "float32", model.value, quiet)
    features, meta = pipe.encode_audio_file(audio, fps, clip_frames, separate_vocals)
    save_features(output, features, meta)
    result = {"output": str(output), "frames": int(meta["frames"]), "fps": fps,
              "duration_s": round(int(meta["frames"]) / fps, 4), "feature_shape": list(features.shape),
              "model": meta["model"], "audio_sha256": meta["audio_sha256"]}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _note(f"wrote {output}: {result['frames']} frames at {fps:g} fps, features {tuple(features.shape)}", quiet)


weights_app = typer.Typer(help="Model weights: list, download, verify, locate (manifest: weights.toml).",
                          no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(weights_app, name="weights")

ManifestOption = Annotated[Optional[Path], typer.Option(
    "--manifest", help="A weights manifest to use instead of the shipped weights.toml (or $AVATAR_MANIFEST).",
    show_default=False)]
LocalDirOption = Annotated[Optional[Path], typer.Option(
    "--local-dir", help="Weights folder with one sub-folder per component (or $AVATAR_WEIGHTS_DIR) "
    "instead of the Hugging Face cache.", show_default=False)]


@weights_app.command("list", epilog="[bold]Examples[/bold]\n\n  avatar weights list\n\n  avatar weights list --json\n\n  AVATAR_WEIGHTS_DIR=/media/usb/avatar-weights avatar weights list")
def weights_list(
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show every manifest entry: size, licence, availability, whether and where it is installed."""
    from . import weights as w

    rows = []
    for c in w.load_manifest(manifest).values():
        path = w.installed_path(c, local_dir)
        rows.append({"name": c.name, "description": c.description, "repo_id": c.repo_id, "revision": c.revision,
                     "size_bytes": c.size, "licence": c.licence, "available": c.available,
                     "reason": c.reason or None, "installed": path is not None,
                     "path": None if path is None else str(path), "used_by": list(c.used_by)})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table(title="avatar-cli weights")
    table.add_column("name", no_wrap=True)
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("licence", overflow="fold", max_width=12)
    table.add_column("available")
    table.add_column("installed")
    table.add_column("path / reason", overflow="fold", min_width=30)
    for r in rows:
        size = decimal(r["size_bytes"]) if r["size_bytes"] else ("?" if r["available"] else "-")
        table.add_row(r["name"], size, r["licence"],
                      "yes" if r["available"] else "[red]no[/red]", "[green]yes[/green]" if r["installed"] else "no",
                      r["path"] or r["reason"] or "")
    Console().print(table)


@weights_app.command("download", epilog="[bold]Examples[/bold]\n\n  avatar weights download hallo\n\n  avatar weights download sd-vae-ft-mse wav2vec2-base-960h --quiet\n\n  avatar weights download --all --local-dir /media/usb/avatar-weights")
def weights_download(
    names: Annotated[Optional[list[str]], typer.Argument(help="Components to download.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every available component.")] = False,
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per component.")] = False,
) -> None:
    """Download components at their pinned revisions and check every file's sha256.

    Resumable (run it again after an interruption). Respects HF_HOME, HF_HUB_CACHE, HF_ENDPOINT,
    HF_TOKEN and HF_HUB_OFFLINE. A file whose sha256 differs from the manifest is deleted.
    """
    from . import weights as w

    known = w.load_manifest(manifest)
    if all_ == bool(names):
        raise InputError("name the components to download, or pass --all (see 'avatar weights list')")
    chosen = [c for c in known.values() if c.available] if all_ else w.select(known, names)
    for c in chosen:
        path, reports = w.download(c, local_dir, quiet=quiet or as_json, log=lambda m: _note(m, False))
        if as_json:
            typer.echo(json.dumps({"name": c.name, "path": str(path),
                                   "files": [{"path": r.path, "status": r.status, "sha256": r.sha256} for r in reports]}))
        else:
            _note(f"{c.name}: {len(reports)} file(s) verified in {path}", quiet)


@weights_app.command("verify", epilog="[bold]Examples[/bold]\n\n  avatar weights verify\n\n  avatar weights verify hallo --json")
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Components.",
                                                         show_default="every installed one")] = None,
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-hash installed files; exit 1 on any mismatch (or a named component not installed)."""
    from . import weights as w

    known = w.load_manifest(manifest)
    chosen = w.select(known, names) if names else [c for c in known.values() if c.available]
    reports = [w.verify(c, local_dir, log=lambda m: _note(m, as_json)) for c in chosen]
    if not names:
        reports = [r for r in reports if r.installed]
    failed = [r for r in reports if not r.ok]
    if as_json:
        typer.echo(json.dumps([{"name": r.component, "installed": r.installed, "path": r.path, "ok": r.ok,
                                "files": [vars(f) for f in r.files]} for r in reports]))
    else:
        for r in reports:
            if not r.installed:
                typer.echo(f"{r.component}: not installed", err=True)
            for f in r.files:
                line = f"{r.component}/{f.path}: {f.status}" + (f" ({f.detail})" if f.detail else "")
                typer.echo(line, err=f.status == "mismatch")
        if not reports:
            _note("no installed components to verify")
    if failed:
        raise typer.Exit(1)


@weights_app.command("path", epilog="[bold]Examples[/bold]\n\n  avatar weights path taesd\n\n  ls \"$(avatar weights path hallo)/hallo\"")
def weights_path(
    name: Annotated[str, typer.Argument(help="Component name.", show_default=False)],
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
) -> None:
    """Print the local folder of an installed component (for scripts); exit 1 if not installed."""
    from . import weights as w

    (component,) = w.select(w.load_manifest(manifest), [name])
    path = w.installed_path(component, local_dir)
    if path is None:
        why = component.reason if not component.available else f"run 'avatar weights download {name}'"
        raise WeightsError(f"{name} is not installed: {why}")
    typer.echo(str(path))


class Source(str, Enum):
    sd15 = "sd15"
    hallo = "hallo"


@weights_app.command("convert", epilog="[bold]Examples[/bold]\n\n  avatar weights convert --from hallo\n\n  avatar weights convert --from hallo net.pth --vae sd-vae-ft-mse --wav2vec2 wav2vec2-base-960h -o ./hallo-weights\n\n  avatar weights convert --from sd15 v1-5-pruned.safetensors --motion-module mm_sd_v15_v2.ckpt -o ./weights")
def weights_convert(
    source: Annotated[Source, typer.Option("--from", help="What the checkpoint is.", show_default=False)],
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="sd15: the single-file checkpoint; hallo: hallo/net.pth",
        show_default="the installed 'hallo' component's")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder to write [default for hallo: $AVATAR_HOME/converted/hallo, which render "
        "uses without --weights]", show_default=False)] = None,
    motion_module: Annotated[Optional[Path], typer.Option(
        help="sd15: an AnimateDiff motion-module file (mm_sd_v15_v2.ckpt layout).", show_default=False)] = None,
    vae: Annotated[Optional[Path], typer.Option(help="hallo: its sd-vae-ft-mse folder.", show_default=False)] = None,
    wav2vec2: Annotated[Optional[Path], typer.Option(help="hallo: its wav2vec2-base-960h folder.",
                                                     show_default=False)] = None,
    arch: Annotated[Arch, typer.Option(help="Architecture the checkpoint has.")] = Arch.full,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key report as JSON.")] = False,
) -> None:
    """Convert public checkpoints into the project's folder layout, reporting every key.

    [bold]--from sd15 FILE[/bold] [--motion-module FILE] -o DIR: an SD1.5 single file (original LDM keys)
    -> vae/, reference_net/, denoising_unet/ (2D part; temporal attention from the motion module;
    audio blocks left at their initialisation), scheduler/.

    [bold]--from hallo[/bold] [NET.pth]: Hallo's released net.pth, sd-vae-ft-mse and wav2vec2 -> a complete
    folder for --model hallo, with zero missing and zero unexpected keys. Without arguments it reads
    the installed 'hallo' component (avatar weights download hallo).

    Fails on any key that fits nowhere.
    """
    from .convert import convert_hallo, convert_sd15

    if source is Source.sd15:
        if checkpoint is None or output is None:
            raise InputError("--from sd15 needs the checkpoint file and -o DIR")
        report = convert_sd15(checkpoint, output, motion_module=motion_module, arch=arch.value, overwrite=overwrite)
        hint = "for renders it still needs audio_encoder/, audio_projector/, image_projector/"
    else:
        from . import weights as w

        if checkpoint is None or vae is None or wav2vec2 is None:
            component = w.load_manifest().get("hallo")
            root = w.installed_path(component) if component is not None else None
            if root is None:
                raise InputError("give Hallo's net.pth, --vae DIR and --wav2vec2 DIR, or download them first "
                                 "('avatar weights download hallo')")
            checkpoint = checkpoint or root / "hallo" / "net.pth"
            vae = vae or root / "sd-vae-ft-mse"
            wav2vec2 = wav2vec2 or root / "wav2vec" / "wav2vec2-base-960h"
        output = output or w.converted_dir("hallo")
        output.parent.mkdir(parents=True, exist_ok=True)
        report = convert_hallo(checkpoint, output, vae=vae, wav2vec2=wav2vec2, arch=arch.value, overwrite=overwrite)
        hint = "render with --model hallo --weights " + str(output)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    for c in report.components:
        summary = c.summary()
        groups = ", ".join(f"{n} {g}" for g, n in summary["missing_groups"].items())
        typer.echo(f"{c.name}: {c.loaded} keys loaded, {len(c.missing)} missing" + (f" ({groups})" if groups else "")
                   + ", 0 unexpected")
    ignored = [f"{n} {what}" for what, n in report.ignored.items() if n]
    if ignored:
        typer.echo("ignored: " + ", ".join(ignored))
    _note(f"wrote {report.output}; {hint}")


from .train_cli import data_app, distill_app, train_app  # noqa: E402  (after the app it extends)

app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(distill_app, name="distill")

_ARGV: list[str] = []


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=argv, standalone_mode=False, prog_name="avatar")
        return result if isinstance(result, int) else 0
    except AvatarError as err:
        typer.echo(f"avatar: error: {err}", err=True)
        return err.exit_code
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("avatar: interrupted", err=True)
        return 130
    except typer.TyperException as err:  # usage errors from option parsing (exit code 2)
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `avatar`: the help was printed
            return 0
        name = ctx.command_path if ctx is not None else "avatar"
        message = " ".join(err.format_message().split())
        typer.echo(f"avatar: error: {message} (see '{name} --help')", err=True)
        return err.exit_code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
