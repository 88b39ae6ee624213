"""``avatar batch``: many jobs with the models loaded once (``batch.py``: ledger, --resume, --shard); the same
render options as ``avatar render`` (``render_options.py``) and its load flags (``cli/render.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import render_options
from ..render_options import PANEL_IO, PANEL_PERF, PANEL_SCRIPT
from .common import AddCfgLayers, ArchOption, Compile, Device, Dtype, NoDownload, RandomWeights, Weights, cancellable, \
    library_warnings, note, signals_interrupt
from .render import choose, load_options, pipeline_for, refuse_ignored


BATCH_EPILOG = """\
[bold]Jobs file[/bold]: CSV with the header image,audio,output (optional columns: audio_features and every
render option by its name with underscores: model, method, steps, seed, init, start_timestep, fps, size,
fit, crf, decoder, guidance_audio, guidance_ref, guidance_scale, clip_frames, face_box, audio_weights,
face_embedding, separate_vocals, ...), or JSON Lines with the same keys, or - for standard input (a
headerless CSV is read as image,audio,output). Relative paths start at the jobs file's folder.

[bold]Examples[/bold]

  avatar batch jobs.csv --weights ./weights --json > results.jsonl
  find faces -name '*.png' -printf '%p,speech.wav,out/%f.mp4\\n' | avatar batch - --weights ./w
  avatar batch jobs.csv --weights ./w --resume          [dim]# after a crash: finished jobs are kept[/dim]
  avatar batch jobs.csv --weights ./w --shard $SLURM_ARRAY_TASK_ID/8

[bold]Exit codes[/bold]: 0 every job ok (or skipped), 1 at least one job failed (the others rendered),
2 bad jobs file or option (nothing rendered), 130 interrupted (the running job leaves no file).
"""


@render_options.with_render_options
@cancellable("the jobs finished before are kept (--resume skips them)")
def batch(
    jobs: Annotated[str, typer.Argument(help="Jobs file (CSV or JSON Lines), or - for standard input.",
                                        show_default=False)],
    resume: Annotated[bool, typer.Option("--resume", help="Skip jobs the ledger shows finished and unchanged.",
                                         rich_help_panel=PANEL_SCRIPT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.",
                                            rich_help_panel=PANEL_IO)] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: only the jobs whose index mod N is I.",
                                                 show_default=False, rich_help_panel=PANEL_SCRIPT)] = None,
    devices: Annotated[Optional[str], typer.Option(
        help="Comma-separated devices (cuda:0,cuda:1): one process per device, each a shard.",
        show_default=False, rich_help_panel=PANEL_PERF)] = None,
    ledger: Annotated[Optional[Path], typer.Option(help="Ledger file", rich_help_panel=PANEL_SCRIPT,
                                                   show_default="JOBS.ledger.jsonl beside the jobs file")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job.",
                                            rich_help_panel=PANEL_SCRIPT)] = False,
    weights: Weights = None,
    random_weights: RandomWeights = False,
    arch: ArchOption = "full",
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Compile = None,
    add_cfg_layers: AddCfgLayers = False,
    no_download: NoDownload = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per job on stdout.",
                                          rich_help_panel=PANEL_SCRIPT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-job status lines.",
                                        rich_help_panel=PANEL_SCRIPT)] = False,
    **render: object,
) -> None:
    """Render many jobs with the models loaded once: a ledger, --resume, --shard, no lost work."""
    import time

    from .. import batch as batchmod
    from ..models.catalog import check_packages
    from ..pipelines import download_default
    from .common import ARGV

    must_download = choose(render, weights, random_weights, no_download, quiet)
    load = load_options(weights, random_weights, arch, device, dtype, compile, add_cfg_layers)
    options = render_options.build(render)
    options.validate()
    refuse_ignored(options)
    if devices:
        raise typer.Exit(batchmod.run_on_devices(jobs, devices, shard, ARGV, lambda m: note(m, quiet)))
    job_list = batchmod.select_shard(batchmod.read_jobs(jobs, options), shard)
    batchmod.check_outputs(job_list, overwrite, resume)
    ledger_path = ledger or batchmod.default_ledger(jobs)
    book = batchmod.Ledger(ledger_path)
    check_packages(options.model, random_weights)  # before a download or a model load
    if must_download:
        load.resolved()  # a bad --device/--dtype fails before a download
        download_default(lambda m: note(m, False), quiet=quiet)
    pipe = pipeline_for(options, load, True)
    pipe.warn = lambda message: note(message, quiet)

    reported = []  # the jobs done (ok, failed or skipped) before a Ctrl-C

    def report(result, position, total):
        reported.append(result)
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

    start = time.perf_counter()
    with library_warnings(quiet), signals_interrupt():
        try:
            results = batchmod.run(pipe, job_list, options, book, resume=resume, fail_fast=fail_fast, report=report)
        except KeyboardInterrupt:
            raise batch_cancelled(reported, len(job_list), ledger_path) from None
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    note(f"batch: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
         f"in {time.perf_counter() - start:.1f} s; ledger {ledger_path}", quiet)
    if counts["failed"]:
        raise typer.Exit(1)


def batch_cancelled(done: list, total: int, ledger: Path):
    """The :class:`~avatar_cli.errors.Cancelled` of ``avatar batch`` stopped after the jobs in ``done``: what is
    kept (their outputs, the ledger), that the running job left no file, and how to finish the rest."""
    from .. import interrupt
    from ..errors import Cancelled

    counts = {s: sum(r.status == s for r in done) for s in ("ok", "failed", "skipped")}
    left = total - len(done)
    return Cancelled(f"cancelled ({interrupt.signal_name()}) during job {len(done) + 1} of {total}: "
                     f"{counts['ok']} rendered and kept, {counts['skipped']} skipped, {counts['failed']} failed; "
                     f"the running job left no file; {left} not rendered (ledger {ledger}; rerun with --resume "
                     f"to render them)")


def register(app: typer.Typer) -> None:
    app.command(epilog=BATCH_EPILOG)(batch)
