"""``avatar ui``: the renderer in a browser (Gradio; the ``ui`` extra). The app is ``avatar_cli/ui/app.py``
(one module per tab beside it)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import AvatarError, InputError
from .common import ArchOption, Device, Dtype, RandomWeights, Weights, note

LOCAL = ("127.0.0.1", "localhost", "::1")

UI_EPILOG = """\
[bold]Examples[/bold]

  avatar ui                                        [dim]# http://127.0.0.1:7860[/dim]
  avatar ui --random-weights --arch tiny --port 8000   [dim]# try the page without weights (noise)[/dim]
  avatar ui --host 0.0.0.0                         [dim]# reachable from other machines: said at start[/dim]

From Python: gradio_client.Client("http://127.0.0.1:7860").predict(..., api_name="/render") (docs/ui.md).
"""


def load_flags(weights, random_weights: bool, arch: str, device: str, dtype: str) -> list[str]:
    """The ``avatar render`` flags of these load settings (for the command line the page shows)."""
    flags = []
    if weights is not None:
        flags += ["--weights", str(weights)]
    if random_weights:
        flags += ["--random-weights", "--arch", arch]
    if device != "auto":
        flags += ["--device", device]
    if dtype != "auto":
        flags += ["--dtype", dtype]
    return flags


def ui(
    host: Annotated[str, typer.Option(help="Address to serve on; anything but 127.0.0.1 is reachable from "
                                           "other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 7860,
    weights: Weights = None,
    random_weights: RandomWeights = False,
    arch: ArchOption = "full",
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Serve the renderer as a web page (Render, Live and Evaluate tabs); Ctrl-C stops it."""
    import signal
    import time

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise AvatarError("avatar ui needs Gradio, which is not installed; install the ui extra: "
                          "pip install 'avatar-cli[ui]' (from a clone: pip install -e '.[ui]')") from None
    from ..load_options import LoadOptions
    from ..ui.app import App

    if not 1 <= port <= 65535:
        raise InputError(f"--port must be 1..65535 (got {port})")
    arch_name = getattr(arch, "value", arch)
    load = LoadOptions(weights=weights, random_weights=random_weights, arch=arch_name, device=device, dtype=dtype)
    load.resolved()  # a bad --device / --dtype fails now, not in the page
    app = App(load, load_flags(weights, random_weights, arch_name, device, dtype), note=note)
    demo = app.blocks()
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
                    inbrowser=False, share=False, max_file_size=app.uploads.limits["video"])
    except OSError as err:
        app.sessions.close()
        raise InputError(f"cannot serve on {host}:{port} ({err}); pick another --port") from None
    if host not in LOCAL:
        note(f"note: serving on {host}: the page is reachable from other machines (no login); "
             f"--host 127.0.0.1 keeps it to this one")
    note(f"serving http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port} (Ctrl-C stops)")
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # a service manager's stop acts like Ctrl-C
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
        app.sessions.close()
        remove_cached(demo)
    note("stopped")


def remove_cached(demo) -> None:
    """Delete the files Gradio cached for this app (uploads, results sent to pages): Gradio itself
    empties its cache only when a server starts."""
    from pathlib import Path

    for files in getattr(demo, "temp_file_sets", []):
        for name in list(files):
            path = Path(name)
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # Gradio keeps each file in a folder named by its hash
            except OSError:
                pass


def register(app: typer.Typer) -> None:
    app.command(epilog=UI_EPILOG)(ui)
