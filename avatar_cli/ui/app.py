"""``avatar ui``'s Gradio app: a thin layer over the library (the same ``prepare_job`` +
``pipe.render_job`` as ``avatar render``, the same streaming path as ``avatar render --stream``,
the same ``evaluate_video`` as ``avatar eval``).

Tabs and their API endpoints (``gradio_client``: ``Client(url).predict(..., api_name="/render")``):

- **Render** (``/render``): portrait, speech, then every render option with a widget
  (``widgets.UI_OPTIONS``, by option name) -> (video, stats JSON, download file, command line).
- **Live** (``/live``, Ditto): portrait, speech -> a stream of (frame image, status, video at the end).
- **Evaluate** (``/evaluate``): video, speech (optional) -> (metrics JSON, plot image).

Every request works in its session's folder (``service.Sessions``); renders queue one at a time
(``concurrency_limit=1``, one ``concurrency_id`` for the device).

One module per tab (``render_tab.py``, ``live_tab.py``, ``evaluate_tab.py``: each tab's handlers and
widgets, mixed into :class:`App`); what they share in ``common.py``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import InputError
from .common import DEVICE_QUEUE, _error, unexpected, with_request  # noqa: F401
from .evaluate_tab import EvaluateTab
from .live_tab import LiveTab, Talk
from .render_tab import RenderTab, _model_choices  # noqa: F401
from .service import Models, Sessions, Uploads


class App(RenderTab, LiveTab, EvaluateTab):
    """The state behind the page: the load settings, kept models, session folders and upload checks.

    Args:
        load: the :class:`~avatar_cli.load_options.LoadOptions` every model loads with.
        load_flags: the same settings as ``avatar render`` flags (for the command line shown).
        sessions: the per-session folders (default: a new root in the temporary folder).
    """

    def __init__(self, load, load_flags: list[str] | None = None, sessions: Sessions | None = None,
                 uploads: Uploads | None = None, note=lambda message: None):
        self.load = load
        self.load_flags = list(load_flags or [])
        self.sessions = sessions or Sessions()
        self.uploads = uploads or Uploads()
        self.models = Models(load, note)
        self._count = itertools.count(1)
        self._talks: dict[str | None, Talk] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _session(request) -> str | None:
        return getattr(request, "session_hash", None) if request is not None else None

    def _options(self, values: dict, family: str | None = None):
        """Widget values -> RenderOptions (``--model auto`` resolved as the CLI does, no download)."""
        from .. import render_options
        from ..pipelines import choose_model

        values = dict(values)
        if family == "ditto":
            values["model"] = "ditto"
        elif values["model"] in ("auto", None):
            values["model"] = choose_model(self.load.weights, self.load.random_weights, download=False)
        for o in render_options.RENDER_OPTIONS:  # options without a widget (server paths) keep their default
            values.setdefault(o.name, o.default)
        return values, render_options.build(values)

    @staticmethod
    def _checked(check, upload, folder: Path):
        """``check(upload, folder)``; a rejected upload is also removed from Gradio's upload cache."""
        try:
            return check(upload, folder)
        except InputError:
            if upload and Path(upload).is_file():
                Path(upload).unlink(missing_ok=True)
            raise

    def _inputs(self, portrait, speech, folder: Path):
        """Checked copies of the uploads in ``folder``; on a bad one, nothing of this request is left."""
        image, image_label = self._checked(self.uploads.image, portrait, folder)
        try:
            audio, audio_label = self._checked(self.uploads.audio, speech, folder)
        except InputError:
            image.unlink(missing_ok=True)
            raise
        return image, image_label, audio, audio_label

    # ------------------------------------------------------------------ the page
    def blocks(self):
        """The Gradio Blocks of the three tabs."""
        import gradio as gr

        app = self

        # Gradio's own cache (uploads, frames and videos sent to pages): files older than an hour go,
        # checked every 10 minutes, and all of them when the server stops
        with gr.Blocks(title="avatar", delete_cache=(600, 3600)) as demo:
            gr.Markdown("# avatar\nA portrait and a speech recording in, a lip-synced video out.")
            option_inputs, names = self.render_page()
            self.live_page(names, option_inputs)
            self.evaluate_page()

            @with_request
            def ended(request):
                app.talk_stop(request=request, wait=False)  # a talk still recording ends with the page
                app.sessions.end(app._session(request))

            demo.unload(ended)
        return demo
