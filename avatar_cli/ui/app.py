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
"""

from __future__ import annotations

import inspect
import itertools
import queue
import threading
import time
from pathlib import Path

from ..errors import AvatarError, InputError
from . import widgets
from .service import Models, Sessions, Uploads

DEVICE_QUEUE = "device"  # the concurrency id every model-running event shares: one at a time


def _error(err: Exception):
    """The CLI's one line (``avatar: error: ...``) as the page's error."""
    import gradio as gr

    return gr.Error(f"avatar: error: {err}", print_exception=False)


class Talk:
    """One microphone session of the Live tab: chunks pushed as they arrive -> ``render_stream`` over
    ``pipe.stream`` in a thread (the path of ``avatar render --stream``), the newest frame kept for the
    page. Chunks are made mono and resampled to 16 kHz (linear interpolation, ``numpy.interp``)."""

    def __init__(self, pipe, picture, output: Path, options, face_box=None):
        from ..media.stream import render_stream

        self.chunks: queue.Queue = queue.Queue()
        self.output = output
        self.outcome: dict = {}
        self.frame = None
        self.frames = 0
        self.first_s: float | None = None
        self.started = time.perf_counter()
        talk = self

        class Tee:  # pipe.stream, with each batch's newest frame kept for the page
            def stream(self, *args, **kwargs):
                for batch, times in pipe.stream(*args, **kwargs):
                    talk.frame, talk.frames = batch[-1], talk.frames + len(batch)
                    if talk.first_s is None:
                        talk.first_s = time.perf_counter() - talk.started
                    yield batch, times

        def chunks():
            while (chunk := self.chunks.get()) is not None:
                yield chunk

        def run():
            try:
                self.outcome["result"] = render_stream(Tee(), picture, chunks(), output, options, fmt="mp4",
                                                       face_box=face_box)
            except BaseException as err:  # noqa: BLE001  (reported in the page)
                self.outcome["error"] = err

        self.worker = threading.Thread(target=run, name="avatar-ui-talk", daemon=True)
        self.worker.start()

    def push(self, rate: int, samples) -> None:
        """(sample_rate, (n,) or (n, channels) int16 or float samples) -> a 16 kHz float32 chunk."""
        import numpy as np

        x = np.asarray(samples)
        x = x.astype(np.float32) / (32768.0 if x.dtype.kind == "i" else 1.0)
        if x.ndim == 2:
            x = x.mean(axis=1)
        if rate != 16000 and len(x):
            n = int(round(len(x) * 16000 / rate))
            x = np.interp(np.arange(n) * (rate / 16000), np.arange(len(x)), x).astype(np.float32)
        if len(x):
            self.chunks.put(x)

    def end(self) -> None:
        self.chunks.put(None)

    def latest(self):
        return self.frame

    def status(self) -> str:
        if self.first_s is None:
            return "listening: the first frames come after the first window of speech"
        elapsed = time.perf_counter() - self.started - self.first_s
        fps = self.frames / max(elapsed, 1e-6)
        return f"first frame after {self.first_s:.2f} s; {self.frames} frames, {fps:.1f} fps"


class unexpected:
    """A bug's exception: its traceback in the server's log, one line in the page (Gradio would show
    a bare "Error")."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        import gradio as gr

        if err is None or isinstance(err, (gr.Error, GeneratorExit)) or not isinstance(err, Exception):
            return False
        import traceback

        traceback.print_exception(kind, err, tb)
        raise gr.Error(f"avatar: error: internal error ({type(err).__name__}: {err}); see the server's log",
                       print_exception=False) from None


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


class App:
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

    # ------------------------------------------------------------------ live
    def live(self, portrait, speech, *raw, request=None):
        """The Live tab (Ditto): speech read at speech speed through ``render_stream`` (the path of
        ``avatar render --stream``); yields (newest frame, status, None) as frames are made, then
        (last frame, status, the streamed mp4)."""
        from ..media.image import load_source
        from ..media.stream import pcm_chunks, render_stream

        folder = self.sessions.folder(self._session(request))
        output = folder / f"live-{next(self._count)}.mp4"
        made: list[Path] = []
        try:
            image, _, audio, _ = self._inputs(portrait, speech, folder)
            made += [image, audio]
            values, options = self._options(widgets.values_of(list(raw)), family="ditto")
            options.validate()
            picture, geometry = load_source(image, with_geometry=True)
            face_box = geometry.box_to_frame(options.face_box) if options.face_box is not None else None
            pipe = self.models.get("ditto", options.method)
        except AvatarError as err:
            for path in made:
                path.unlink(missing_ok=True)
            raise _error(err) from None
        frames: queue.Queue = queue.Queue()
        stop = threading.Event()
        outcome: dict = {}

        class Tee:  # pipe.stream, with each batch's newest frame handed to the page too
            def stream(self, *args, **kwargs):
                for batch, times in pipe.stream(*args, **kwargs):
                    frames.put((time.perf_counter(), len(batch), batch[-1]))
                    yield batch, times

        def chunks():
            for chunk in pcm_chunks(audio, realtime=True):
                if stop.is_set():
                    return
                yield chunk

        def run():
            try:
                outcome["result"] = render_stream(Tee(), picture, chunks(), output, options, fmt="mp4",
                                                  face_box=face_box)
            except BaseException as err:  # noqa: BLE001  (reported in the page)
                outcome["error"] = err
            finally:
                frames.put(None)

        start = time.perf_counter()
        worker = threading.Thread(target=run, name="avatar-ui-live", daemon=True)
        worker.start()
        first = None
        shown = 0
        last = None
        try:
            while True:
                item = frames.get()
                if item is None:
                    break
                while not frames.empty():  # show the newest frame; count the rest
                    nxt = frames.get()
                    if nxt is None:
                        frames.put(None)
                        break
                    shown += item[1]
                    item = nxt
                at, count, last = item
                shown += count
                first = at - start if first is None else first
                fps = shown / max(at - start - first, 1e-6) if shown > count else 0.0
                yield last, f"first frame after {first:.2f} s; {shown} frames, {fps:.1f} fps", None
        finally:
            stop.set()
            worker.join()
            for path in made:
                path.unlink(missing_ok=True)
        if "error" in outcome:
            output.unlink(missing_ok=True)
            err = outcome["error"]
            if isinstance(err, AvatarError):
                raise _error(err) from None
            raise err
        result = outcome["result"]
        status = (f"first frame after {result['first_frame_delay_s']} s (the stream's own clock); "
                  f"{result['frames']} frames at {result['fps']:g} fps, RTF {result['rtf']:.2f}")
        yield last, status, str(output)

    # ------------------------------------------------------------------ talk (microphone, live)
    def talk_start(self, portrait, *raw, request=None):
        """Recording started: the Ditto stream of this session starts, fed by :meth:`talk_push`."""
        from ..media.image import load_source

        session = self._session(request)
        self.talk_stop(request=request, wait=False)  # a previous talk of this session ends
        folder = self.sessions.folder(session)
        try:
            image, _ = self._checked(self.uploads.image, portrait, folder)
            _, options = self._options(widgets.values_of(list(raw)), family="ditto")
            options.validate()
            picture, geometry = load_source(image, with_geometry=True)
            image.unlink(missing_ok=True)
            face_box = geometry.box_to_frame(options.face_box) if options.face_box is not None else None
            pipe = self.models.get("ditto", options.method)
        except AvatarError as err:
            raise _error(err) from None
        self._talks[session] = Talk(pipe, picture, folder / f"talk-{next(self._count)}.mp4", options, face_box)
        return None, "listening: frames follow the speech"

    def talk_push(self, chunk, request=None):
        """A chunk of the microphone, ``(sample_rate, samples)`` int16: into the stream; returns the
        newest frame and the status so far."""
        talk = self._talks.get(self._session(request))
        if talk is None:
            return None, "press Record to talk"
        if chunk is not None:
            talk.push(*chunk)
        return talk.latest(), talk.status()

    def talk_stop(self, request=None, wait: bool = True):
        """Recording stopped: the stream ends (its last frames are made); (frame, status, video)."""
        talk = self._talks.pop(self._session(request), None)
        if talk is None:
            return None, "", None
        talk.end()
        if not wait:
            return None, "", None
        talk.worker.join()
        if "error" in talk.outcome:
            talk.output.unlink(missing_ok=True)
            err = talk.outcome["error"]
            raise _error(err) if isinstance(err, AvatarError) else err
        result = talk.outcome["result"]
        status = (f"first frame after {result['first_frame_delay_s']} s of speech; {result['frames']} frames at "
                  f"{result['fps']:g} fps, RTF {result['rtf']:.2f}")
        return talk.latest(), status, str(talk.output)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, video, speech=None, request=None):
        """The Evaluate tab: ``evaluate_video`` (Sync-C/D; FID/FVD/identity need their references)
        -> (metrics dict, plot path or None)."""
        from ..eval.run import evaluate_video

        folder = self.sessions.folder(self._session(request))
        made: list[Path] = []
        try:
            path, label = self.uploads.video(video, folder)
            made.append(path)
            audio = None
            if speech:
                audio, _ = self.uploads.audio(speech, folder)
                made.append(audio)
            row = evaluate_video(path, audio)
        except AvatarError as err:
            raise _error(err) from None
        finally:
            for p in made:
                p.unlink(missing_ok=True)
        row["video"] = label
        plot = None
        try:
            from ..eval.run import plot_batch

            plot = folder / f"sync-{next(self._count)}.png"
            plot_batch([row], plot)
        except ImportError:
            plot = None
        return row, (str(plot) if plot else None)

    # ------------------------------------------------------------------ the page
    def blocks(self):
        """The Gradio Blocks of the three tabs."""
        import gradio as gr

        app = self

        def with_signature(fn, names: list[str], generator: bool = False):
            """``fn(*values, request=)`` with a signature naming each input (the API's argument names)."""
            params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names[:2]]
            params += [inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                         default=widgets.api_default(o)) for o in widgets.UI_OPTIONS]
            params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                            annotation=gr.Request))
            if generator:
                def wrapped(*args):
                    *values, request = args
                    with unexpected():
                        yield from fn(*values, request=request)
            else:
                params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                default=gr.Progress()))

                def wrapped(*args):
                    *values, request, progress = args
                    with unexpected():
                        return fn(*values, request=request, progress=progress)
            wrapped.__signature__ = inspect.Signature(params)
            wrapped.__annotations__ = {"request": gr.Request}  # what Gradio reads to fill it in
            wrapped.__name__ = fn.__name__
            return wrapped

        # Gradio's own cache (uploads, frames and videos sent to pages): files older than an hour go,
        # checked every 10 minutes, and all of them when the server stops
        with gr.Blocks(title="avatar", delete_cache=(600, 3600)) as demo:
            gr.Markdown("# avatar\nA portrait and a speech recording in, a lip-synced video out.")
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

            def view(upload, box, request):
                return app.view(upload, box, request=request)

            view.__annotations__ = {"request": gr.Request}
            for event in (portrait.upload, option_widgets["face_box"].submit):
                event(view, [portrait, option_widgets["face_box"]], shown, api_name=False, show_progress="hidden")
            names = ["portrait", "speech", *(o.name for o in widgets.UI_OPTIONS)]
            go.click(with_signature(app.render, names), [portrait, speech, *option_inputs],
                     [video, stats, download, command], api_name="render", concurrency_limit=1,
                     concurrency_id=DEVICE_QUEUE)
            with gr.Tab("Live", id="live"):
                gr.Markdown("Ditto (`--model ditto`) streams: the speech is read at speech speed and frames "
                            "appear as they are made. The Render tab's Ditto options apply.")
                with gr.Row():
                    with gr.Column():
                        live_portrait = gr.File(label="Portrait", file_count="single", elem_id="live-portrait")
                        live_speech = gr.Audio(label="Speech (record or upload)", type="filepath", format=None,
                                               sources=["microphone", "upload"], elem_id="live-speech")
                        live_go = gr.Button("Start", variant="primary", elem_id="live-button")
                        talk = gr.Audio(label="Or talk: frames follow while you speak", sources=["microphone"],
                                        streaming=True, type="numpy", elem_id="live-talk")
                    with gr.Column():
                        live_frame = gr.Image(label="Live", elem_id="live-frame", interactive=False)
                        live_status = gr.Markdown(elem_id="live-status")
                        live_video = gr.Video(label="Recorded stream", elem_id="live-video", interactive=False)
            live_go.click(with_signature(app.live, names, generator=True),
                          [live_portrait, live_speech, *option_inputs], [live_frame, live_status, live_video],
                          api_name="live", concurrency_limit=1, concurrency_id=DEVICE_QUEUE)

            def talk_start(portrait, *rest):
                *raw, request = rest
                with unexpected():
                    return app.talk_start(portrait, *raw, request=request)

            def talk_push(chunk, request):
                with unexpected():
                    return app.talk_push(chunk, request=request)

            def talk_stop(request):
                with unexpected():
                    return app.talk_stop(request=request)

            talk_start.__signature__ = inspect.Signature(
                [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ["portrait", *names[2:]]]
                + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])
            for fn in (talk_start, talk_push, talk_stop):
                fn.__annotations__ = {"request": gr.Request}
            talk.start_recording(talk_start, [live_portrait, *option_inputs], [live_frame, live_status],
                                 api_name=False)
            talk.stream(talk_push, [talk], [live_frame, live_status], api_name=False, stream_every=0.5,
                        concurrency_limit=None, show_progress="hidden")
            talk.stop_recording(talk_stop, None, [live_frame, live_status, live_video], api_name=False)
            with gr.Tab("Evaluate", id="evaluate"):
                gr.Markdown("Sync-C / Sync-D (SyncNet; `avatar weights download syncnet`) of a video, as "
                            "`avatar eval` computes them.")
                with gr.Row():
                    with gr.Column():
                        eval_video = gr.File(label="Video (mp4)", file_count="single", elem_id="eval-video")
                        eval_speech = gr.Audio(label="Speech (default: the video's own)", type="filepath", format=None,
                                               sources=["upload"], elem_id="eval-speech")
                        eval_go = gr.Button("Evaluate", variant="primary", elem_id="eval-button")
                    with gr.Column():
                        metrics = gr.JSON(label="Metrics", elem_id="metrics")
                        plot = gr.Image(label="Sync-C against Sync-D", elem_id="plot", interactive=False)

            def evaluate(video, speech, request):
                return app.evaluate(video, speech, request=request)

            evaluate.__annotations__ = {"request": gr.Request}

            eval_go.click(evaluate, [eval_video, eval_speech], [metrics, plot], api_name="evaluate",
                          concurrency_limit=1, concurrency_id=DEVICE_QUEUE)

            def ended(request):
                app.talk_stop(request=request, wait=False)  # a talk still recording ends with the page
                app.sessions.end(app._session(request))

            ended.__annotations__ = {"request": gr.Request}

            demo.unload(ended)
        return demo
