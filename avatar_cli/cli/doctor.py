"""``avatar doctor``: one screen (or ``--json``) of what this machine can render (``avatar_cli/doctor.py``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import AvatarError
from .common import note

DOCTOR_EPILOG = """\
[bold]Examples[/bold]

  avatar doctor                 [dim]# after installing: what will run, and what is missing[/dim]
  avatar doctor --json          [dim]# the same as one JSON object[/dim]
  avatar doctor --verify        [dim]# also hash the installed weights (minutes for GBs)[/dim]

[bold]Exit codes[/bold]: 0 the default render (--model auto) can run here, 1 it cannot (the last line names the fix).
"""


def _gb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash the installed weights against the manifest "
                                                          "(slow: minutes for GBs).")] = False,
) -> None:
    """Show what this machine can render: Python, torch, the device, ffmpeg, the extras, the weights,
    the cache's free disk, and the render --model auto would run."""
    from ..doctor import diagnose

    facts = diagnose(verify=verify, log=lambda message: note(message, as_json))
    if as_json:
        typer.echo(json.dumps(facts))
    else:
        _print(facts)
    if not facts["ok"]:
        raise AvatarError(f"{facts['problem']}; {facts['fix']}")


def _print(facts: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    dev, torch, ff, cache, auto = facts["device"], facts["torch"], facts["ffmpeg"], facts["cache"], facts["auto"]
    table = Table(title=f"avatar-cli {facts['avatar_cli']} on this machine", show_header=False, box=None,
                  padding=(0, 1))
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("detail")
    table.add_row("python", facts["python"]["version"], escape(facts["python"]["executable"]))
    table.add_row("torch", torch["version"], f"{torch['build']} build")
    if dev["type"] == "cuda":
        table.add_row("device", "cuda", escape(f"{dev['name']}, {dev['memory_gib']} GiB, bf16 "
                                             f"{'yes' if dev['bf16'] else 'no'}"))
    else:
        bf16 = "native bf16" if dev["native_bf16"] else "no native bf16 (use float32)"
        table.add_row("device", "cpu", escape(f"{dev['name']}: {dev['cores']} cores, torch uses "
                                            f"{dev['torch_threads']} threads, {bf16}, "
                                            f"{'a' if dev['compiler'] else 'no'} C++ compiler for torch.compile"))
    table.add_row("ffmpeg", "found" if ff["found"] else "[red]missing[/red]",
                  escape(ff["version"] or ff.get("error", "")))
    table.add_section()
    for name, p in facts["packages"].items():
        state = (p["version"] or "installed") if p["installed"] else "[dim]no[/dim]"
        detail = p["for"] if p["installed"] else p["install"]
        table.add_row(name, state, escape(detail))
    table.add_section()
    for w in facts["weights"]:
        if w["status"] == "unavailable":  # no public weights exist ('avatar weights list' says why)
            continue
        detail = f"{_gb(w['size_bytes'])}, {w['path']}" if w["path"] else _gb(w["size_bytes"])
        table.add_row(w["name"], w["status"], escape(detail))
    table.add_section()
    table.add_row("cache", _gb(cache["free_bytes"]) + " free", escape(
        f"{cache['hub_cache']} ({cache['default_download']} needs {_gb(cache['default_download_bytes'])})"))
    table.add_row("--model auto", auto["model"] if auto["can_run"] else "[red]cannot run[/red]",
                  escape(auto["action"] if auto["can_run"] else auto["problem"]))
    console = Console()
    console.print(table)
    console.print("[dim]absent weights: 'avatar weights download NAME' ('avatar weights show NAME' for its "
                  "licence and files)[/dim]")


def register(app: typer.Typer) -> None:
    app.command(epilog=DOCTOR_EPILOG)(doctor)
