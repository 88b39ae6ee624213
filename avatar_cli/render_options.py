"""The render options, declared once: ``avatar render`` and ``avatar batch`` take them as command
line options (their typer parameters are made from this table), ``avatar batch`` also as per-job
columns of a jobs file, and both turn them into one :class:`RenderOptions` by the same rule.

A new render option is one :class:`Opt` row here (and its :class:`RenderOptions` field).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from .errors import InputError
from .models.catalog import MODEL_CHOICES
from .sampling.clip_init import INIT_MODES
from .sampling.methods import METHODS

if TYPE_CHECKING:
    from .options import RenderOptions

# --help panels, most used first
PANEL_IO = "Input and output"
PANEL_METHOD = "Model, method and sampling"
PANEL_HALLO = "Hallo options (--model hallo)"
PANEL_DITTO = "Ditto options (--model ditto)"
PANEL_VIDEO = "Video"
PANEL_PERF = "Weights, device and performance"
PANEL_SCRIPT = "Scripting"


def _choices(name: str, values) -> type[Enum]:
    return Enum(name, [(v.replace("-", "_"), v) for v in values], type=str)


ModelChoice = _choices("Model", MODEL_CHOICES)
MethodChoice = _choices("Method", METHODS)
InitChoice = _choices("Init", INIT_MODES)
FitChoice = _choices("Fit", ("crop", "pad"))


def numbers(kind=int, example: str = "2,2,1,1") -> Callable[[str, str], tuple]:
    """A parser of comma-separated numbers: ``parse(text, option_name) -> tuple``."""
    def parse(text: str, option: str) -> tuple:
        try:
            return tuple(kind(v) for v in str(text).split(","))
        except ValueError:
            raise InputError(f"{option} takes comma-separated numbers such as {example} (got {text!r})") from None
    return parse


def flag(text) -> bool:
    """A yes/no value of a jobs-file column."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


@dataclass(frozen=True)
class Opt:
    """One render option.

    Attributes:
        name: the parameter and jobs-file column name; the flag is ``--name-with-dashes``.
        kind: the value type on the command line (an Enum for choices, str for comma lists).
        default: the command line's default (None: the model's or method's own).
        help: help text. panel: the ``--help`` panel.
        field: the :class:`RenderOptions` field it sets (default: ``name``).
        parse: text -> field value for comma lists (``numbers``).
        aliases: older flags / column names still accepted.
        show_default: typer's ``show_default`` (a string describes a computed default).
    """

    name: str
    kind: Any
    default: Any
    help: str
    panel: str
    field: str | None = None
    parse: Callable[[str, str], Any] | None = None
    aliases: tuple[str, ...] = ()
    show_default: bool | str = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def target(self) -> str:
        return self.field or self.name

    def value(self, raw) -> Any:
        """A command-line or jobs-file value -> the RenderOptions field value."""
        if raw is None:
            return None
        if isinstance(raw, Enum):
            raw = raw.value
        if isinstance(raw, str) and self.kind in (int, float):
            raw = self.kind(raw)
        elif self.kind is bool:
            raw = flag(raw) if isinstance(raw, str) else bool(raw)
        elif isinstance(self.kind, type) and issubclass(self.kind, Enum):
            raw = str(raw)
        if self.parse is not None:
            return self.parse(raw, self.flag)
        return raw


RENDER_OPTIONS: tuple[Opt, ...] = (
    Opt("model", ModelChoice, "auto", "The weights to render with (see Models below); auto: the first installed, "
        "else Ditto's public weights, downloaded once.", PANEL_METHOD),
    Opt("method", Optional[MethodChoice], None, "Sampling method; default: the model's own (see Methods below).",
        PANEL_METHOD, show_default="the model's"),
    Opt("steps", Optional[int], None, "num_inference_steps per clip", PANEL_METHOD, field="num_inference_steps",
        show_default="the method's"),
    Opt("seed", int, 0, "Noise seed (same seed, device, dtype: same frames).", PANEL_METHOD),
    Opt("init", InitChoice, "gaussian", "Clip initialisation.", PANEL_METHOD),
    Opt("start_timestep", int, 980, "Rolling starts: the timestep tau clips start from, 1..999.", PANEL_METHOD,
        aliases=("noise_level",)),
    Opt("guidance_audio", Optional[float], None, "cfg_a, audio guidance (FADA eqs. 9-10)", PANEL_METHOD,
        show_default="the method's"),
    Opt("guidance_ref", Optional[float], None, "cfg_r, reference guidance", PANEL_METHOD,
        show_default="the method's"),
    Opt("guidance_scale", Optional[float], None, "The CFG scale of --method hallo (3.5), echomimic (2.5) and ditto (2)", PANEL_METHOD,
        show_default="the method's"),
    Opt("window_steps", Optional[str], None, "PeRFlow steps per window, nearest t=1 first, e.g. 2,2,1,1.",
        PANEL_METHOD, parse=numbers(int), show_default=False),
    Opt("face_box", Optional[str], None, "The face as x,y,w,h in the image's pixels (hallo, ditto, echomimic)", PANEL_IO,
        parse=numbers(float, "120,80,200,240"), show_default="detected"),
    Opt("lip_box", Optional[str], None, "The lips as x,y,w,h in the image's pixels (hallo)", PANEL_HALLO,
        parse=numbers(float, "150,240,100,40"), show_default="detected"),
    Opt("face_expand_ratio", float, 1.2, "Enlargement of the face box for the face locator and face mask "
        "(Hallo's face_expand_ratio).", PANEL_HALLO),
    Opt("face_embedding", Optional[Path], None, "A .npy file with the face's 512-d ArcFace embedding.", PANEL_HALLO,
        show_default=False),
    Opt("audio_weights", str, "1,1,1", "Weights of the pose/background, face and lip audio branches "
        "(Hallo's motion scale).", PANEL_HALLO, parse=numbers(float, "1,1,1"), aliases=("motion_scale",)),
    Opt("separate_vocals", bool, False, "Audio features from the speech's separated vocals (music or noise behind "
        "it; needs the vocals extra and 'avatar weights download hallo-audio-separator').", PANEL_HALLO),
    Opt("emotion", Optional[str], None, "NAME (angry, disgust, fear, happy, neutral, sad, surprise, contempt), "
        "a mix NAME:w,NAME:w, or a per-frame CSV/JSON file of frame,emotion rows.", PANEL_DITTO,
        show_default="the cfg's, neutral"),
    Opt("blink", Optional[str], None, "auto (random 60-100 frame gaps), never, or N frames between blinks "
        "(needs the cfg's blink template).", PANEL_DITTO, show_default="the cfg's"),
    Opt("pose_offset", Optional[str], None, "Head pose offset pitch,yaw,roll in degrees, added to the cfg's "
        "correction.", PANEL_DITTO, parse=numbers(float, "0,10,0"), show_default=False),
    Opt("pose_gain", Optional[str], None, "Gains pitch,yaw,roll of the generated head motion (0: the "
        "portrait's pose).", PANEL_DITTO, parse=numbers(float, "1,0.5,1"), show_default="1,1,1"),
    Opt("mouth_gain", float, 1.0, "Gain of the lips' motion (0: the lips as in the portrait).", PANEL_DITTO),
    Opt("motion_overlap", Optional[int], None, "Overlap of the DiT's 80-frame windows, 1..79 (not --overlap, "
        "the video encoder's thread).", PANEL_DITTO, show_default="the cfg's; 70 with --stream"),
    Opt("controls", Optional[Path], None, "JSON lines of per-frame controls, e.g. {\"frame\": 30, "
        "\"delta_yaw\": 10}.", PANEL_DITTO, parse=lambda text, option: str(text), show_default=False),
    Opt("size", int, 512, "Frame side in pixels, a multiple of 64.", PANEL_VIDEO),
    Opt("fit", FitChoice, "crop", "Non-square portraits: crop the centre or pad with black.", PANEL_VIDEO),
    Opt("fps", float, 25.0, "Video frame rate, 1..120.", PANEL_VIDEO),
    Opt("clip_frames", int, 16, "Frames generated together (F).", PANEL_VIDEO),
    Opt("motion_frames", Optional[int], None, "Latents carried between clips (M)", PANEL_VIDEO,
        show_default="the model's, 4"),
    Opt("crf", int, 18, "x264 quality, 0 (lossless)..51.", PANEL_VIDEO),
    Opt("decoder", str, "vae", "Latent decoder: vae, or taesd (fast tiny autoencoder).", PANEL_PERF),
    Opt("overlap", bool, True, "Encode the video in a background thread.", PANEL_PERF),
)
BY_NAME = {o.name: o for o in RENDER_OPTIONS}
# jobs-file column -> option (older column names included)
COLUMNS = {**BY_NAME, **{alias: o for o in RENDER_OPTIONS for alias in o.aliases}}


def parameters() -> list[inspect.Parameter]:
    """The typer parameters of the render options, for a command's signature."""
    import typer

    params = []
    for o in RENDER_OPTIONS:
        if o.kind is bool:
            decls = [f"{o.flag}/--no-{o.flag[2:]}" if o.default else o.flag]
        else:
            decls = [o.flag, *("--" + a.replace("_", "-") for a in o.aliases)]
        annotation = Annotated[o.kind, typer.Option(*decls, help=o.help, rich_help_panel=o.panel,
                                                    show_default=o.show_default)]
        default = o.default
        if isinstance(o.kind, type) and issubclass(o.kind, Enum):
            default = o.kind(o.default)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
    params.append(inspect.Parameter(
        "no_face_embedding", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option("--no-face-embedding", rich_help_panel=PANEL_HALLO,
                                                help="Use the zero face embedding (no ArcFace model needed).")]))
    return params


def with_render_options(command: Callable) -> Callable:
    """Give ``command`` (which takes ``**render``) the render options as keyword parameters after its own."""
    import typing

    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def panel(param: inspect.Parameter) -> str | None:
        extra = typing.get_args(param.annotation)[1:]
        return getattr(extra[0], "rich_help_panel", None) if extra else None

    # --help shows panels in order of first appearance: inputs and outputs, then these, then the rest
    first = [p for p in own if panel(p) in (None, PANEL_IO)]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in first]
    command.__signature__ = signature.replace(parameters=[*first, *parameters(), *rest])
    return command


def build(values: dict) -> "RenderOptions":
    """The command line's render-option values (``parameters()`` names) -> :class:`RenderOptions`.

    Raises:
        InputError: a malformed value, or --face-embedding with --no-face-embedding.
    """
    from .options import RenderOptions

    fields = {o.target: o.value(values[o.name]) for o in RENDER_OPTIONS if o.name in values}
    no_embedding = values.get("no_face_embedding", False)
    if no_embedding and fields.get("face_embedding") is not None:
        raise InputError("--no-face-embedding and --face-embedding exclude each other; pick one")
    embedding = fields.pop("face_embedding", None)
    fields["face_embedding"] = "none" if no_embedding else (str(embedding) if embedding is not None else "auto")
    return RenderOptions(**fields)


def column_value(column: str, text) -> tuple[str, Any]:
    """A jobs-file cell -> (RenderOptions field, value). Raises KeyError for an unknown column and
    ValueError/InputError for a malformed value."""
    o = COLUMNS[column]
    value = o.value(text)
    if o.name == "face_embedding":
        value = "none" if str(text).strip().lower() == "none" else (str(value) if value is not None else "auto")
    return o.target, value
