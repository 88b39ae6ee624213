"""What the ``avatar ui`` tabs share: the device queue, errors as one line in the page, and the
signature wrapper that names each API argument, the layout of an upload tab.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

from . import widgets

DEVICE_QUEUE = "device"  # the concurrency id every model-running event shares: one at a time


def _error(err: Exception):
    """The CLI's one line (``avatar: error: ...``) as the page's error."""
    import gradio as gr

    return gr.Error(f"avatar: error: {err}", print_exception=False)


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


def with_signature(fn, names: list[str], generator: bool = False):
    """``fn(*values, request=)`` with a signature naming each input (the API's argument names), its
    errors as one line in the page (:class:`unexpected`); ``names[:2]`` are the two uploads."""
    import gradio as gr

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


def with_request(fn):
    """``fn`` with the annotation Gradio reads to fill in its ``request`` argument (the session)."""
    import gradio as gr

    fn.__annotations__ = {"request": gr.Request}
    return fn


@contextmanager
def upload_tab(title: str, tab_id: str, intro: str, file_label: str, file_id: str, audio_label: str, audio_id: str,
               sources: list[str], button: str, button_id: str, more=None):
    """A tab of uploads in, results out: ``title`` (``id=tab_id``), ``intro`` (Markdown), then a row of
    two columns. The left holds a file box (checked by content on the server, not by Gradio's
    decoders), a speech box (a file path), the primary button and what ``more()`` makes; the body of
    the ``with`` fills the right one.

    Yields:
        (gradio.File, gradio.Audio, gradio.Button, what ``more()`` returned or None).
    """
    import gradio as gr

    with gr.Tab(title, id=tab_id):
        gr.Markdown(intro)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label=file_label, file_count="single", elem_id=file_id)
                speech = gr.Audio(label=audio_label, type="filepath", format=None, sources=sources,
                                  elem_id=audio_id)
                go = gr.Button(button, variant="primary", elem_id=button_id)
                extra = more() if more is not None else None
            with gr.Column():
                yield upload, speech, go, extra
