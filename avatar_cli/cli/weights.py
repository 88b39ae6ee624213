"""``avatar weights``: list, show, download, verify, path, convert (manifest: weights.toml)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, WeightsError
from .common import Arch, note

weights_app = typer.Typer(help="Model weights: list, download, verify, locate (manifest: weights.toml).",
                          no_args_is_help=True, rich_markup_mode="rich")

ManifestOption = Annotated[Optional[Path], typer.Option(
    "--manifest", help="A weights manifest to use instead of the shipped weights.toml (or $AVATAR_MANIFEST).",
    show_default=False)]
LocalDirOption = Annotated[Optional[Path], typer.Option(
    "--local-dir", help="Weights folder with one sub-folder per component (or $AVATAR_WEIGHTS_DIR) "
    "instead of the Hugging Face cache.", show_default=False)]


def _size_text(c) -> str:
    """A component's size for tables: "335.1 MB"; ">9.8 MB" when some file sizes are unknown (the
    known part, if at least 1 MB); "?" otherwise; "-" for entries without public weights."""
    from rich.filesize import decimal

    if not c.available:
        return "-"
    if c.size is not None:
        return decimal(c.size)
    return f">{decimal(c.known_size)}" if c.known_size >= 1_000_000 else "?"  # not ">455 bytes" for GBs


def _row(c, path) -> dict:
    return {"name": c.name, "description": c.description, "repo_id": c.repo_id, "revision": c.revision,
            "revision_note": c.revision_note or None, "size_bytes": c.size, "known_size_bytes": c.known_size,
            "licence": c.licence, "licence_short": c.short_licence, "licence_notes": c.licence_notes() or None,
            "available": c.available, "reason": c.reason or None, "installed": path is not None,
            "path": None if path is None else str(path), "used_by": list(c.used_by)}


MARKERS = {"installed": "[green]●[/green]", "available": "○", "none": "[red]✗[/red]"}


@weights_app.command("list", epilog="[bold]Examples[/bold]\n\n  avatar weights list\n\n  avatar weights list --json\n\n  avatar weights show ditto\n\n  AVATAR_WEIGHTS_DIR=/media/usb/avatar-weights avatar weights list")
def weights_list(
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    long: Annotated[bool, typer.Option("--long", "-l", help="The wide table: full licence, path or reason.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every manifest entry, one line each: installed or not, size, short licence, description.

    Markers: ● installed, ○ available, ✗ no public weights. The full licence, files, sizes and path
    of one entry: [bold]avatar weights show NAME[/bold]; the former wide table: --long.
    """
    from .. import weights as w

    entries = [(c, w.installed_path(c, local_dir)) for c in w.load_manifest(manifest).values()]
    if as_json:
        typer.echo(json.dumps([_row(c, path) for c, path in entries]))
        return
    from rich.console import Console
    from rich.table import Table

    if long:
        table = Table(title="avatar-cli weights")
        table.add_column("name", no_wrap=True)
        table.add_column("size", no_wrap=True, justify="right")
        table.add_column("licence", overflow="fold", max_width=24)
        table.add_column("available")
        table.add_column("installed")
        table.add_column("path / reason", overflow="fold", min_width=30)
        for c, path in entries:
            table.add_row(c.name, _size_text(c), c.licence, "yes" if c.available else "[red]no[/red]",
                          "[green]yes[/green]" if path is not None else "no",
                          str(path) if path is not None else c.reason or "")
        Console().print(table)
        return
    # one line per entry: every column but the description as wide as its widest cell (names are
    # typed by users, never cut), the description takes what is left and ends in an ellipsis
    console = Console()
    rows = [(MARKERS["installed" if path is not None else "available" if c.available else "none"], c.name,
             _size_text(c), c.short_licence, c.description) for c, path in entries]
    widths = [1] + [max(len(h), *(len(r[i]) for r in rows)) for i, h in ((1, "name"), (2, "size"), (3, "licence"))]
    rest = max(10, console.width - sum(widths) - len(widths))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1, 0, 0),
                  caption="● installed  ○ available  ✗ not public     details: avatar weights show NAME",
                  caption_justify="left")
    for (header, justify), width in zip((("", "left"), ("name", "left"), ("size", "right"), ("licence", "left")),
                                        widths):
        table.add_column(header, no_wrap=True, width=width, justify=justify)
    table.add_column("description", no_wrap=True, overflow="ellipsis", width=rest)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@weights_app.command("show", epilog="[bold]Examples[/bold]\n\n  avatar weights show ditto\n\n  avatar weights show hallo --json")
def weights_show(
    name: Annotated[str, typer.Argument(help="Component name.", show_default=False)],
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One entry in full: licences, revision, files with sizes and hashes, where it is.

    Repo and revision (with the commit a floating revision resolved to), the full licence and each
    file's own licence where it differs, what it feeds, every file with its size and sha256 (from the
    manifest, recorded on first download, or unknown), and the path or why it is not available.
    """
    from .. import weights as w

    (c,) = w.select(w.load_manifest(manifest), [name])
    path = w.installed_path(c, local_dir)
    info = _row(c, path)
    info["effective_revision"] = w.effective_revision(c) if c.available else None
    info["sha256_note"] = c.sha256_note or None
    files = []
    for f in c.files:
        sha, source = w.expected_sha256(c, f)
        files.append({"path": f.path, "size_bytes": f.size, "sha256": sha, "sha256_source": source,
                      "licence": f.licence or None})
    info["files"] = files
    if as_json:
        typer.echo(json.dumps(info))
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.markup import escape
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    status = ("installed: " + str(path)) if path is not None else \
        (f"not installed ('avatar weights download {c.name}')" if c.available else f"no public weights: {c.reason}")
    revision = c.revision or "-"
    if c.available and not c.pinned:
        resolved = w.effective_revision(c)
        revision += f" (resolved to {resolved})" if resolved != c.revision else " (not resolved yet)"
    for key, value in (("name", c.name), ("description", c.description), ("status", status),
                       ("repo", f"{c.repo_id} @ {revision}" if c.repo_id else ""), ("revision note", c.revision_note),
                       ("size", _size_text(c) + ("" if c.size is not None or not c.available else
                                                 " (some sizes are not published)")),
                       ("licence", c.licence), ("per file", c.licence_notes()), ("used by", ", ".join(c.used_by)),
                       ("sha256", c.sha256_note)):
        if value:
            head.add_row(key, escape(value))
    console = Console()
    console.print(head)
    if c.files:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("file", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("sha256", no_wrap=True)
        for f, row in zip(c.files, files):
            sha = f"{row['sha256'][:12]}… ({row['sha256_source']})" if row["sha256"] else row["sha256_source"]
            label = f.path + (f" [dim]({escape(f.licence)})[/dim]" if f.licence else "")
            table.add_row(label, decimal(f.size) if f.size is not None else "?", sha)
        console.print(table)


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
    from .. import weights as w

    known = w.load_manifest(manifest)
    if all_ == bool(names):
        raise InputError("name the components to download, or pass --all (see 'avatar weights list')")
    chosen = [c for c in known.values() if c.available] if all_ else w.select(known, names)
    for c in chosen:
        try:
            path, reports = w.download(c, local_dir, quiet=quiet or as_json, log=lambda m: note(m, False))
        except WeightsError as err:
            if not c.manual:
                raise
            raise WeightsError(f"{err}; or by hand: {c.manual}") from None
        if as_json:
            typer.echo(json.dumps({"name": c.name, "path": str(path), "revision": w.effective_revision(c),
                                   "licence_notes": c.licence_notes() or None,
                                   "files": [{"path": r.path, "status": r.status, "sha256": r.sha256} for r in reports]}))
        else:
            note(f"{c.name}: {len(reports)} file(s) verified in {path}", quiet)
            if c.licence_notes():  # not silenced by --quiet: it limits what the files may be used for
                note(f"{c.name}: licence: {c.licence_notes()} ('avatar weights show {c.name}')")


@weights_app.command("verify", epilog="[bold]Examples[/bold]\n\n  avatar weights verify\n\n  avatar weights verify hallo --json")
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Components.",
                                                         show_default="every installed one")] = None,
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-hash installed files; exit 1 on any mismatch (or a named component not installed)."""
    from .. import weights as w

    known = w.load_manifest(manifest)
    chosen = w.select(known, names) if names else [c for c in known.values() if c.available]
    reports = [w.verify(c, local_dir, log=lambda m: note(m, as_json)) for c in chosen]
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
            note("no installed components to verify")
    if failed:
        raise typer.Exit(1)


@weights_app.command("path", epilog="[bold]Examples[/bold]\n\n  avatar weights path taesd\n\n  ls \"$(avatar weights path hallo)/hallo\"")
def weights_path(
    name: Annotated[str, typer.Argument(help="Component name.", show_default=False)],
    manifest: ManifestOption = None,
    local_dir: LocalDirOption = None,
) -> None:
    """Print the local folder of an installed component (for scripts); exit 1 if not installed."""
    from .. import weights as w

    (component,) = w.select(w.load_manifest(manifest), [name])
    path = w.installed_path(component, local_dir)
    if path is None:
        why = component.reason if not component.available else f"run 'avatar weights download {name}'"
        raise WeightsError(f"{name} is not installed: {why}")
    typer.echo(str(path))


class Source(str, Enum):
    sd15 = "sd15"
    hallo = "hallo"
    ditto = "ditto"
    echomimic = "echomimic"


@weights_app.command("convert", epilog="[bold]Examples[/bold]\n\n  avatar weights convert --from hallo\n\n  avatar weights convert --from ditto\n\n  avatar weights convert --from echomimic --acc\n\n  avatar weights convert --from ditto ./ditto-talkinghead -o ./ditto-weights\n\n  avatar weights convert --from hallo net.pth --vae sd-vae-ft-mse --wav2vec2 wav2vec2-base-960h -o ./hallo-weights\n\n  avatar weights convert --from sd15 v1-5-pruned.safetensors --motion-module mm_sd_v15_v2.ckpt -o ./weights")
def weights_convert(
    source: Annotated[Source, typer.Option("--from", help="What the checkpoint is.", show_default=False)],
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="sd15: the single-file checkpoint; hallo: hallo/net.pth; ditto: the repo folder (ditto_cfg/, "
        "ditto_pytorch/); echomimic: the repo folder (reference_unet.pth, ...)",
        show_default="the installed 'hallo' / 'ditto' / 'echomimic(-acc)' component's")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder to write [default for hallo and ditto: $AVATAR_HOME/converted/NAME, "
        "which render uses without --weights]", show_default=False)] = None,
    motion_module: Annotated[Optional[Path], typer.Option(
        help="sd15: an AnimateDiff motion-module file (mm_sd_v15_v2.ckpt layout).", show_default=False)] = None,
    vae: Annotated[Optional[Path], typer.Option(help="hallo: its sd-vae-ft-mse folder; echomimic: an sd-vae-ft-mse "
                                                "folder [default: the installed sd-vae-ft-mse component].",
                                                show_default=False)] = None,
    acc: Annotated[bool, typer.Option("--acc", help="echomimic: the step-distilled files (denoising_unet_acc.pth, "
                                      "motion_module_acc.pth) -> --model echomimic-acc.")] = False,
    wav2vec2: Annotated[Optional[Path], typer.Option(help="hallo: its wav2vec2-base-960h folder.",
                                                     show_default=False)] = None,
    arch: Annotated[Arch, typer.Option(help="Architecture the checkpoint has.")] = Arch.full,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A checkpoint of another width: JSON of network -> constructor arguments, complete or "
        "{\"base\": \"tiny\", \"denoising_unet\": {...}} (without \"base\" it starts from --arch); see docs/weights.md.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    manifest: ManifestOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key report as JSON.")] = False,
) -> None:
    """Convert public checkpoints into the project's folder layout, reporting every key.

    [bold]--from sd15 FILE[/bold] [--motion-module FILE] -o DIR: an SD1.5 single file (original LDM keys)
    -> vae/, reference_net/, denoising_unet/ (2D part; temporal attention from the motion module;
    audio blocks left at their initialisation), scheduler/.

    [bold]--from hallo[/bold] [NET.pth]: Hallo's released net.pth, sd-vae-ft-mse and wav2vec2 -> a complete
    folder for --model hallo, with zero missing and zero unexpected keys. Without arguments it reads
    the installed 'hallo' component (avatar weights download hallo).

    [bold]--from ditto[/bold] [DIR]: Ditto's PyTorch release (HF digital-avatar/ditto-talkinghead) ->
    ditto_cfg.json + .safetensors (the cfg pickle, read without running code), models/ (the six .pth,
    every key checked), aux_models/ (HuBERT, face and eye models); hard links where possible.
    Without DIR it reads the installed 'ditto' component (avatar weights download ditto).

    [bold]--from echomimic[/bold] [DIR] [--acc]: EchoMimic's release (HF BadToBest/EchoMimic: reference_unet.pth,
    denoising_unet(_acc).pth, motion_module(_acc).pth, face_locator.pth, audio_processor/whisper_tiny.pt) and
    an sd-vae-ft-mse folder -> a complete folder for --model echomimic (or echomimic-acc with --acc), with
    zero missing and zero unexpected keys. Without DIR it reads the installed 'echomimic' / 'echomimic-acc'
    and 'sd-vae-ft-mse' components.

    [bold]--config FILE[/bold]: the checkpoint's sizes when they are no preset's (a distilled student,
    a pruned model), as JSON: the same strict key checks, and the folder records them (render needs
    no flag).

    Fails on any key that fits nowhere.
    """
    from ..convert import convert_ditto, convert_echomimic, convert_hallo, convert_sd15

    if acc and source is not Source.echomimic:
        raise InputError("--acc applies to --from echomimic only")
    if config is not None and not config.is_file():
        raise InputError(f"config file {config} does not exist; give a JSON file of network -> constructor arguments")
    if source is Source.ditto:
        from .. import weights as w

        if checkpoint is None:
            component = w.load_manifest(manifest).get("ditto")
            checkpoint = w.installed_path(component) if component is not None else None
            if checkpoint is None:
                raise InputError("give the folder of Ditto's files (ditto_cfg/, ditto_pytorch/), or download them "
                                 "first ('avatar weights download ditto')")
        output = output or w.converted_dir("ditto")
        output.parent.mkdir(parents=True, exist_ok=True)
        report = convert_ditto(checkpoint, output, arch=arch.value, overwrite=overwrite, config=config)
        if as_json:
            typer.echo(json.dumps(report.to_dict()))
            return
        for c in report.components:
            typer.echo(f"{c.name}: {c.loaded} keys checked, 0 missing, 0 unexpected")
        arrays = ", ".join(f"{k} {tuple(v)}" for k, v in report.notes["cfg_arrays"].items()) or "no arrays"
        typer.echo(f"cfg: ditto_cfg.json ({arrays})")
        for what, n in report.ignored.items():
            typer.echo(f"ignored: {n} {what}")
        files = report.notes["files"]
        note(f"wrote {report.output} ({files['linked']} file(s) hard-linked, {files['copied']} copied); "
             f"render with --model ditto")
        return
    if source is Source.sd15:
        if checkpoint is None or output is None:
            raise InputError("--from sd15 needs the checkpoint file and -o DIR")
        report = convert_sd15(checkpoint, output, motion_module=motion_module, arch=arch.value, overwrite=overwrite,
                              config=config)
        hint = "for renders it still needs audio_encoder/, audio_projector/, image_projector/"
    elif source is Source.echomimic:
        from .. import weights as w

        name = "echomimic-acc" if acc else "echomimic"
        loaded = w.load_manifest(manifest)
        if checkpoint is None:
            component = loaded.get(name)
            checkpoint = w.installed_path(component) if component is not None else None
            if checkpoint is None:
                raise InputError(f"give the folder of EchoMimic's files, or download them first "
                                 f"('avatar weights download {name}')")
        if vae is None:
            component = loaded.get("sd-vae-ft-mse")
            vae = w.installed_path(component) if component is not None else None
            if vae is None:
                raise InputError("give --vae DIR (an sd-vae-ft-mse folder), or download it first "
                                 "('avatar weights download sd-vae-ft-mse')")
        output = output or w.converted_dir(name)
        output.parent.mkdir(parents=True, exist_ok=True)
        report = convert_echomimic(checkpoint, output, vae=vae, acc=acc, arch=arch.value, overwrite=overwrite,
                                   config=config)
        hint = f"render with --model {name} --weights {output}"
    else:
        from .. import weights as w

        if checkpoint is None or vae is None or wav2vec2 is None:
            component = w.load_manifest(manifest).get("hallo")
            root = w.installed_path(component) if component is not None else None
            if root is None:
                raise InputError("give Hallo's net.pth, --vae DIR and --wav2vec2 DIR, or download them first "
                                 "('avatar weights download hallo')")
            checkpoint = checkpoint or root / "hallo" / "net.pth"
            vae = vae or root / "sd-vae-ft-mse"
            wav2vec2 = wav2vec2 or root / "wav2vec" / "wav2vec2-base-960h"
        output = output or w.converted_dir("hallo")
        output.parent.mkdir(parents=True, exist_ok=True)
        report = convert_hallo(checkpoint, output, vae=vae, wav2vec2=wav2vec2, arch=arch.value, overwrite=overwrite,
                               config=config)
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
    note(f"wrote {report.output}; {hint}")


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
