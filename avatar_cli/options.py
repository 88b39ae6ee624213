"""What to render (:class:`RenderOptions`, validated with one-line errors), a render's checked
inputs (:class:`RenderJob`, :func:`prepare_job`) and what a render did (:class:`RenderResult`).

Nothing here imports torch: bad input is reported before any model loads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .media.audio import load_speech
from .media.vocals import check_separator_installed
from .media.features import load_features
from .media.image import FITS, load_portrait, load_source
from .media.video import check_output_path
from .models.catalog import MODELS, resolve_model
from .sampling.clip_init import INIT_MODES
from .sampling.methods import METHODS, Method


@dataclass
class RenderOptions:
    """What to render. Units: fps in frames per second, size in pixels, start_timestep a timestep.

    Attributes:
        model: the weights, a key of ``MODELS`` (``models/catalog.py``); the former method names
            ``adv-lcm`` and ``fada-balanced`` are read as their model and method.
        method: sampling method, a key of ``METHODS`` (``sampling/methods.py``); None = the
            model's own.
        num_inference_steps: steps per clip; None = the method's default (osa-lcm 1, adv-lcm 2,
            fada and fada-balanced 6, teacher 25, hallo 40).
        guidance_audio, guidance_ref: cfg_a, cfg_r of FADA eqs. 9-10; None = the method's default.
        guidance_scale: the single CFG scale of ``hallo``; None = 3.5.
        window_steps: PeRFlow steps per window, nearest t = 1 first (e.g. (2, 2, 1, 1)).
        init: clip initialisation, one of ``INIT_MODES`` (rolling ones: LCM and DDIM methods).
        start_timestep: tau, the timestep rolling starts begin at, in [1, 999].
        seed: noise seed; same seed, device and dtype give identical frames.
        fps: video frame rate (audio features are computed at this rate).
        size: square frame side, a multiple of 64.
        fit: "crop" (centre square) or "pad" (black borders) for non-square portraits.
        clip_frames: F, frames generated together.
        motion_frames: M, latents carried from one clip to the next; None = the model's own.
        crf: libx264 quality (lower is better, 18 looks lossless).
        decode_batch_size: frames per VAE decode call (memory bound).
        face_box: (x, y, w, h) of the face in the input image's pixels; None = detect (Hallo family).
        lip_box: (x, y, w, h) of the lips in the input image's pixels; None = MediaPipe's lip
            landmarks, else the lower middle of the face box (Hallo family).
        face_expand_ratio: Hallo's ``face_expand_ratio``: the face box's enlargement for the
            face-locator image and the face mask (Hallo family).
        face_embedding: "auto" (ArcFace through InsightFace), "none" (the zero embedding), or a
            .npy file of 512 floats (Hallo family).
        audio_weights: weights of the three audio-region branches (pose/full, face, lip); Hallo
            calls them its "motion scale".
        decoder: "vae" (the model's) or "taesd" (the tiny autoencoder's decoder: faster, blurrier).
        overlap: encode the video in a background thread while the next clip is sampled.
        separate_vocals: compute the audio features from the recording's separated vocals
            (``media/vocals.py``, Hallo's UVR model); the original is still muxed.
        emotion: ``--model ditto``: NAME, NAME:w,NAME:w or a per-frame FILE (``motion/controls.py``);
            None = the cfg's (neutral).
        blink: ``--model ditto``: "auto", "never" or N frames between blinks; None = the cfg's.
        pose_offset: ``--model ditto``: (pitch, yaw, roll) degrees added to the cfg's overall controls.
        pose_gain: ``--model ditto``: (pitch, yaw, roll) gains of the generated pose relative to the first
            frame (1 = as generated, 0 = the source's pose).
        mouth_gain: ``--model ditto``: gain of the lip keypoints' expression motion relative to the first
            frame (1 = as generated).
        motion_overlap: ``--model ditto``: the DiT windows' overlap (Ditto's overlap_v2), 1..79; None = the
            cfg's (offline) or 70 (``--stream``).
        controls: ``--model ditto``: a JSON-lines file of per-frame controls (``motion/controls.py``).
    """

    model: str = "osa-lcm"
    method: str | None = None
    num_inference_steps: int | None = None
    guidance_audio: float | None = None
    guidance_ref: float | None = None
    guidance_scale: float | None = None
    window_steps: tuple[int, ...] | None = None
    init: str = "gaussian"
    start_timestep: int = 980
    seed: int = 0
    fps: float = 25.0
    size: int = 512
    fit: str = "crop"
    clip_frames: int = 16
    motion_frames: int | None = None
    crf: int = 18
    decode_batch_size: int = 4
    face_box: tuple[int, int, int, int] | None = None
    lip_box: tuple[float, float, float, float] | None = None
    face_expand_ratio: float = 1.2
    face_embedding: str = "auto"
    audio_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    decoder: str = "vae"
    overlap: bool = True
    separate_vocals: bool = False
    emotion: str | None = None
    blink: str | None = None
    pose_offset: tuple[float, float, float] | None = None
    pose_gain: tuple[float, float, float] | None = None
    mouth_gain: float = 1.0
    motion_overlap: int | None = None
    controls: str | None = None

    def __post_init__(self):
        self.model, self.method, _ = resolve_model(self.model, self.method)

    @property
    def method_name(self) -> str:
        """The sampling method's name after defaults (the model's own when ``method`` is None)."""
        if self.method is not None:
            return self.method
        spec = MODELS.get(self.model)
        return spec.default_method if spec is not None else self.model

    @property
    def sampling(self) -> Method:
        """The sampling method object (``sampling/methods.py``)."""
        return METHODS[self.method_name]

    @property
    def steps(self) -> int:
        """num_inference_steps after defaults (the window split's sum for PeRFlow, if given)."""
        if self.num_inference_steps is not None:
            return self.num_inference_steps
        if self.window_steps is not None:
            return sum(self.window_steps)
        return self.sampling.default_steps

    @property
    def scales(self) -> tuple[float, ...]:
        """Guidance scales after defaults: (cfg_a, cfg_r), (s,) for CFG, () without guidance."""
        m = self.sampling
        if m.guidance == "cfg":
            return (m.scales[0] if self.guidance_scale is None else self.guidance_scale,)
        if m.guidance == "none":
            return ()
        return (m.scales[0] if self.guidance_audio is None else self.guidance_audio,
                m.scales[1] if self.guidance_ref is None else self.guidance_ref)

    @property
    def guidance(self) -> dict | None:
        """The guidance used, for reports: {"rule", "audio", "ref"} or {"rule", "scale"}; None."""
        rule, scales = self.sampling.guidance, self.scales
        if rule == "none":
            return None
        if rule == "cfg":
            return {"rule": rule, "scale": scales[0]}
        return {"rule": rule, "audio": scales[0], "ref": scales[1]}

    def validate(self, max_sequence: int | None = None) -> None:
        """Raise :class:`InputError` naming the first option out of range.

        ``max_sequence``: the model's temporal positions (motion + clip frames); None skips that check.
        """
        if self.model not in MODELS:
            raise InputError(f"--model must be one of {', '.join(MODELS)} (got {self.model!r})")
        if self.method_name not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)} (got {self.method_name!r})")
        method, name = self.sampling, self.method_name
        family = MODELS[self.model].family
        if (family == "ditto") != (method.family == "ditto"):
            raise InputError(f"--method {name} does not apply to --model {self.model}; leave --method out "
                             f"(the model's own: {MODELS[self.model].default_method})")
        low, top = method.step_range
        checks = [
            (low <= self.steps <= top, f"--steps for {name} must be {low}..{top} (got {self.steps})"),
            (self.init in INIT_MODES, f"--init must be one of {', '.join(INIT_MODES)} (got {self.init!r})"),
            (family != "ditto" or self.fps == 25, f"--model ditto renders at 25 fps (got --fps {self.fps:g}); leave --fps out"),
            (family != "ditto" or self.init == "gaussian", "--init applies to the U-Net models, not --model ditto"),
            (self.init == "gaussian" or method.supports_rolling,
             f"--init {self.init} cannot start PeRFlow's windows; use it with the LCM or DDIM methods"),
            (self.window_steps is None or method.num_windows is not None,
             f"--window-steps applies to the PeRFlow methods (fada, fada-balanced), not {name}"),
            (self.window_steps is None or (len(self.window_steps) == method.num_windows
                                           and min(self.window_steps) >= 1 and sum(self.window_steps) == self.steps),
             f"--window-steps must be {method.num_windows} counts >= 1 summing to --steps (got {self.window_steps})"),
            (method.guidance != "none" or (self.guidance_audio is None and self.guidance_ref is None
                                           and self.guidance_scale is None),
             f"{name} is distilled without guidance; the --guidance-* options do not apply"),
            (method.guidance == "cfg" or self.guidance_scale is None,
             f"--guidance-scale is the single CFG scale of --method hallo; {name} takes "
             f"--guidance-audio/--guidance-ref"),
            (method.guidance in ("multi-cfg", "cfg-tokens") or (self.guidance_audio is None and self.guidance_ref is None),
             f"--guidance-audio/--guidance-ref apply to multi-CFG methods; {name} takes --guidance-scale"),
            (all(g is None or 0 <= g <= 30 for g in (self.guidance_audio, self.guidance_ref, self.guidance_scale)),
             "guidance scales must be 0..30"),
            (self.face_box is None or (len(self.face_box) == 4 and self.face_box[2] > 0 and self.face_box[3] > 0),
             f"--face-box must be x,y,w,h with w, h > 0 (got {self.face_box})"),
            (self.lip_box is None or (len(self.lip_box) == 4 and self.lip_box[2] > 0 and self.lip_box[3] > 0),
             f"--lip-box must be x,y,w,h with w, h > 0 (got {self.lip_box})"),
            (0 < self.face_expand_ratio <= 4, f"--face-expand-ratio must be in (0, 4] (got {self.face_expand_ratio:g})"),
            (self.decoder in ("vae", "taesd"), f"--decoder must be vae or taesd (got {self.decoder!r})"),
            (len(self.audio_weights) == 3 and all(0 <= v <= 10 for v in self.audio_weights),
             f"--audio-weights must be three weights pose,face,lip in 0..10 (got {self.audio_weights})"),
            (1 <= self.start_timestep <= 999, f"--start-timestep must be 1..999 (got {self.start_timestep})"),
            (1 <= self.fps <= 120, f"--fps must be 1..120 (got {self.fps:g})"),
            (self.size % 64 == 0 and 64 <= self.size <= 2048,
             f"--size must be a multiple of 64 in 64..2048 (got {self.size}); try --size 512"),
            (self.fit in FITS, f"--fit must be one of {', '.join(FITS)} (got {self.fit!r})"),
            (0 <= self.crf <= 51, f"--crf must be 0..51 (got {self.crf})"),
            (self.decode_batch_size >= 1, f"decode batch size must be >= 1 (got {self.decode_batch_size})"),
            (self.seed >= 0, f"--seed must be >= 0 (got {self.seed})"),
        ]
        ditto_only = [n for n, v in (("emotion", self.emotion), ("blink", self.blink), ("pose-offset", self.pose_offset),
                      ("pose-gain", self.pose_gain), ("motion-overlap", self.motion_overlap),
                      ("controls", self.controls)) if v is not None] + (["mouth-gain"] if self.mouth_gain != 1 else [])
        checks += [
            (family == "ditto" or not ditto_only,
             f"--{ditto_only[0] if ditto_only else ''} applies to --model ditto, not --model {self.model}"),
            (self.pose_offset is None or (len(self.pose_offset) == 3 and all(abs(v) <= 90 for v in self.pose_offset)),
             f"--pose-offset must be pitch,yaw,roll degrees in -90..90 (got {self.pose_offset})"),
            (self.pose_gain is None or (len(self.pose_gain) == 3 and all(0 <= v <= 5 for v in self.pose_gain)),
             f"--pose-gain must be three gains pitch,yaw,roll in 0..5 (got {self.pose_gain})"),
            (0 <= self.mouth_gain <= 5, f"--mouth-gain must be 0..5 (got {self.mouth_gain:g})"),
            (self.motion_overlap is None or 1 <= self.motion_overlap <= 79,
             f"--motion-overlap must be 1..79 frames of the 80-frame DiT window (got {self.motion_overlap})"),
        ]
        m = self.motion_frames if self.motion_frames is not None else 0
        checks += [
            (self.clip_frames >= 1, f"--clip-frames must be >= 1 (got {self.clip_frames})"),
            (0 <= m <= self.clip_frames, f"--motion-frames must be 0..clip frames (got {m})"),
            (max_sequence is None or m + self.clip_frames <= max_sequence,
             f"--clip-frames plus --motion-frames must be at most {max_sequence}, the temporal attention's "
             f"positions (got {self.clip_frames} + {m})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if family == "ditto":  # the files and names are read now, so that they fail before a model loads
            from .motion.controls import parse_blink, parse_emotion_option, read_controls

            parse_emotion_option(self.emotion)
            parse_blink(self.blink)
            read_controls(self.controls)


@dataclass
class RenderResult:
    """What a render did. Times in seconds; ``rtf`` = wall seconds / video seconds; ``nfe`` =
    denoiser evaluations per clip (the method's table value); ``evaluations`` = the denoiser
    evaluations counted over the whole video (U-Net, or Ditto's DiT); ``guidance`` = {"rule",
    "audio", "ref"}, {"rule", "scale"} or None; ``first_frame_delay_s`` = start of sampling to the
    first frames handed to the video encoder; ``stages``: seconds per stage of the family.
    ``wall_s`` is the render alone (reading the inputs, the per-portrait work, sampling, frames,
    writing), and ``rtf`` is defined on it; ``load_s`` (building the models) and ``total_s`` (the
    whole process, as a user times it) are filled in by the CLI, None from the library."""

    output: str
    frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    model: str
    method: str
    nfe: int | None
    num_inference_steps: int | None
    guidance: dict | None
    evaluations: int
    stages: dict[str, float]
    wall_s: float
    first_frame_delay_s: float | None
    rtf: float
    device: str
    dtype: str
    seed: int
    init: str
    weights: str
    controls: dict | None = None  # --model ditto: the controls in effect (DittoPipeline.describe)
    precision: dict | None = None  # network -> the format it ran in (precision.py), where the family reports it
    compiled: list | None = None  # the networks that ran torch.compiled (compiling.py), where the family reports it
    renderer: dict | None = None  # --model ditto: warp + decoder's batch and CUDA graph (graph_renderer.py)
    load_s: float | None = None  # the CLI: seconds building the models (downloads not included)
    total_s: float | None = None  # the CLI: seconds from the process start to the result

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RenderJob:
    """A render's checked inputs: the portrait (S, S, 3) uint8, the speech (samples,) float32 at
    16 kHz, where to write, and the options. ``decode_s``: seconds spent decoding the speech;
    ``image_s``: seconds spent reading the portrait (both count in the render's wall time)."""

    image: np.ndarray
    waveform: np.ndarray
    audio_path: Path
    output: Path
    options: RenderOptions
    decode_s: float = 0.0
    face_box: tuple[float, float, float, float] | None = None  # ``options.face_box`` in frame pixels
    audio_features: Path | None = None  # a features file from ``avatar audio encode``
    image_s: float = 0.0
    lip_box: tuple[float, float, float, float] | None = None  # ``options.lip_box`` in frame pixels
    side: int | None = None  # the square portrait's side in the file's pixels, before resizing (None: S)


def portrait_boxes(opts: RenderOptions, geometry) -> dict:
    """``--face-box`` and ``--lip-box`` (input-image pixels) in frame pixels, and the side of the
    square portrait (``--fit`` of the file, before resizing) in the file's pixels: the
    :class:`RenderJob` fields ``face_box``, ``lip_box``, ``side``.

    Raises:
        InputError: a box outside the image.
    """
    boxes = {"side": round(opts.size / geometry.scale)}
    for name, box in (("face_box", opts.face_box), ("lip_box", opts.lip_box)):
        if box is not None:
            x, y, w, h = box
            if x < 0 or y < 0 or x + w > geometry.width or y + h > geometry.height:
                raise InputError(f"--{name.replace('_', '-')} {x:g},{y:g},{w:g},{h:g} lies outside the "
                                 f"{geometry.width}x{geometry.height} image; give x,y,w,h in its pixels")
        boxes[name] = None if box is None else geometry.box_to_frame(box)
    return boxes


def prepare_job(image_path: str | Path, audio_path: str | Path, output_path: str | Path,
                options: RenderOptions | None = None, overwrite: bool = False,
                audio_features: str | Path | None = None) -> RenderJob:
    """Read and check everything a render needs except the models (so bad input fails fast).

    Raises:
        InputError: bad options, image, audio or output path.
    """
    opts = options or RenderOptions()
    opts.validate()
    output = check_output_path(output_path, overwrite)
    start = time.perf_counter()
    if MODELS[opts.model].family == "ditto":  # Ditto keeps the portrait's own aspect ratio
        image, geometry = load_source(image_path, with_geometry=True)
    else:
        image, geometry = load_portrait(image_path, opts.size, opts.fit, with_geometry=True)
    image_s = time.perf_counter() - start
    boxes = portrait_boxes(opts, geometry)
    if audio_features is not None:
        load_features(audio_features)  # readable, and a features file: fail before any model loads
    elif opts.separate_vocals:
        check_separator_installed()
    start = time.perf_counter()
    waveform = load_speech(audio_path)
    return RenderJob(image, waveform, Path(audio_path), output, opts, time.perf_counter() - start,
                     audio_features=None if audio_features is None else Path(audio_features), image_s=image_s, **boxes)
