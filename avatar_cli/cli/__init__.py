"""The ``avatar`` command: a thin shell over the library, one module per command group.

| module | commands |
|---|---|
| ``render.py`` | ``avatar render``, ``avatar batch`` |
| ``bench.py`` | ``avatar bench`` |
| ``eval.py`` | ``avatar eval`` |
| ``info.py`` | ``avatar info`` |
| ``doctor.py`` | ``avatar doctor`` |
| ``audio.py`` | ``avatar audio encode`` |
| ``weights.py`` | ``avatar weights list / download / verify / path / convert`` |
| ``ui.py`` | ``avatar ui`` (the browser app; ``avatar_cli/ui/``) |
| ``train.py`` | ``avatar data prepare``, ``avatar train teacher``, ``avatar distill osa-lcm / fada`` |

Exit codes: 0 success, 1 failed work, 2 usage error (bad input or options), 130 interrupted.
Errors are one line on stderr: ``avatar: error: <problem>; <fix>``.
"""

from __future__ import annotations

import sys
import time

_IMPORTED = time.perf_counter()  # the process start as near as Python code sees it (total_s counts from here)
from typing import Annotated

import typer

from .. import __version__
from ..errors import AvatarError, Cancelled
from . import common

app = typer.Typer(
    name="avatar",
    help="Render talking-head videos from one portrait and one speech recording.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


from . import audio, batch, bench, doctor, eval, info, render, train, ui, weights  # noqa: E402  (each registers its commands on app)

for module in (render, batch, bench, eval, info, doctor, audio, weights, train, ui):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    common.ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    # total_s: from the process start for the first command, from this call for later ones (tests, the API)
    common.STARTED = _IMPORTED if common.STARTED is None else time.perf_counter()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="avatar")
        return result if isinstance(result, int) else 0
    except Cancelled as err:  # Ctrl-C / SIGTERM: what was kept, not an error
        typer.echo(f"avatar: {err}", err=True)
        return err.exit_code
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
