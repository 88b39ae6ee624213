"""``avatar info``: parameter counts, software versions, devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from .common import Arch

def info(
    arch: Annotated[Arch, typer.Option(help="Architecture preset to describe.")] = Arch.full,
    weights: Annotated[Optional[Path], typer.Option(help="Describe a weights folder instead.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each model's parameter count, and the software and devices found."""
    import torch

    from ..models.bundle import AvatarModels

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


def register(app: typer.Typer) -> None:
    app.command()(info)
