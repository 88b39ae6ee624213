"""``avatar render``: the render options of ``render_options.py`` (``avatar batch``, which takes them too, is
``cli/batch.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import render_options
from ..errors import InputError
from ..render_options import PANEL_IO, PANEL_SCRIPT

PANEL_STREAM = "Streaming (--stream)"
from .common import AddCfgLayers, ArchOption, Compile, CudaGraph, Device, Dtype, Json, NoDownload, Quiet, \
    RandomWeights, RenderBatch, Weights, cancellable, library_warnings, note, progress, signals_interrupt
from .dry_run import render_dry_run  # noqa: E402  (moved; re-exported for old import paths)
from .render_stream import render_streaming  # noqa: E402

RENDER_EPILOG = """\
[bold]Models[/bold] (--model: which weights, and the method each uses by default)

  osa-lcm   an OSA-LCM student ('avatar distill osa-lcm')         osa-lcm
  fada      a FADA student with CFG tokens ('avatar distill fada')  fada
  teacher   the multi-step teacher ('avatar train teacher')         teacher
  hallo     Hallo's checkpoint ('avatar weights convert --from hallo')  hallo
  ditto     Ditto's checkpoint ('avatar weights download ditto')    ditto
  echomimic      EchoMimic ('avatar weights convert --from echomimic')         echomimic
  echomimic-acc  EchoMimic-acc ('... convert --from echomimic --acc')         echomimic-acc

[bold]Methods[/bold] (--method; NFE = denoiser evaluations per clip)

  osa-lcm        OSA-LCM: LCM, 1 step, no guidance                 NFE 1
  adv-lcm        Adv-LCM: LCM, --steps 2 (default) or 4            NFE 2 / 4
  fada           FADA Fast: PeRFlow 6 steps (2,2,1,1), CFG tokens   NFE 6
  fada-balanced  FADA Balanced: PeRFlow 6 steps, 3-way multi-CFG    NFE 18
  teacher        DDIM 25 steps, 3-way multi-CFG (batch of 3)       NFE 75
  hallo          Hallo: DDIM 40 steps, CFG 3.5 (batch of 2)         NFE 80
  ditto          Ditto: motion DiT, DDIM 10 steps, CFG 2            NFE 20 per 80-frame window
  echomimic      EchoMimic: DDIM 30 steps, CFG 2.5, context windows NFE 60 per 12-frame window
  echomimic-acc  EchoMimic-acc: 6 steps, no CFG, context windows    NFE 6 per 12-frame window

The U-Net methods apply to the U-Net models (osa-lcm, fada, teacher, hallo, echomimic, echomimic-acc;
the echomimic methods need EchoMimic's weights); ditto to --model ditto.
--model adv-lcm and --model fada-balanced are shorthands for --model osa-lcm --method adv-lcm and
--model fada --method fada-balanced. Guidance defaults (--guidance-audio / --guidance-ref): fada 6.5 / 2.0,
fada-balanced and teacher 6.5 / 2.5; --guidance-scale: hallo 3.5, ditto 2, echomimic 2.5.

[bold]Hallo[/bold] (--model hallo, weights from 'avatar weights convert --from hallo'): the face is found with MediaPipe (the face extra) or --face-box; its ArcFace embedding comes from InsightFace (the arcface extra), --face-embedding FILE.npy, or --no-face-embedding.

[bold]Clip initialisation[/bold] (LCM and DDIM methods; PeRFlow takes gaussian only): gaussian starts every clip from noise at t=999; rolling starts clip n from clip n-1's latents noised to --start-timestep; combined-rolling is gaussian for the first clip and rolling after.

[bold]Examples[/bold]

  avatar render portrait.png speech.wav                                    [dim]# real face (downloads Ditto once)[/dim]
  avatar render portrait.png speech.wav --preview                          [dim]# fastest installed; says the time[/dim]
  avatar render portrait.png speech.wav --model ditto --dry-run            [dim]# face box, crop, time: no render[/dim]
  avatar render portrait.png speech.wav --model ditto -o talk.mp4          [dim]# real face (Ditto's weights)[/dim]
  avatar render portrait.png speech.wav --model hallo -o talk.mp4          [dim]# real face (converted Hallo weights)[/dim]
  cat speech.wav | avatar render portrait.png - --model ditto --stream -o - | ffplay -   [dim]# live[/dim]
  avatar render portrait.png speech.wav --model ditto --emotion happy --pose-offset 0,10,0 --blink 60
  avatar render face.png voice.wav --weights ./hallo --model hallo --method adv-lcm --steps 4
  avatar render face.jpg speech.mp3 --random-weights --arch tiny --size 128 [dim]# try the pipeline (noise)[/dim]
  avatar render face.png voice.m4a --weights ./w --init rolling --json
  avatar batch jobs.csv --weights ./w --json > results.jsonl                [dim]# many videos, models loaded once[/dim]

[bold]Exit codes[/bold]: 0 ok, 1 failed, 2 bad input or option, 130 interrupted, 141 with --stream -o -:
the reader of standard output went away (docs/usage.md).
"""

def load_options(weights, random_weights, arch, device, dtype, compile=None, add_cfg_layers=False, render_batch=0,
                 cuda_graph=False):
    """The :class:`LoadOptions` of the command line's flags (built once per command)."""
    from ..load_options import LoadOptions

    return LoadOptions(weights=weights, random_weights=random_weights, arch=getattr(arch, "value", arch),
                       device=device, dtype=dtype, compile=compile, add_cfg_layers=add_cfg_layers,
                       render_batch=render_batch, cuda_graph=cuda_graph)


def pipeline_for(options, load, quiet):
    """The CLI's pipeline for ``options`` loaded as ``load`` (a ``LoadOptions``; notes on stderr unless
    ``quiet``)."""
    pipe = load.load(options.model, method=options.method, note=lambda message: note(message, quiet))
    pipe.warn = lambda message: note(message, quiet)
    return pipe


def choose(values: dict, weights, random_weights, no_download: bool, quiet: bool) -> bool:
    """Resolve ``--model auto`` in ``values`` (the render options); True when the model must be
    downloaded first (after the inputs are checked)."""
    from ..models.catalog import DEFAULT_DOWNLOAD
    from ..pipelines import _installed, choose_model

    if values["model"].value != "auto":
        return False
    name = choose_model(weights, random_weights, download=not no_download, note=lambda m: note(m, quiet))
    values["model"] = render_options.ModelChoice(name)
    return name == DEFAULT_DOWNLOAD and weights is None and not random_weights and _installed(name) is None


def refuse_ignored(options) -> None:
    """Options given on the command line that the chosen model would ignore fail in one line: Ditto
    renders at the portrait's own size (its 512-px face crop pasted back), so ``--size`` and ``--fit``
    do not apply to it.

    Raises:
        InputError: ``--size`` or ``--fit`` given with a Ditto render.
    """
    from ..models.catalog import MODELS

    given = [f"--{name}" for name in ("size", "fit") if name in explicit_fields()]
    if given and MODELS[options.model].family == "ditto":
        raise InputError(f"{given[0]} does not apply to --model ditto, which renders at the portrait's own size; "
                         f"leave {given[0]} out (resize the portrait to change the video's size)")


def shorthand_note(values: dict, quiet: bool) -> None:
    """Say once what a former method name given as --model means."""
    from ..models.catalog import SHORTHANDS

    name = values["model"].value
    if name in SHORTHANDS:
        model, method = SHORTHANDS[name]
        note(f"note: --model {name} means --model {model} --method {method}", quiet)


@render_options.with_render_options
@cancellable("nothing written")
def render(
    image: Annotated[Path, typer.Argument(help="Portrait image (any format Pillow reads).", show_default=False)],
    audio: Annotated[Path, typer.Argument(help="Speech (wav, mp3, flac, ogg, m4a, or a video's audio track); "
                                               "- for standard input with --stream.",
                                          show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output mp4 (- : standard output, with "
                                                   "--stream)", rich_help_panel=PANEL_IO,
                                                   show_default="<image stem>.mp4")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.",
                                            rich_help_panel=PANEL_IO)] = False,
    audio_features: Annotated[Optional[Path], typer.Option(
        help="Features from 'avatar audio encode' instead of the speech's own (the speech is still muxed).",
        show_default=False, rich_help_panel=PANEL_IO)] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Write frames while the speech arrives (AUDIO may be - "
                                         "for standard input): fragmented MP4 or MPEG-TS, playable while written.",
                                         rich_help_panel=PANEL_STREAM)] = False,
    realtime: Annotated[bool, typer.Option("--realtime", help="With --stream: read a file AUDIO at speech speed.",
                                           rich_help_panel=PANEL_STREAM)] = False,
    format: Annotated[str, typer.Option("--format", help="With --stream: mp4 (fragmented) or mpegts.",
                                        rich_help_panel=PANEL_STREAM)] = "mp4",
    input_format: Annotated[Optional[str], typer.Option(
        "--input-format", help="With --stream: s16le for raw 16 kHz mono 16-bit PCM, or an ffmpeg format name.",
        rich_help_panel=PANEL_STREAM, show_default="probed by ffmpeg")] = None,
    weights: Weights = None,
    random_weights: RandomWeights = False,
    arch: ArchOption = "full",
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Compile = None,
    render_batch: RenderBatch = 0,
    cuda_graph: CudaGraph = False,
    add_cfg_layers: AddCfgLayers = False,
    no_download: NoDownload = False,
    preview: Annotated[bool, typer.Option(
        "--preview", help="The fastest real model installed here at fast settings (U-Net family: 256 px, TAESD, "
        "<= 10 DDIM steps; Ditto: 5 DiT steps), measured on this device first; says the expected time.",
        rich_help_panel=render_options.PANEL_METHOD)] = False,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate", help="With --preview: measure again instead of using the calibration kept from before.",
        rich_help_panel=render_options.PANEL_METHOD)] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check everything and render nothing: writes <output stem>.dry-run.png (the portrait "
        "with the face box, the crop, the model/method/size/steps) and says the expected time; takes seconds.",
        rich_help_panel=PANEL_SCRIPT)] = False,
    as_json: Json = False,
    quiet: Quiet = False,
    **render: object,
) -> None:
    """Render IMAGE speaking AUDIO to an mp4 with the speech muxed in."""
    import time

    from ..models.catalog import check_packages
    from ..options import prepare_job
    from ..pipelines import download_default
    from . import common

    started = common.STARTED if common.STARTED is not None else time.perf_counter()  # total_s counts from here
    auto = render["model"].value == "auto"
    load = load_options(weights, random_weights, arch, device, dtype, compile, add_cfg_layers, render_batch, cuda_graph)
    must_download = choose(render, weights, random_weights, no_download, quiet)
    options = render_options.build(render)
    if render_batch or cuda_graph:  # refused in one line before any input is read where they cannot run
        load.checked(options.model)
    shorthand_note(render, quiet)
    if not preview:  # --preview picks the model (and its size) itself
        refuse_ignored(options)
    if recalibrate and not preview:
        raise InputError("--recalibrate applies to --preview; add --preview")
    if preview and (stream or str(audio) == "-"):
        raise InputError("--preview does not apply to --stream; pick one")
    if dry_run and (stream or str(audio) == "-"):
        raise InputError("--dry-run does not apply to --stream; check the portrait with a speech file")
    if stream or str(audio) == "-":
        if not stream:
            raise InputError("speech from standard input (-) needs --stream")
        return render_streaming(image, audio, output, overwrite, options, realtime, format, input_format,
                                audio_features, load, as_json, quiet)
    output = output if output is not None else Path(f"{image.stem}.mp4")
    if dry_run:
        return render_dry_run(image, audio, output, overwrite, audio_features, options, load, must_download, preview,
                              as_json, quiet)
    display = progress(quiet)
    with library_warnings(quiet), display as tracker:
        tracker.stage("inputs")
        # Inputs are read and checked before the models load, so that bad input fails in a second.
        job = prepare_job(image, audio, output, options, overwrite, audio_features)
        check_packages(options.model, random_weights)  # before a download or a model load
        if must_download:
            load.resolved()  # a bad --device/--dtype fails before a download
            with display.paused():  # the download shows its own bar
                download_default(lambda m: note(m, False), quiet=quiet)
        tracker.stage("models")
        loading = [0.0]  # seconds building models (preview: every candidate it loads)

        def timed_load(options):
            start = time.perf_counter()
            try:
                return pipeline_for(options, load, quiet)
            finally:
                loading[0] += time.perf_counter() - start

        plan = None
        if preview:
            plan = preview_plan(options, auto and weights is None and not random_weights, job,
                                (image, audio, output, overwrite, audio_features), load, recalibrate, quiet,
                                timed_load)
            pipe, job, options = plan.pipeline, plan.job, plan.job.options
            tracker.expect_seconds(plan.expected_wall_s())
        else:
            pipe = timed_load(options)
            expected = kept_estimate(pipe, options, load, job)
            if expected is not None:
                tracker.expect_seconds(expected)
        with signals_interrupt():  # SIGTERM cleans up like Ctrl-C
            result = pipe.render_job(job, progress=tracker)
    result.load_s = round(loading[0], 4)
    result.total_s = round(time.perf_counter() - started, 4)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), **({"preview": plan.to_dict()} if plan else {})}))
    else:
        note(f"wrote {result.output}: {result.frames} frames, {result.duration_s:.2f} s at {result.fps:g} fps, "
             f"{result.model} ({result.method}, NFE {result.nfe}), render {result.wall_s:.1f} s (RTF "
             f"{result.rtf:.2f}) + models {result.load_s:.1f} s, {result.total_s:.1f} s in all, on {result.device}",
             quiet)


def kept_estimate(pipe, options, load, job) -> float | None:
    """The expected render seconds of this job from a calibration ``--preview`` kept for exactly
    these settings, weights and device (``preview.py``), else None."""
    from ..preview import kept_calibration

    entry = kept_calibration(options.model, pipe.source, options, str(pipe.device), pipe.dtype)
    if entry is None:
        return None
    return entry["once_s"] + entry["seconds_per_video_second"] * job.waveform.shape[0] / 16000


def explicit_fields() -> frozenset[str]:
    """The RenderOptions fields whose options the user gave on this command line (not defaults)."""
    import importlib

    ctx = None
    for module in ("typer._click.globals", "click.globals"):  # recent typer runs its own copy of click
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            break
    if ctx is None:
        return frozenset()
    sources = {o.target: ctx.get_parameter_source(o.name) for o in render_options.RENDER_OPTIONS}
    return frozenset(t for t, source in sources.items()
                     if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"))


def preview_plan(options, auto: bool, job, inputs, load, recalibrate: bool, quiet: bool, load_pipeline=None):
    """``--preview``: calibrate the candidates (every installed model with ``--model auto``, else
    the one chosen) at their preview settings and return the fastest's plan (``preview.py``)."""
    from dataclasses import replace

    from ..models.catalog import AUTO_ORDER
    from ..options import prepare_job
    from ..pipelines import _installed
    from ..preview import describe_plan, plan_preview

    image, audio, output, overwrite, audio_features = inputs
    models = [m for m in AUTO_ORDER if _installed(m) is not None] if auto else []
    models = models or [options.model]
    resolved = load.resolved()

    def load_model(model: str):
        if load_pipeline is not None:
            return load_pipeline(replace(options, model=model))
        return pipeline_for(replace(options, model=model), load, quiet)

    def weights_of(model: str):
        return None if load.random_weights else (load.weights or _installed(model))

    plan = plan_preview(models, lambda o: prepare_job(image, audio, output, o, overwrite, audio_features),
                        load_model, options, explicit_fields(), weights_of, str(resolved.device), resolved.dtype,
                        note=lambda m: note(m, quiet), recalibrate=recalibrate)
    note(describe_plan(plan), quiet)
    return plan


def register(app: typer.Typer) -> None:
    app.command(epilog=RENDER_EPILOG)(render)
