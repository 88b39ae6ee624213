"""``avatar bench``: the CLI of ``bench.py``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import ARGV, PANEL_PERF, ArchOption, Compile, CudaGraph, Device, RenderBatch, note

BENCH_EPILOG = """\
[bold]Examples[/bold]

  avatar bench --arch tiny --size 64 --seconds 4 --repeat 2
  avatar bench --model osa-lcm,fada,teacher --size 512 --seconds 10 --device cuda --json
  avatar bench --weights ./hallo --model hallo --audio speech.wav --plot bench.png
  avatar bench --model ditto --random-weights --dtype auto,float32 --seconds 2 --json   [dim]# bf16 vs fp32[/dim]
  avatar bench --model ditto --stream --seconds 10 --device cuda --json   [dim]# live: first-frame delay[/dim]
  avatar bench --model ditto --weights ... --audio speech.wav --eval --json   [dim]# + Sync-C / Sync-D of the output[/dim]

Random weights (the default, said in the report) run the full architecture: speed does not depend on
weight values. Numbers: median and min over --repeat warm runs; the cold start separately.
"""


def bench(
    model: Annotated[str, typer.Option(help="Model(s) to measure, comma-separated (osa-lcm, fada, teacher, hallo; "
                                            "adv-lcm and fada-balanced as shorthands).")] = "osa-lcm",
    method: Annotated[Optional[str], typer.Option(help="Sampling method for every --model", show_default="each model's")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random weights of --arch (the default "
                                                  "without --weights; speed does not depend on weight values).")] = False,
    arch: ArchOption = "full",
    size: Annotated[int, typer.Option(help="Frame side in pixels.")] = 512,
    seconds: Annotated[float, typer.Option(help="Length of the synthetic speech.")] = 10.0,
    audio: Annotated[Optional[Path], typer.Option(help="Speech to use instead.", show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option(help="Portrait to use", show_default="synthetic")] = None,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="Number format(s), comma-separated: each model is measured in each, warm "
                                            "runs interleaved (A, B, A, B...), plus a comparison of their fps "
                                            "(ratio to the first listed). auto (bf16/fp16 on CUDA; fp32 on CPU, "
                                            "some networks in bf16 where the CPU has native bf16), float32, "
                                            "float16, bfloat16.", rich_help_panel=PANEL_PERF)] = "auto",
    decoder: Annotated[str, typer.Option(help="vae or taesd.")] = "vae",
    compile: Compile = None,  # the report's cold_start_s includes the compile
    render_batch: RenderBatch = 0,
    cuda_graph: CudaGraph = False,
    repeat: Annotated[int, typer.Option(help="Warm runs.")] = 3,
    weights: Annotated[Optional[Path], typer.Option(help="A weights folder instead of random weights.",
                                                    show_default=False)] = None,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count one clip's FLOPs (an extra clip).")] = True,
    overlap: Annotated[bool, typer.Option("--overlap/--no-overlap", help="Encode video in a background thread.")] = True,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of the stages and RTF (matplotlib).",
                                                      show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per method on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress notes.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Stream the speech at real-time pacing: first-frame "
                                         "delay, per-frame delay p50/p95, frames late, RTF.")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (with --stream)", show_default="the method's")] = None,
    motion_overlap: Annotated[Optional[int], typer.Option(help="--model ditto --stream: the DiT window overlap",
                                                          show_default="70")] = None,
    evaluate: Annotated[bool, typer.Option("--eval", help="Add Sync-C / Sync-D of the last warm render to the "
                                           "report ('avatar eval'; SyncNet weights needed).")] = False,
    syncnet: Annotated[Optional[Path], typer.Option(help="With --eval: syncnet_v2.model",
                                                    show_default="the installed 'syncnet' weights")] = None,
) -> None:
    """Measure render speed: RTF, first-frame delay, seconds per stage, NFE, FLOPs, peak memory."""
    from .. import bench as benchmod
    from ..models.catalog import MODEL_CHOICES
    from ..options import RenderOptions

    models = [m.strip() for m in model.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODEL_CHOICES]
    if unknown:
        raise InputError(f"--model {', '.join(unknown)}: choose from {', '.join(MODEL_CHOICES)}")
    if weights is not None and random_weights:
        raise InputError("--weights and --random-weights exclude each other; pick one")
    dtypes = [d.strip() for d in dtype.split(",") if d.strip()]
    from ..runtime import DTYPES

    bad = [d for d in dtypes if d != "auto" and d not in DTYPES]
    if bad or not dtypes:
        raise InputError(f"--dtype {', '.join(bad) or repr(dtype)}: choose from auto, {', '.join(DTYPES)} "
                         "(comma-separated)")
    if len(set(dtypes)) < len(dtypes):
        raise InputError(f"--dtype {dtype}: a dtype is listed twice; list each once")
    if stream and len(dtypes) > 1:
        raise InputError("--stream measures one --dtype at a time; run it once per dtype")
    if repeat < 1:
        raise InputError(f"--repeat must be >= 1 (got {repeat})")
    if not 0.1 <= seconds <= 3600:
        raise InputError(f"--seconds must be 0.1..3600 (got {seconds:g})")
    for name in models:
        RenderOptions(model=name, method=method, size=size, decoder=decoder).validate()
    if render_batch or cuda_graph:  # refused before the first model runs where they cannot run
        from ..load_options import LoadOptions

        for name in models:
            LoadOptions(device=device, compile=compile, render_batch=render_batch,
                        cuda_graph=cuda_graph).checked(RenderOptions(model=name).model)
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'avatar-cli[plot]'") from None
    if stream and evaluate:
        raise InputError("--eval goes with a file render, not --stream")
    evaluator = None
    if evaluate:  # load SyncNet first: a missing file fails before the long benchmark
        from ..eval import run as evalrun
        from ..eval.syncnet import find_syncnet, load_syncnet
        from ..runtime import resolve_device

        eval_device = resolve_device(device)
        net = load_syncnet(find_syncnet(syncnet), eval_device)

        def evaluator(video: Path) -> dict:
            row = evalrun.evaluate_video(video, device=eval_device, net=net, note=lambda m: note(m, quiet))
            return {k: row[k] for k in ("sync_c", "sync_d", "offset_frames", "sync_windows", "face", "vshift")}
    if weights is None:
        note(f"note: RANDOM weights ({arch} architecture): timings are real, the frames are noise", quiet)
    reports = []
    if stream:
        for name in models:
            report = benchmod.bench_stream(name, arch, size, seconds, audio, image, device, dtypes[0], repeat,
                                           weights,
                                           log=lambda m: note(m, quiet), command=shlex.join(["avatar", *ARGV]),
                                           steps=steps, motion_overlap=motion_overlap, render_batch=render_batch,
                                           cuda_graph=cuda_graph)
            if as_json:
                typer.echo(json.dumps(report))
            else:
                note(f"{name} --stream ({report['weights']}, {report['device']}): first frame after "
                     f"{report['first_frame_delay_s']['median']:.3f} s, frame delay p50 "
                     f"{report['frame_delay_p50_s']['median']:.3f} s / p95 {report['frame_delay_p95_s']['median']:.3f} s, "
                     f"{report['frames_late']['median']:g} of {report['frames']} frames late, "
                     f"RTF {report['rtf']['median']:.3f}")
        return
    for name in models:
        measured = benchmod.bench_dtypes(name, arch, size, seconds, audio, image, device, dtypes, decoder,
                                         compile, repeat, weights, flops, overlap, log=lambda m: note(m, quiet),
                                         command=shlex.join(["avatar", *ARGV]), method=method, evaluate=evaluator,
                                         render_batch=render_batch, cuda_graph=cuda_graph)
        reports += measured
        for report in measured:
            if as_json:
                typer.echo(json.dumps(report))
            else:
                _print_bench(report)
        if len(measured) > 1:
            comparison = benchmod.compare_dtypes(measured)
            if as_json:
                typer.echo(json.dumps(comparison))
            else:
                _print_comparison(comparison)
    if plot_path is not None:
        benchmod.plot(reports, plot_path)
        note(f"wrote {plot_path}", quiet)


def _print_bench(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"avatar bench: {r['model']}/{r['method']} ({r['weights']}), {r['size']} px, {r['video_s']:.1f} s video, "
                        f"{r['device']}, --dtype {r['dtype_requested']} ({r['dtype']})")
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
    table.add_row("  sampling per evaluation (s)", f"{r['sampling_per_nfe_s']['median']:.4f}",
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
    if r.get("eval"):
        facts.append(f"Sync-C {r['eval']['sync_c']:.3f}, Sync-D {r['eval']['sync_d']:.3f}, offset "
                     f"{r['eval']['offset_frames']} frames")
    if r["precision"]:
        facts.append("networks: " + ", ".join(f"{n} {p}" for n, p in r["precision"].items()))
    console.print(", ".join(facts))


def _print_comparison(c: dict) -> None:
    """The dtypes of one model side by side: median fps, RTF, and the fps ratio to the first listed."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"avatar bench: {c['model']}/{c['method']}, --dtype side by side (warm runs interleaved; "
                        f"ratio to {c['baseline']})")
    for column, justify in (("--dtype", "left"), ("frames per second", "right"), ("RTF", "right"),
                            (f"fps / {c['baseline']} fps", "right"), ("networks not float32", "left")):
        table.add_column(column, justify=justify)
    for row in c["dtypes"]:
        formats = (", ".join(f"{n} {p}" for n, p in row["precision"].items() if p != "float32") or "-"
                   if row["precision"] else f"all {row['run_dtype']}")
        table.add_row(row["dtype"], f"{row['fps']:.2f}", f"{row['rtf']:.3f}", f"{row['fps_ratio']:.2f}x", formats)
    Console().print(table)




def register(app: typer.Typer) -> None:
    app.command(epilog=BENCH_EPILOG)(bench)
