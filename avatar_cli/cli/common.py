"""What every ``avatar`` command shares: notes on stderr, the progress bar, signal handling, and
the options that mean the same everywhere (``--device``, ``--dtype``, ``--weights``,
``--random-weights``, ``--arch``, ``--json``, ``--quiet``)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

ARGV: list[str] = []  # the command line of this process (``main`` sets it; bench records it)

from ..render_options import PANEL_IO, PANEL_METHOD, PANEL_PERF, PANEL_SCRIPT  # noqa: F401 (re-exported)


class Arch(str, Enum):
    full = "full"
    tiny = "tiny"


def note(message: str, quiet: bool = False) -> None:
    """One line on stderr, ``avatar: <message>``; nothing with --quiet."""
    if not quiet:
        typer.echo(f"avatar: {message}", err=True)


Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=PANEL_PERF)]
Dtype = Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16.",
                                    rich_help_panel=PANEL_PERF)]
Weights = Annotated[Optional[Path], typer.Option(help="Weights folder (as save_pretrained writes it).",
                                                 show_default=False, rich_help_panel=PANEL_PERF)]
RandomWeights = Annotated[bool, typer.Option("--random-weights", help="Use random weights (tests, demos, speed).",
                                             rich_help_panel=PANEL_PERF)]
ArchOption = Annotated[Arch, typer.Option("--arch", help="Architecture for --random-weights.",
                                          rich_help_panel=PANEL_PERF)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=PANEL_SCRIPT)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.", rich_help_panel=PANEL_SCRIPT)]


class progress:
    """A rich progress bar over chunks (clips) on stderr; silent with --quiet or when stderr is not
    a TTY. ``with progress(quiet) as on_progress:`` gives the ``on_progress(done, total)`` callback."""

    def __init__(self, quiet: bool, label: str = "rendering clips"):
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.bar.__enter__()

        def on_progress(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task("clips", total=total)
            self.bar.update(self.task, completed=done)

        return on_progress

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class signals_interrupt:
    """SIGTERM acts like Ctrl-C (KeyboardInterrupt: the running job cleans up); a second Ctrl-C or
    SIGTERM exits at once with code 130, removing the temporary output first."""

    def __enter__(self):
        import signal

        from .. import interrupt

        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.seen = False
        interrupt.clear()

        def handler(signum, frame):
            if self.seen:
                from ..media.video import remove_partial_files

                remove_partial_files()
                os._exit(130)
            self.seen = True
            interrupt.request()  # acted on at the next chunk if this exception is swallowed (in a __del__)
            raise KeyboardInterrupt

        for sig in self.previous:
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        return False
