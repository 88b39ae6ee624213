"""The render options as Gradio widgets, made from the same declarations as ``avatar render``'s flags
and ``avatar batch``'s columns (``render_options.RENDER_OPTIONS``): a new option there is a new widget
here with no edit.

The rule (from each :class:`~avatar_cli.render_options.Opt`'s ``kind``, ``default``, ``help`` and
``panel``): an Enum -> a dropdown of its values; bool -> a checkbox; int / float -> a number box (empty
= the model's or method's own when the default is None); str -> a text box (comma lists, names);
a Path -> no widget (a request never names a file on the server). The widgets are grouped by the
option's ``--help`` panel; the family panels (Ditto, Hallo) are accordions.
"""

from __future__ import annotations

import shlex
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..render_options import PANEL_IO, PANEL_METHOD, RENDER_OPTIONS, Opt

#: Options shown first, outside the accordions (the everyday ones).
MAIN = ("model", "method", "steps", "seed", "size")


def base_kind(o: Opt) -> Any:
    """The option's value type with ``Optional`` removed (``Optional[int]`` -> ``int``)."""
    kind = o.kind
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def is_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Enum)


def shown(o: Opt) -> bool:
    """Whether the option gets a widget: not a server path."""
    return base_kind(o) is not Path


UI_OPTIONS: tuple[Opt, ...] = tuple(o for o in RENDER_OPTIONS if shown(o))
BY_NAME = {o.name: o for o in UI_OPTIONS}


def label(o: Opt) -> str:
    return o.flag


def make_widget(o: Opt, **overrides):
    """The Gradio component of one option (``overrides``: e.g. a test's smaller ``value``)."""
    import gradio as gr

    kind = base_kind(o)
    info = o.help
    if o.default is None and isinstance(o.show_default, str):
        info = f"{info} (empty: {o.show_default})"
    common = {"label": label(o), "info": info, "elem_id": f"opt-{o.name}"}
    if is_enum(kind):
        choices = [m.value for m in kind]
        if o.default is None:
            choices = [""] + choices
        args = {**common, "choices": choices, "value": o.default if o.default is not None else ""}
        return gr.Dropdown(**{**args, **overrides})
    if kind is bool:
        return gr.Checkbox(**{**common, "value": bool(o.default), **overrides})
    if kind in (int, float) and o.default is not None:
        args = {**common, "value": o.default, "precision": 0 if kind is int else None}
        return gr.Number(**{**args, **overrides})
    # a number whose default is the model's own: a text box, empty = that default (a number box sends 0)
    return gr.Textbox(**{**common, "value": "" if o.default is None else str(o.default), "max_lines": 1,
                         **overrides})


def api_default(o: Opt):
    """The option's default as its widget holds it (an API call may leave the argument out)."""
    return "" if o.default is None else o.default


def values_of(raw: list) -> dict:
    """Widget values (in ``UI_OPTIONS`` order) -> the command line's render-option values
    (``render_options.build``'s input): empty boxes become None (the model's own), numbers their type."""
    values: dict[str, Any] = {}
    for o, value in zip(UI_OPTIONS, raw):
        kind = base_kind(o)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            value = o.default
        elif kind in (int, float):
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"{o.flag} takes a number (got {value!r})") from None
            value = int(round(value)) if kind is int else value
        elif isinstance(value, str):
            value = value.strip()
        values[o.name] = value
    return values


def command_line(values: dict, load_flags: list[str], image: str = "portrait.png", audio: str = "speech.wav") -> str:
    """The ``avatar render`` command that renders the same video: the flags of the values that differ
    from their default, after the server's own load flags (``--random-weights --arch tiny``, ...)."""
    parts = ["avatar", "render", image, audio]
    for o in UI_OPTIONS:
        value = values.get(o.name, o.default)
        if isinstance(value, Enum):
            value = value.value
        if value == o.default or value is None:
            continue
        if base_kind(o) is bool:
            parts.append(o.flag if value else f"--no-{o.flag[2:]}")
        else:
            parts += [o.flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts + list(load_flags))


def panels() -> dict[str, list[Opt]]:
    """The shown options outside :data:`MAIN`, by ``--help`` panel (in declaration order)."""
    groups: dict[str, list[Opt]] = {}
    for o in UI_OPTIONS:
        if o.name not in MAIN:
            groups.setdefault(o.panel if o.panel != PANEL_IO else PANEL_METHOD, []).append(o)
    return groups
