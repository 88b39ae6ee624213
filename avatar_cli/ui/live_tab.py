"""The Live tab of ``avatar ui`` (Ditto): speech read at speech speed through ``render_stream`` (the
path of ``avatar render --stream``, API ``/live``), or the microphone while the user talks
(:class:`Talk`).
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from pathlib import Path

from ..errors import AvatarError
from . import widgets
from .common import DEVICE_QUEUE, _error, unexpected, upload_tab, with_request, with_signature


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


class LiveTab:
    """The Live tab's handlers and widgets, mixed into :class:`~avatar_cli.ui.app.App` (which gives
    ``sessions``, ``uploads``, ``models``, the talks of each session and the upload helpers)."""

    # ------------------------------------------------------------------ live
    def live(self, portrait, speech, *raw, request=None):
        """The Live tab (Ditto): speech read at speech speed through ``render_stream`` (the path of
        ``avatar render --stream``); yields (newest frame, status, None) as frames are made, then
        (last frame, status, the streamed mp4)."""
        from ..media.image import load_source
        from ..media.stream import StreamStop, pcm_chunks, render_stream

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
        # the page gone (Gradio closes this generator): the stream stops at its next wait, as it does when
        # the reader of `avatar render - -o - --stream` goes away (issue 29)
        cancel = StreamStop()
        outcome: dict = {}

        class Tee:  # pipe.stream, with each batch's newest frame handed to the page too
            def stream(self, *args, **kwargs):
                for batch, times in pipe.stream(*args, **kwargs):
                    frames.put((time.perf_counter(), len(batch), batch[-1]))
                    yield batch, times

        def run():
            try:
                outcome["result"] = render_stream(Tee(), picture, pcm_chunks(audio, realtime=True, stop=cancel),
                                                  output, options, fmt="mp4", face_box=face_box, stop=cancel)
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
            if worker.is_alive():  # closed before the end: the client disconnected
                cancel.cancel("the live client disconnected")
            worker.join()
            cancel.close()
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

    def live_page(self, names: list[str], option_inputs: list):
        """The Live tab's widgets and events, made inside the page's Blocks; ``names`` and
        ``option_inputs`` are the Render tab's (its Ditto options apply here)."""
        import gradio as gr

        app = self
        intro = ("Ditto (`--model ditto`) streams: the speech is read at speech speed and frames appear as they "
                 "are made. The Render tab's Ditto options apply.")

        def microphone():
            return gr.Audio(label="Or talk: frames follow while you speak", sources=["microphone"], streaming=True,
                            type="numpy", elem_id="live-talk")

        with upload_tab("Live", "live", intro, "Portrait", "live-portrait", "Speech (record or upload)",
                        "live-speech", ["microphone", "upload"], "Start", "live-button", more=microphone) as (
                live_portrait, live_speech, live_go, talk):
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
            with_request(fn)
        talk.start_recording(talk_start, [live_portrait, *option_inputs], [live_frame, live_status],
                             api_name=False)
        talk.stream(talk_push, [talk], [live_frame, live_status], api_name=False, stream_every=0.5,
                    concurrency_limit=None, show_progress="hidden")
        talk.stop_recording(talk_stop, None, [live_frame, live_status, live_video], api_name=False)
