"""``avatar eval``: Sync-C / Sync-D (SyncNet), and FID, FVD, identity where installed, of rendered videos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import note

EVAL_EPILOG = """\
[bold]Examples[/bold]

  avatar weights download syncnet                      [dim]# once: SyncNet v2 (syncnet_v2.model)[/dim]
  avatar eval talk.mp4                                  [dim]# Sync-C, Sync-D, offset from its own audio track[/dim]
  avatar eval talk.mp4 --audio speech.wav --json        [dim]# against the input speech[/dim]
  avatar eval talk.mp4 --reference real.mp4 --portrait face.png   [dim]# + FID, FVD, identity (when installed)[/dim]
  avatar eval talk.mp4 --face-box 120,80,240,260        [dim]# no detector: that box on every frame[/dim]
  avatar batch jobs.csv --json > results.jsonl && avatar eval --batch results.jsonl --plot sync.png
  avatar eval --batch results.jsonl --jobs jobs.csv --reference real/   [dim]# + FID/FVD, identity to each portrait[/dim]

Sync-C (higher is better) and Sync-D (lower is better) are the LSE-C / LSE-D of Wav2Lip, computed as
syncnet_python does; faces are found with SCRFD (Ditto's det_10g.onnx) instead of S3FD. Offset in
frames at 25 fps, syncnet_python's sign (0 = in sync). Details: docs/eval.md.
Exit codes: 0 done, 1 failed work (missing weights, a batch video that could not be evaluated), 2 usage error.
"""


def eval_command(
    video: Annotated[Optional[Path], typer.Argument(help="The rendered video (mp4, avi, ...).", show_default=False)] = None,
    audio: Annotated[Optional[Path], typer.Option(help="Speech to compare with", show_default="the video's own audio track")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Real video, or a folder of videos/images: FID and FVD.",
                                                      show_default=False)] = None,
    portrait: Annotated[Optional[Path], typer.Option(help="The source portrait: identity similarity.",
                                                     show_default=False)] = None,
    batch: Annotated[Optional[Path], typer.Option(help="Evaluate every output of an 'avatar batch --json' results file.",
                                                  show_default=False)] = None,
    jobs: Annotated[Optional[Path], typer.Option(help="With --batch: the batch's jobs file, for each output's own "
                                                 "portrait (identity).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="With --batch: write OUTPUT.jsonl and "
                                                   "OUTPUT.md", show_default="RESULTS.eval beside the results")] = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="With --batch: a PNG of Sync-C against Sync-D "
                                                      "(matplotlib).", show_default=False)] = None,
    face: Annotated[str, typer.Option(help="How SyncNet finds the face: auto (SCRFD when installed, else the "
                                           "whole frame), scrfd, whole.")] = "auto",
    face_box: Annotated[Optional[str], typer.Option(help="The face as x,y,w,h in the video's pixels, on every "
                                                         "frame (no detector).", show_default=False)] = None,
    syncnet: Annotated[Optional[Path], typer.Option(help="syncnet_v2.model (or its folder)",
                                                    show_default="the installed 'syncnet' weights")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A folder of evaluation weights (syncnet/, aux_models/ "
                                                    "det_10g.onnx, ...).", show_default=False)] = None,
    vshift: Annotated[int, typer.Option(help="Largest offset searched, in frames (syncnet_python and Wav2Lip: 15).")] = 15,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout (--batch: one line per video, then the "
                                          "summary).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes.")] = False,
) -> None:
    """Score rendered talking-head videos: Sync-C / Sync-D (lip sync, SyncNet), and FID, FVD and
    identity similarity where those metrics are installed and their inputs given."""
    from ..eval import run
    from ..media.face_crop import parse_face_box
    from ..runtime import resolve_device

    if (video is None) == (batch is None):
        raise InputError("give one VIDEO, or --batch RESULTS.jsonl (see 'avatar eval --help')")
    if batch is None and (output is not None or plot_path is not None or jobs is not None):
        raise InputError("--output, --plot and --jobs go with --batch")
    if batch is not None and (audio is not None or face_box is not None):
        raise InputError("--audio and --face-box are per video; with --batch each video's own audio track is used")
    if not 0 <= vshift <= 60:
        raise InputError(f"--vshift must be 0..60 frames (got {vshift})")
    if face not in run.FACE_CHOICES:
        raise InputError(f"--face {face!r}: choose from {', '.join(run.FACE_CHOICES)}")
    for label, path in (("video", video), ("audio", audio), ("portrait", portrait), ("results file", batch),
                        ("jobs file", jobs)):
        if path is not None and not path.is_file():
            raise InputError(f"{label} {path} does not exist; check the path")
    if reference is not None and not reference.exists():
        raise InputError(f"reference {reference} does not exist; give a video or a folder of videos/images")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'avatar-cli[plot]'") from None
    box = parse_face_box(face_box) if face_box is not None else None
    dev = resolve_device(device)
    say = lambda message: note(message, quiet)  # noqa: E731
    if batch is None:
        row = run.evaluate_video(video, audio, reference, portrait, face, box, syncnet, weights, dev, vshift, note=say)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            _print_row(row)
        return
    stem = output if output is not None else batch.with_name(batch.stem + ".eval")

    def report(row, position, total):
        if as_json:
            typer.echo(json.dumps(row))
        if "error" in row:
            say(f"[{position}/{total}] {row['video']}: {row['error']}")
        else:
            say(f"[{position}/{total}] {Path(row['video']).name}: Sync-C {row['sync_c']:.3f}, Sync-D "
                f"{row['sync_d']:.3f}, offset {row['offset_frames']}")

    rows, summary = run.evaluate_batch(batch, reference, portrait, face, syncnet, weights, dev, vshift, note=say,
                                       report=report, jobs=jobs)
    jsonl, md = Path(f"{stem}.jsonl"), Path(f"{stem}.md")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md.write_text(f"# avatar eval: {batch.name}\n\n" + run.markdown_table(rows, summary))
    if plot_path is not None:
        run.plot_batch(rows, plot_path)
        say(f"wrote {plot_path}")
    if as_json:
        typer.echo(json.dumps({"summary": summary, "jsonl": str(jsonl), "markdown": str(md)}))
    else:
        typer.echo(run.markdown_table(rows, summary), nl=False)
    say(f"eval: {summary['evaluated']} of {summary['videos']} videos evaluated; wrote {jsonl} and {md}")
    if summary["failed"]:
        raise typer.Exit(1)


def _print_row(row: dict) -> None:
    lines = [f"{row['video']}: {row['frames']} frames, {row['duration_s']:.2f} s, face from {row['face']}",
             f"  Sync-C (LSE-C, higher is better)  {row['sync_c']:.3f}",
             f"  Sync-D (LSE-D, lower is better)   {row['sync_d']:.3f}",
             f"  offset (frames, 0 = in sync)      {row['offset_frames']}"]
    for key, label in (("fid", "FID"), ("fvd", "FVD")):
        if row.get(key) is not None:
            lines.append(f"  {label:<33} {row[key]:.3f}")
    if row.get("identity") is not None:
        lines.append(f"  identity                          {row['identity']}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EVAL_EPILOG)(eval_command)
