"""What every ``avatar`` command shares: notes on stderr, the progress bar, signal handling, and
the options that mean the same everywhere (``--device``, ``--dtype``, ``--weights``,
``--random-weights``, ``--arch``, ``--json``, ``--quiet``)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

ARGV: list[str] = []  # the command line of this process (``main`` sets it; bench records it)
STARTED: float | None = None  # time.perf_counter() at the process start (``main`` sets it; total_s)

from ..render_options import PANEL_IO, PANEL_METHOD, PANEL_PERF, PANEL_SCRIPT  # noqa: F401 (re-exported)


class Arch(str, Enum):
    full = "full"
    tiny = "tiny"


def note(message: str, quiet: bool = False) -> None:
    """One line on stderr, ``avatar: <message>``; nothing with --quiet."""
    if not quiet:
        typer.echo(f"avatar: {message}", err=True)


Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=PANEL_PERF)]
Dtype = Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA; fp32 on CPU, except bf16 autocast for the networks "
                                         "measured to keep 40 dB on a CPU with AVX512-BF16 or AMX), float32, float16, "
                                         "bfloat16.", rich_help_panel=PANEL_PERF)]
Weights = Annotated[Optional[Path], typer.Option(help="Weights folder (as save_pretrained writes it).",
                                                 show_default=False, rich_help_panel=PANEL_PERF)]
RandomWeights = Annotated[bool, typer.Option("--random-weights", help="Use random weights (tests, demos, speed).",
                                             rich_help_panel=PANEL_PERF)]
Compile = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", show_default="auto",
    help="torch.compile the networks. Default auto: Ditto's warp + decoder for offline CPU renders of >= 4 s "
         "(needs a C++ compiler; ~50 s the first time, cached after), nothing else.",
    rich_help_panel=PANEL_PERF)]
RenderBatch = Annotated[int, typer.Option(
    "--render-batch", help="--model ditto: frames per warp + decoder call (0: sized by free GPU memory for offline "
    "renders on CUDA, else 4).", rich_help_panel=PANEL_PERF)]
CudaGraph = Annotated[bool, typer.Option(
    "--cuda-graph", help="--model ditto on CUDA: warp + decoder captured once as a CUDA graph and replayed per "
    "batch (not with --compile).", rich_help_panel=PANEL_PERF)]
AddCfgLayers = Annotated[bool, typer.Option(
    "--add-cfg-layers", help="For --method fada with weights lacking CFG-token layers: add zero-initialised ones.",
    rich_help_panel=PANEL_PERF)]
NoDownload = Annotated[bool, typer.Option(
    "--no-download", help="With --model auto and nothing installed: fail (naming the download) instead of "
    "downloading Ditto's weights.", rich_help_panel=PANEL_PERF)]


def arch_value(value: str) -> str:
    """``--arch``: a preset name (``full``, ``tiny``) as given, or the path of a JSON config file
    (``models/configs.py``: network -> constructor arguments, or ``{"base": "tiny", ...}``) after reading it,
    so that a missing or malformed file stops the command before any model is built. Which networks the
    config may name depends on the model; the model's loader checks that (also an :class:`InputError`).

    Raises:
        InputError: neither a preset nor a ``.json`` file; the file is missing, not JSON or not an object.
    """
    from ..errors import InputError
    from ..models.configs import read_config_file

    value = getattr(value, "value", value)
    if value in (a.value for a in Arch):
        return value
    if not str(value).endswith(".json"):
        raise InputError(f"--arch must be full, tiny or a JSON config file (*.json), got {value!r}; "
                         f"e.g. --arch widths.json holding {{\"base\": \"tiny\", \"dit\": {{\"latent_dim\": 48}}}}")
    read_config_file(value)
    return value


ArchOption = Annotated[str, typer.Option(
    "--arch", help="Architecture for --random-weights: full, tiny, or a JSON config file of other widths "
    "(network -> the constructor arguments that differ from a base preset; docs/weights.md), e.g. --arch w.json "
    "holding {\"base\": \"tiny\", \"dit\": {\"latent_dim\": 48}} for --model ditto.", metavar="full|tiny|FILE.json",
    callback=arch_value, rich_help_panel=PANEL_PERF)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=PANEL_SCRIPT)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.", rich_help_panel=PANEL_SCRIPT)]


STAGE_NAMES = {"motion": "motion (DiT)", "sampling": "sampling (denoiser)"}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class progress:
    """The render's progress display on stderr: one rich line with the stages done (and their
    seconds), the stage running, its units (denoiser evaluations, frames) done / total, the frames
    written, the time elapsed and the time left (``avatar_cli/progress.py``'s estimate, counted
    down between events, so that it moves even when one step takes minutes). Silent with --quiet or
    when stderr is not a TTY (the events are still collected).

    ``with progress(quiet) as tracker:`` gives an :class:`avatar_cli.progress.Progress`: the CLI
    calls ``tracker.stage("inputs")`` / ``("models")``, then passes it to ``render_job``.
    ``expected_s``: the render's expected seconds (a kept ``--preview`` calibration), if any."""

    def __init__(self, quiet: bool, label: str = "rendering", expected_s: float | None = None):
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.expected_s = expected_s
        self.bar = None
        self.task = None
        self.tracker = None

    def __enter__(self):
        from ..progress import Progress

        if not self.enabled:
            self.tracker = Progress(expected_s=self.expected_s)
            return self.tracker
        import time

        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        outer = self

        class TimeLeft(ProgressColumn):
            """The last estimate minus the seconds since it was made; '+' marks a lower bound."""

            def render(self, task) -> Text:
                event, at = task.fields.get("event"), task.fields.get("at")
                if event is None or event.seconds_left is None:
                    return Text("left -:--:--", style="progress.remaining")
                left = max(event.seconds_left - (time.perf_counter() - at), 0.0)
                return Text(f"left {_clock(left)}{'+' if event.partial else ''}", style="progress.remaining")

        self.bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=24), TextColumn("{task.fields[units]}"),
                       TextColumn("{task.fields[frames]}"), TimeElapsedColumn(), TimeLeft(),
                       console=Console(stderr=True), transient=True, redirect_stdout=False, refresh_per_second=4)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None, units="", frames="", event=None, at=None)
        stages: dict[str, float] = {}  # stage -> elapsed when it began

        def on_event(event) -> None:
            if event.stage not in stages:
                stages[event.stage] = event.elapsed_s
            names = list(stages)
            done = " ".join(f"[dim]{n} {stages[names[i + 1]] - stages[n]:.1f}s[/dim]" for i, n in enumerate(names[:-1]))
            description = f"{done} [bold]{STAGE_NAMES.get(event.stage, event.stage)}[/bold]".strip()
            units = f"{event.done}/{event.total} {event.unit}" if event.total else ""
            frames = f"frames {event.frames_done}/{event.frames_total}" if event.frames_total else ""
            outer.bar.update(outer.task, description=description, total=event.total or None,
                             completed=event.done if event.total else 0, units=units, frames=frames, event=event,
                             at=time.perf_counter())

        self.tracker = Progress(on_event, expected_s=self.expected_s)
        return self.tracker

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    @contextmanager
    def paused(self):
        """The display off while something else draws on the terminal (a download's bar)."""
        if self.bar is None:
            yield
            return
        self.bar.stop()
        try:
            yield
        finally:
            self.bar.start()


class library_warnings:
    """Warnings of the libraries that a user cannot act on (numpy's RuntimeWarning, transformers'
    and diffusers' logged warnings and deprecation notes) during a command: with --quiet none is
    printed; without it Python warnings become one-line notes (``avatar: note: ...``). The CLI's
    business, not the library's: the library warns as libraries do."""

    LOGGERS = (("transformers", "TRANSFORMERS_VERBOSITY"), ("diffusers", "DIFFUSERS_VERBOSITY"))

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        import logging
        import warnings

        self.catch = warnings.catch_warnings()
        self.catch.__enter__()
        if self.quiet:
            warnings.simplefilter("ignore")
        else:
            def show(message, category, filename, lineno, file=None, line=None):
                note(f"note: {category.__name__}: {' '.join(str(message).split())}")

            warnings.showwarning = show
        self.saved = []
        if self.quiet:  # their loggers read these on import; set the level too where already imported
            for name, variable in self.LOGGERS:
                self.saved.append((name, variable, os.environ.get(variable), logging.getLogger(name).level))
                os.environ[variable] = "error"
                logging.getLogger(name).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        import logging

        for name, variable, value, level in self.saved:
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
            logging.getLogger(name).setLevel(level or logging.WARNING)
        self.catch.__exit__(*exc)
        return False


def cancellable(what: str):
    """Decorate a command: a KeyboardInterrupt (Ctrl-C, or SIGTERM under :class:`signals_interrupt`) that reaches
    it becomes :class:`~avatar_cli.errors.Cancelled`, ``avatar: cancelled (Ctrl-C); <what>``, exit 130 (typer
    would end the command silently with 130). The command's own cleanup has run by then (temporary outputs
    removed, ffmpeg stopped): ``what`` says what that left, e.g. "nothing written"."""
    import functools

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            from .. import interrupt
            from ..errors import Cancelled

            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                raise Cancelled(f"cancelled ({interrupt.signal_name()}); {what}") from None

        return run

    return decorate


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
            interrupt.request("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")  # acted on at the next chunk if this exception is swallowed (in a __del__)
            raise KeyboardInterrupt

        for sig in self.previous:
            signal.signal(sig, handler)
        # A KeyboardInterrupt raised where Python cannot propagate it (a finalizer, an at-fork hook while a
        # subprocess starts) is printed as "Exception ignored ... Traceback": it is not lost (request() above;
        # interrupt.check() acts on it), so it is not printed either.
        self.unraisable = sys.unraisablehook

        def quiet_interrupts(unraisable):
            if not (unraisable.exc_type and issubclass(unraisable.exc_type, KeyboardInterrupt)):
                self.unraisable(unraisable)

        sys.unraisablehook = quiet_interrupts
        return self

    def __exit__(self, *exc):
        import signal

        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        sys.unraisablehook = self.unraisable
        return False
