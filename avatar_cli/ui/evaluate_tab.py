"""The Evaluate tab of ``avatar ui``: the same ``evaluate_video`` as ``avatar eval`` (Sync-C /
Sync-D with SyncNet; API ``/evaluate``) and its plot.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AvatarError
from .common import DEVICE_QUEUE, _error, upload_tab, with_request


class EvaluateTab:
    """The Evaluate tab's handler and widgets, mixed into :class:`~avatar_cli.ui.app.App` (which gives
    ``sessions`` and ``uploads``)."""

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

    def evaluate_page(self):
        """The Evaluate tab's widgets and events, made inside the page's Blocks."""
        import gradio as gr

        app = self
        intro = ("Sync-C / Sync-D (SyncNet; `avatar weights download syncnet`) of a video, as `avatar eval` "
                 "computes them.")
        with upload_tab("Evaluate", "evaluate", intro, "Video (mp4)", "eval-video", "Speech (default: the video's own)",
                        "eval-speech", ["upload"], "Evaluate", "eval-button") as (eval_video, eval_speech, eval_go, _):
            metrics = gr.JSON(label="Metrics", elem_id="metrics")
            plot = gr.Image(label="Sync-C against Sync-D", elem_id="plot", interactive=False)

        @with_request
        def evaluate(video, speech, request):
            return app.evaluate(video, speech, request=request)

        eval_go.click(evaluate, [eval_video, eval_speech], [metrics, plot], api_name="evaluate",
                      concurrency_limit=1, concurrency_id=DEVICE_QUEUE)
