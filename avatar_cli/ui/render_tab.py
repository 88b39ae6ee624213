"""The Render tab of ``avatar ui``: portrait and speech in, every render option with a widget, the
same ``prepare_job`` + ``pipe.render_job`` as ``avatar render`` (API ``/render``); the portrait view
with its face box.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import AvatarError
from . import widgets
from .common import DEVICE_QUEUE, _error, with_request, with_signature


def _model_choices(load) -> list[tuple[str, str]]:
    """The model dropdown: (label, value), installed models first, each with what it is."""
    from ..models.catalog import MODELS
    from ..pipelines import _installed

    if load.random_weights:
        installed = set(MODELS)
    elif load.weights is not None:
        from ..pipelines import _family_of_folder

        installed = {_family_of_folder(Path(load.weights))}
    else:
        installed = {m for m in MODELS if _installed(m) is not None}
    rows = [("auto: the first installed", "auto")]
    ordered = sorted(MODELS.values(), key=lambda spec: spec.name not in installed)
    for spec in ordered:
        where = "installed" if spec.name in installed else "not installed"
        rows.append((f"{spec.name}: {spec.description} ({where})", spec.name))
    return rows


class RenderTab:
    """The Render tab's handlers and widgets, mixed into :class:`~avatar_cli.ui.app.App` (which gives
    ``load``, ``load_flags``, ``sessions``, ``uploads``, ``models`` and the upload helpers)."""

    # ------------------------------------------------------------------ portrait view
    def view(self, upload, face_box: str = "", request=None):
        """The portrait as the renderer reads it (EXIF turned, RGB) with its face box drawn in green: the
        ``--face-box`` given, else the one MediaPipe detects (``media/face.py`` ``detect_face``, the
        ``face`` extra) where installed. Returns an (H, W, 3) uint8 array, or None before an upload.

        Raises:
            gradio.Error: the upload is not a readable image, or the face box is malformed (one line).
        """
        import numpy as np
        from PIL import Image, ImageDraw

        from ..media.image import load_source
        from ..render_options import BY_NAME

        if not upload:
            return None
        folder = self.sessions.folder(self._session(request))
        try:
            path, _ = self._checked(self.uploads.image, upload, folder)
            picture, geometry = load_source(path, with_geometry=True)
            path.unlink(missing_ok=True)
            box = BY_NAME["face_box"].value(face_box) if face_box and face_box.strip() else None
        except AvatarError as err:
            raise _error(err) from None
        if box is not None:
            x, y, w, h = geometry.box_to_frame(box)
        else:
            try:  # the Hallo family's detector (MediaPipe, the face extra), where installed
                from ..media.face import detect_face

                found = detect_face(picture)
            except ImportError:
                found = None
            if found is None:
                return picture
            x, y, w, h = found[0]  # x, y, w, h in the picture's pixels
        image = Image.fromarray(picture)
        ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=max(2, image.width // 128))
        return np.asarray(image)

    # ------------------------------------------------------------------ render
    def render(self, portrait, speech, *raw, request=None, progress=None):
        """The Render tab: (video path, stats dict, download path, command line).

        Raises:
            gradio.Error: the CLI's one-line message of any :class:`AvatarError` (nothing left behind).
        """
        from ..options import prepare_job

        folder = self.sessions.folder(self._session(request))
        report = progress or (lambda *args, **kwargs: None)
        output = folder / f"render-{next(self._count)}.mp4"
        made: list[Path] = []
        try:
            report(0.0, desc="checking the uploads")
            image, image_label, audio, audio_label = self._inputs(portrait, speech, folder)
            made += [image, audio]
            values, options = self._options(widgets.values_of(list(raw)))
            job = prepare_job(image, audio, output, options, overwrite=True)
            report(0.02, desc=f"loading {options.model}")
            pipe = self.models.get(options.model, options.method)
            start = time.perf_counter()

            def on_progress(done: int, total: int) -> None:
                elapsed = time.perf_counter() - start
                left = elapsed / done * (total - done) if done else 0.0
                report((done, total), desc=f"rendering clips ({left:.0f} s left)", unit="clips")

            report(0.05, desc="rendering clips")
            result = pipe.render_job(job, on_progress=on_progress)
        except AvatarError as err:
            for path in made + [output]:
                path.unlink(missing_ok=True)
            raise _error(err) from None
        finally:
            for path in made:
                path.unlink(missing_ok=True)
        stats = result.to_dict()
        stats["output"] = output.name
        command = widgets.command_line(values, self.load_flags, image_label, audio_label)
        return str(output), stats, str(output), command

    def render_page(self):
        """The Render tab's widgets and events, made inside the page's Blocks.

        Returns:
            (the option widgets in ``widgets.UI_OPTIONS`` order, the API argument names).
        """
        import gradio as gr

        app = self
        option_widgets = {}
        with gr.Tab("Render", id="render"):
            with gr.Row():
                with gr.Column():
                    # a file box (checked by content here, not by Gradio's image decoder), shown below
                    portrait = gr.File(label="Portrait", file_count="single", elem_id="portrait")
                    shown = gr.Image(label="Portrait as read (face box in green: given, or detected)",
                                     interactive=False, elem_id="portrait-view", height=240)
                    speech = gr.Audio(label="Speech", type="filepath", format=None,
                                      sources=["upload", "microphone"], elem_id="speech")
                    for name in widgets.MAIN:
                        o = widgets.BY_NAME[name]
                        extra = {"choices": _model_choices(self.load)} if name == "model" else {}
                        option_widgets[name] = widgets.make_widget(o, **extra)
                    for panel, opts in widgets.panels().items():
                        with gr.Accordion(panel, open=False):
                            for o in opts:
                                option_widgets[o.name] = widgets.make_widget(o)
                    go = gr.Button("Render", variant="primary", elem_id="render-button")
                with gr.Column():
                    video = gr.Video(label="Video", elem_id="video", interactive=False)
                    stats = gr.JSON(label="Stats (RTF, NFE, stages)", elem_id="stats")
                    download = gr.File(label="Download", elem_id="download", interactive=False)
                    command = gr.Code(label="The same render on the command line", language="shell",
                                      elem_id="command", interactive=False)
        option_inputs = [option_widgets[o.name] for o in widgets.UI_OPTIONS]

        @with_request
        def view(upload, box, request):
            return app.view(upload, box, request=request)

        for event in (portrait.upload, option_widgets["face_box"].submit):
            event(view, [portrait, option_widgets["face_box"]], shown, api_name=False, show_progress="hidden")
        names = ["portrait", "speech", *(o.name for o in widgets.UI_OPTIONS)]
        go.click(with_signature(app.render, names), [portrait, speech, *option_inputs],
                 [video, stats, download, command], api_name="render", concurrency_limit=1,
                 concurrency_id=DEVICE_QUEUE)
        return option_inputs, names
