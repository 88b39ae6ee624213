"""Ditto's motion-space family: portrait + speech -> LivePortrait motion from a small DiT -> frames.

Data flow (Ditto's offline pipeline, ``../shared/DITTO.md`` sec. 1; Li et al., "Ditto: Motion-Space
Diffusion for Controllable Realtime Talking Head Synthesis")::

    portrait (its own aspect, <= 1920) -> face crop 512 + crop->frame matrix (media/face_crop.py)
        -> 256 px -> appearance extractor -> f_s (1, 32, 16, 64, 64)          (once per portrait)
        -> motion extractor -> source motion x_s_info (pitch/yaw/roll bins, t, exp, scale, kp)
        -> eye openness / gaze (MediaPipe, or neutral values)
    speech 16 kHz -> HuBERT windows (motion/hubert_windows.py) -> (N, 1024) at 25 fps
        -> conditions (N, 1103) = [audio | emotion | eye_open | eye_ball | source kp] (motion/condition.py)
        -> the motion DiT in 80-frame windows, DDIM eta 1 + CFG 2 (sampling/motion_ddim.py),
           overlap fusion and smoothing (motion/windows.py) -> motion (N, 265)
    for each chunk of frames:
        MotionStitch: relative motion, lip/eye regions, blinks (motion/stitch.py)
        -> keypoints x_s, x_d (models/liveportrait/keypoints.py) -> stitching network
        -> warping network (f_s, x_s, x_d) -> SPADE decoder -> 512 x 512 render
        -> pasted back into the full portrait with the feathered crop mask (media/paste.py)
    -> the shared writer (pipelines/base.py): speech muxed, temporary file renamed

Weights folder (``from_pretrained``): the Hugging Face snapshot of ``digital-avatar/ditto-talkinghead``
(``ditto_pytorch/models/*.pth``, ``ditto_pytorch/aux_models/*``, ``ditto_cfg/*.pkl``) or the folder
``avatar weights convert --from ditto`` writes (``models/``, ``aux_models/``, ``ditto_cfg.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..compiling import CompiledNetwork, wants_compile
from ..errors import InputError, WeightsError
from ..graph_renderer import RendererSettings
from ..media.face_crop import SourceCrop, crop_source, detect_eye_state
from ..media.paste import PasteBack
from ..models.ditto import DittoModels, index_config
from ..models.liveportrait.keypoints import transform_keypoint
from ..models.liveportrait.stitching import stitch
from ..motion.condition import AudioConditions, motion_to_vector, vector_to_motion
from ..motion.hubert_windows import FPS, OnnxHubert, RandomHubert, num_frames, offline_features, offline_window_starts
from ..motion.controls import parse_blink, parse_emotion_option, read_controls
from ..motion.stitch import ANGLE_KEYS, LIP_KP, MotionStitch, _kp_mask
from ..motion.windows import offline_motion
from ..options import RenderJob, RenderOptions
from ..precision import NetworkPrecision, describe as describe_precision, policy
from ..render_loop import pipelined, to_host
from ..runtime import resolve_device, resolve_dtype
from ..safe_pickle import DittoConfig
from ..sampling.motion_ddim import draw_noises, sample_motion_ddim
from .base import Pipeline, RenderStats

MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")  # the motion extractor's output order
HUBERT_FILE = "hubert_streaming_fix_kv.onnx"
EYE_TASK_FILE = "face_landmarker.task"


@dataclass
class SourceState:
    """What Ditto computes once per portrait.

    Attributes:
        crop: the 512 crop, its crop->frame matrix and the 256 network input (``media/face_crop.py``).
        features: f_s (1, 32, 16, 64, 64), the appearance features.
        motion: the source motion as numpy float32: pitch/yaw/roll (1, 66) bin logits, t (1, 3),
            exp (1, 63), scale (1, 1), kp (1, 63).
        eye_open: (2,); eye_ball: (6,) (MediaPipe, or neutral values).
        keypoints: x_s (1, 21, 3), the source's transformed keypoints.
    """

    crop: SourceCrop
    features: torch.Tensor
    motion: dict[str, np.ndarray]
    eye_open: np.ndarray
    eye_ball: np.ndarray
    keypoints: torch.Tensor


@dataclass
class DittoControls:
    """The controls of one render, resolved against the cfg (:meth:`DittoPipeline.controls`).

    Attributes:
        emotion: the condition's emotion: an (m, 8) table (``--emotion``) or the cfg's ``emo``.
        hold_last: per-frame emotion rows hold their last row past the table's end (a FILE).
        overlap: the DiT windows' overlap (``overlap_v2``).
        delta_eye_open_n: the blink gaps (-1 when there is no blink template).
        overall_ctrl: MotionStitch's controls for every frame (the cfg's, plus ``--pose-offset``).
        use_d_keys: MotionStitch's driven keys and gains (``--pose-gain``, ``--mouth-gain``).
        per_frame: frame -> controls (``--controls``).
    """

    emotion: object
    hold_last: bool
    overlap: int
    delta_eye_open_n: object
    overall_ctrl: dict
    use_d_keys: object
    per_frame: dict


STREAM_OVERLAP = 70  # Ditto's online cfg: 10 new frames per DiT window


def _folder(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


class DittoPipeline(Pipeline):
    """Ditto: audio -> LivePortrait motion with a DiT, then LivePortrait's warp and decoder.

    Args:
        models: :class:`DittoModels` (the six networks).
        config: the run options of Ditto's cfg pickle (:class:`DittoConfig`; code defaults without it).
        encoder: the HuBERT window encoder ``(6480,) -> (20, 1024)`` (:class:`OnnxHubert`, or
            :class:`RandomHubert` with random weights).
        aux_dir: folder of the face-crop ONNX models and ``face_landmarker.task``; None: crops only
            from ``--face-box`` (or, with random weights, a centred box).
        device, dtype: where the networks run; the DiT, keypoints and stitching stay float32.
        render_batch: frames warped and decoded per call; 0: 4, and offline renders on CUDA sized by free
            memory (:meth:`set_renderer`).
        precision: the ``--dtype`` request the per-network policy refines (``precision.py``): ``"auto"``
            may run some networks in bf16 autocast on a CPU with native bf16; default: ``dtype`` itself
            (every renderer network in ``dtype``). :meth:`set_precision` changes it later.
        compile: torch.compile the warp and decoder: True, False, or None (``compiling.py``'s policy: offline
            CPU renders of >= 100 frames). :attr:`compiled` lists the networks that ran compiled.
    """

    family = "ditto"
    stages = ("crop", "audio", "motion", "warp", "decode", "paste", "write")
    sampling_stage = "motion"

    def __init__(self, models: DittoModels, config: DittoConfig, encoder: Callable[[np.ndarray], np.ndarray],
                 aux_dir: str | Path | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, source: str = "", render_batch: int = 0,
                 precision: str | torch.dtype | None = None, compile: bool | None = False):
        super().__init__(torch.device(device), dtype, source)
        self.compile = compile
        self._compiled: dict[str, CompiledNetwork] = {}
        self.models = models.to(self.device).eval()
        self.set_precision(dtype if precision is None else precision)
        self._host_buffers: dict = {}
        self.config, self.encoder = config, encoder
        self.aux_dir = None if aux_dir is None else Path(aux_dir)
        self._sources: dict[tuple, SourceState] = {}
        self.set_renderer(render_batch)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        compile: bool | None = False, **_) -> "DittoPipeline":
        """Load Ditto's released files (a hub snapshot or a converted folder, see the module docstring).

        ``dtype="auto"`` is float32 on the CPU (Ditto's fp16 autocast is 30-150x slower there) and
        float16 on CUDA.

        Raises:
            WeightsError: a missing or malformed file (named), or onnxruntime missing for HuBERT.
        """
        root = Path(path)
        dev = resolve_device(device)
        dt = resolve_dtype("float16" if dtype == "auto" and dev.type == "cuda" else dtype, dev)
        models_dir = _folder(root, "models", "ditto_pytorch/models")
        if models_dir is None:
            raise WeightsError(f"{root} holds no Ditto weights (no models/ or ditto_pytorch/models/); run "
                               f"'avatar weights download ditto' or pass the folder 'weights convert --from ditto' wrote")
        config = cls.config_of(root)
        aux = cls.aux_folder(root)
        if aux is None or not (aux / HUBERT_FILE).is_file():
            raise WeightsError(f"Ditto's audio encoder {HUBERT_FILE} is not in {root}; run "
                               f"'avatar weights download ditto'")
        # sizes: avatar_index.json's "config" ('weights convert --from ditto'), or its "preset" (older folders)
        models = DittoModels.from_files(models_dir, preset=index_config(root))
        pipe = cls(models, config, OnnxHubert(aux / HUBERT_FILE), aux, dev, dt, str(root), precision=dtype)
        pipe.compile = compile
        return pipe

    @staticmethod
    def config_of(root: str | Path | None) -> DittoConfig:
        """The run options of a weights folder: ``ditto_cfg.json`` (converted), else the hub's
        ``ditto_cfg/*pytorch*.pkl``, else the code defaults (also for None: random weights)."""
        if root is None:
            return DittoConfig()
        root = Path(root)
        if (root / "ditto_cfg.json").is_file():
            return DittoConfig.load(root)
        pickles = sorted((root / "ditto_cfg").glob("*pytorch*.pkl")) if (root / "ditto_cfg").is_dir() else []
        return DittoConfig.from_pickle(pickles[0]) if pickles else DittoConfig()

    @staticmethod
    def aux_folder(root: str | Path) -> Path | None:
        """The folder of the face-crop ONNX models and HuBERT in a weights folder, or None."""
        return _folder(Path(root), "aux_models", "ditto_pytorch/aux_models")

    @classmethod
    def from_preset(cls, arch: str = "full", device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    seed: int = 0, compile: bool | None = False, **_) -> "DittoPipeline":
        """Random weights at the released sizes (``full``) or a tiny preset, with a seeded random
        stand-in for HuBERT: real shapes and costs, the frames are noise."""
        dev = resolve_device(device)
        dt = resolve_dtype("float16" if dtype == "auto" and dev.type == "cuda" else dtype, dev)
        pipe = cls(DittoModels.from_preset(arch, seed=seed), DittoConfig(), RandomHubert(seed), None, dev, dt,
                   f"random:{arch}", precision=dtype)
        pipe.compile = compile
        return pipe

    def set_precision(self, requested: str | torch.dtype = "auto", native_bf16: bool | None = None) -> dict:
        """Apply the per-network number format and layout of ``precision.policy`` for ``requested`` (the
        ``--dtype`` as given: ``"auto"`` or a dtype / its name); the DiT and stitching stay float32.

        Returns:
            network -> its :class:`~avatar_cli.precision.NetworkPrecision` (also :attr:`precision`).
        """
        self.precision = policy("ditto", self.device, self.dtype, requested, native_bf16)
        for name, prec in self.precision.items():
            prec.apply(getattr(self.models, name))
        self._sources = {}  # features computed in another format
        if hasattr(self, "renderer"):  # another format: size the batch and capture the graph again
            self.set_renderer(*self.renderer.request)
        return self.precision

    def set_renderer(self, render_batch: int = 0, cuda_graph: bool = False, capture: bool = True) -> RendererSettings:
        """Warp + decoder: ``render_batch`` frames per call (0: 4, and offline renders on CUDA sized by free
        memory), through a CUDA graph with ``cuda_graph`` (``graph_renderer.py``)."""
        self.renderer = RendererSettings(self.device, render_batch, cuda_graph, capture)
        self.render_batch = self.renderer.render_batch
        return self.renderer

    def _run(self, name: str, *args: torch.Tensor):
        """Network ``name`` on ``args`` in its format (inputs cast, autocast around it)."""
        prec: NetworkPrecision = self.precision[name]
        net = self._compiled.get(name) or getattr(self.models, name)
        with prec.context(self.device):
            return net(*(prec.input(a) for a in args))

    def use_compile(self, frames: int, stream: bool = False) -> list[str]:
        """Compile the warp and decoder for a render of ``frames`` frames when :attr:`compile` (or, for
        None, ``compiling.wants_compile``) says so; compiled once per pipeline, kept for later renders.

        Returns:
            the networks that run compiled (``[]`` or ``["warp", "decoder"]``; :attr:`compiled`).
        """
        if not self._compiled and wants_compile(self.compile, self.device, frames, stream):
            self._compiled = {n: CompiledNetwork(getattr(self.models, n), n, self.warn) for n in ("warp", "decoder")}
            self.warn("note: torch.compile of the warp and decoder at the first frames (about 40 s the first time, "
                      "seconds once cached; --no-compile skips it)")
        return self.compiled

    @property
    def compiled(self) -> list[str]:
        """The networks that run compiled (those whose compile failed are not listed)."""
        return [n for n, c in self._compiled.items() if c.compiled is not None]

    # ------------------------------------------------------------ once per portrait
    @torch.no_grad()
    def source_state(self, image: np.ndarray, face_box=None) -> SourceState:
        """Crop, appearance features, source motion, eye state and source keypoints of a portrait
        (H, W, 3) uint8; cached for the last 4 portraits.

        Raises:
            InputError: no face found (the message asks for --face-box).
            WeightsError: no face-crop models and no face box.
        """
        import hashlib

        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape, None if face_box is None else tuple(face_box))
        if key in self._sources:
            return self._sources[key]
        if face_box is None and self.aux_dir is None and self.source.startswith("random"):
            h, w = image.shape[:2]
            side = 0.5 * min(h, w)
            face_box = ((w - side) / 2, (h - side) / 2, side, side)
            self.warn("note: random weights without --face-box: a centred face box is assumed")
        cfg = self.config
        crop = crop_source(image, self.aux_dir, face_box, warn=self.warn, crop_scale=cfg.crop_scale,
                           crop_vx=cfg.crop_vx_ratio, crop_vy=cfg.crop_vy_ratio)
        rgb = torch.from_numpy(crop.rgb_256).to(self.device)
        features = self._run("appearance", rgb)
        heads = self._run("motion", rgb)
        motion = {k: v.float().reshape(1, -1).cpu().numpy() for k, v in zip(MOTION_KEYS, heads)}
        task = None if self.aux_dir is None else self.aux_dir / EYE_TASK_FILE
        eye_open, eye_ball = detect_eye_state(crop.img_crop, task, warn=self.warn)
        keypoints = transform_keypoint({k: torch.from_numpy(v).to(self.device) for k, v in motion.items()})
        state = SourceState(crop, features, motion, np.asarray(eye_open, np.float32), np.asarray(eye_ball, np.float32),
                            keypoints)
        self._sources[key] = state
        while len(self._sources) > 4:
            self._sources.pop(next(iter(self._sources)))
        return state

    # ------------------------------------------------------------ the pipeline interface
    def check(self, options: RenderOptions) -> None:
        options.validate()
        if options.sampling.family != "ditto":
            raise InputError(f"--method {options.method_name} does not apply to --model ditto")

    def prepare(self, job: RenderJob, stats: RenderStats) -> dict:
        with stats("crop"):
            return {"source": self.source_state(job.image, job.face_box)}

    def describe(self, options: RenderOptions, stream: bool = False) -> dict:
        ctl = self.controls(options, stream, quiet=True)
        controls = {
            "emotion": options.emotion if options.emotion is not None else "cfg",
            "blink": options.blink if options.blink is not None else "cfg",
            "delta_eye_open_n": ctl.delta_eye_open_n,
            "pose_offset": list(options.pose_offset) if options.pose_offset is not None else None,
            "pose_gain": list(options.pose_gain) if options.pose_gain is not None else None,
            "mouth_gain": options.mouth_gain,
            "motion_overlap": ctl.overlap,
            "overall_ctrl": {k: v for k, v in ctl.overall_ctrl.items() if np.isscalar(v)},
            "controls_file": None if options.controls is None else str(options.controls),
            "controlled_frames": len(ctl.per_frame),
        }
        return {**super().describe(options), "controls": controls, "precision": describe_precision(self.precision),
                "compiled": self.compiled, "renderer": self.renderer.describe(self.render_batch, stream)}

    PREVIEW_STEPS = 5  # --preview's DiT steps (default 10; the renderer, not the DiT, sets the pace)

    @classmethod
    def preview_options(cls, options: RenderOptions, explicit: frozenset[str] = frozenset(),
                        weights: str | Path | None = None) -> tuple[RenderOptions, str]:
        """``--preview``: 5 DiT steps (unless ``--steps`` was given). The warp and decoder run at
        LivePortrait's 256 px whatever the settings, so nothing else changes."""
        if "num_inference_steps" in explicit or options.steps <= cls.PREVIEW_STEPS:
            return options, "its usual settings"
        return replace(options, num_inference_steps=cls.PREVIEW_STEPS), f"{cls.PREVIEW_STEPS} DiT steps"

    def sampling_units_per_second(self, options: RenderOptions) -> float:
        """DiT windows per video second: 25 fps over the window's new frames (80 - overlap)."""
        seq = self.models.dit.null_cond_embed.shape[1]
        return FPS / (seq - self.controls(options, quiet=True).overlap)

    def probe_frames(self, options: RenderOptions) -> int:
        """Frames of the calibration probe: one render batch (the DiT still samples a whole window)."""
        return self.render_batch

    def controls(self, options: RenderOptions, stream: bool = False, quiet: bool = False) -> DittoControls:
        """Resolve the ``--model ditto`` controls of ``options`` against the cfg (DITTO notes sec. 8, CLI mapping).

        - ``--emotion``: the condition's 8 emotion entries (an (m, 8) table; the cfg's ``emo`` without it).
        - ``--blink``: ``delta_eye_open_n`` (auto 0, never -1, N); without the cfg's blink template
          (``delta_eye_arr``, e.g. random weights) there are no blinks and a note says so.
        - ``--pose-offset p,y,r``: degrees ADDED to ``overall_ctrl_info``'s ``delta_pitch/yaw/roll`` (the released
          cfg already has ``delta_pitch: 2``); zero components are left out.
        - ``--pose-gain p,y,r``: gains of ``use_d_keys`` for the angles: the driving angle's logits are
          ``source + (generated - d0) * gain`` (linear in logit space, not exactly in degrees; 0 = the
          source's pose, 1 = as generated).
        - ``--mouth-gain G``: the exp gain of ``use_d_keys`` becomes a (1, 63) vector, G on the 18 values of
          the lip keypoints (6, 12, 14, 17, 19, 20), 1 elsewhere: the lips' expression is
          ``exp_s + (exp_d - exp_d0) * G`` (only lips and eyes are driven; the rest is the source's).
        - ``--motion-overlap``: ``overlap_v2`` (70 for ``stream`` when not given, Ditto's online cfg).
        - ``--controls FILE``: MotionStitch's per-frame ``ctrl_info`` (its keys win over the overall ones).
        """
        cfg = self.config
        emotion, hold = cfg.emo, False
        table = parse_emotion_option(options.emotion)
        if table is not None:
            emotion, hold = table, len(table) > 1
        overlap = options.motion_overlap or (STREAM_OVERLAP if stream else cfg.overlap_v2)
        eye_n = cfg.delta_eye_open_n
        if options.blink is not None:
            eye_n = parse_blink(options.blink)
            if cfg.delta_eye_arr is None and not quiet:
                self.warn("note: --blink needs the cfg's blink template (delta_eye_arr); these weights have none, "
                          "so the eyes follow the generated motion")
        if cfg.delta_eye_arr is None:
            eye_n = -1
        overall = dict(cfg.overall_ctrl_info or {})
        for k, v in zip(ANGLE_KEYS, options.pose_offset or ()):
            if v:
                overall[f"delta_{k}"] = float(overall.get(f"delta_{k}", 0)) + float(v)
        keys = cfg.use_d_keys if cfg.use_d_keys is not None else ("exp", "pitch", "yaw", "roll", "t")
        if options.pose_gain is not None or options.mouth_gain != 1:
            gains = dict(keys) if isinstance(keys, dict) else {k: 1.0 for k in keys}
            for k, g in zip(ANGLE_KEYS, options.pose_gain or ()):
                if k in gains:
                    gains[k] = gains[k] * float(g)
            if "exp" in gains and options.mouth_gain != 1:
                lip = _kp_mask(LIP_KP)
                gains["exp"] = gains["exp"] * (1 + lip * np.float32(options.mouth_gain - 1))
            keys = gains
        return DittoControls(emotion, hold, overlap, eye_n, overall, keys, read_controls(options.controls))

    def stitcher(self, source: SourceState, num_frames: int, options: RenderOptions,
                 controls: DittoControls | None = None) -> MotionStitch:
        """MotionStitch for ``num_frames`` frames (-1: a stream) of ``source`` with the options' controls."""
        cfg, ctl = self.config, controls or self.controls(options)
        return MotionStitch(source.motion, num_frames=num_frames, delta_eye_arr=cfg.delta_eye_arr,
                            delta_eye_open_n=ctl.delta_eye_open_n, fade_type=cfg.fade_type,
                            overall_ctrl=ctl.overall_ctrl, use_d_keys=ctl.use_d_keys, seed=options.seed)

    def count_flops(self, image: np.ndarray, options: RenderOptions, seconds: float) -> int:
        """FLOPs of ``seconds`` of speech after the once-per-portrait work (warm cache)."""
        self.source_state(image)
        return super().count_flops(image, options, seconds)

    def window_sampler(self, options: RenderOptions, stats: RenderStats | None = None):
        """The DiT as ``sample_window(cond (80, 1103), kp_cond (265,)) -> (80, 265)`` for
        :func:`~avatar_cli.motion.windows.offline_motion` / :class:`~avatar_cli.motion.windows.OnlineMotion`.

        One generator seeded with ``options.seed`` draws the S-1 per-step noises once (reused by every
        window, as Ditto does) and then each window's x_T; ``stats.evaluations`` counts 2 S per window."""
        dit, steps = self.models.dit, options.steps
        scale = options.scales[0]
        progress = stats.progress if stats is not None else None

        generator = torch.Generator(self.device).manual_seed(options.seed)
        shape = (1, dit.null_cond_embed.shape[1], 265)  # the DiT's window, 80 frames
        noises = draw_noises(steps, shape, generator, self.device)

        @torch.no_grad()
        def sample_window(cond: np.ndarray, kp_cond: np.ndarray) -> np.ndarray:
            c = torch.from_numpy(np.ascontiguousarray(cond))[None].to(self.device)
            frame = torch.from_numpy(np.ascontiguousarray(kp_cond))[None].to(self.device)
            x_t = torch.randn(shape, generator=generator, device=self.device)

            def denoise(x, t):
                x0 = dit.guided(x, frame, c, t, scale)
                if progress is not None:
                    progress.advance(2)  # the conditional and the unconditional pass (progress.py)
                return x0

            x0 = sample_motion_ddim(denoise, x_t, noises, steps)
            if stats is not None:
                stats.evaluations += 2 * steps
            return x0[0].float().cpu().numpy()

        return sample_window

    @torch.no_grad()
    def motion(self, features: np.ndarray, source: SourceState, options: RenderOptions,
               stats: RenderStats | None = None) -> np.ndarray:
        """(N, 1024) audio features -> (N, 265) motion: the DiT over 80-frame windows (DITTO.md sec. 7),
        sampled by :meth:`window_sampler`."""
        cfg = self.config
        ctl = self.controls(options, quiet=True)
        conditions = AudioConditions(ctl.emotion, source.eye_open, source.eye_ball, source.motion["kp"],
                                     hold_last=ctl.hold_last)
        return offline_motion(conditions(features), motion_to_vector(source.motion), self.window_sampler(options, stats),
                              seq_frames=self.models.dit.null_cond_embed.shape[1], overlap=ctl.overlap,
                              fix_kp_cond=cfg.fix_kp_cond, fix_kp_cond_dim=cfg.fix_kp_cond_dim, smo_k=cfg.smo_k_d,
                              v_min_max=cfg.v_min_max_for_clip)

    @torch.no_grad()
    def generate(self, image: np.ndarray, waveform: np.ndarray, options: RenderOptions | None = None, *,
                 on_progress: Callable[[int, int], None] | None = None, stats: RenderStats | None = None,
                 source: SourceState | None = None) -> Iterator[np.ndarray]:
        """Yield the video's frames, (n, H, W, 3) uint8 at the portrait's size, ``render_batch`` at a
        time; ``ceil(samples / 16000 * 25)`` frames in all (Ditto's count).

        Args:
            image: (H, W, 3) uint8 RGB portrait, both sides even.
            waveform: (samples,) float32 mono speech at 16 kHz.
            source: :meth:`source_state` of ``image`` (computed here when None).

        Raises:
            InputError: options that do not apply, no face found.
        """
        opts = options or RenderOptions(model="ditto")
        self.check(opts)
        stats = stats or RenderStats.of(self)
        if source is None:
            with stats("crop"):
                source = self.source_state(image)
        progress = stats.progress
        total = num_frames(waveform.shape[0])
        seq = self.models.dit.null_cond_embed.shape[1]
        windows = -(-total // (seq - self.controls(opts, quiet=True).overlap))
        progress.set_frames_total(total)
        progress.expect("motion", windows * 2 * opts.steps, "evaluations")  # 2: CFG's two passes per step
        progress.expect("frames", total, "frames")
        progress.stage("audio features", len(offline_window_starts(total)), "windows")  # HuBERT windows

        def encode(window: np.ndarray) -> np.ndarray:
            out = self.encoder(window)
            progress.advance(1)
            return out

        with stats("audio"):
            features = offline_features(waveform, encode)
        progress.stage("motion")
        with stats("motion"):
            motion = self.motion(features[:total], source, opts, stats)
        progress.stage("frames")
        self.use_compile(total)
        ctl = self.controls(opts)
        stitcher = self.stitcher(source, total, opts, ctl)
        paste = PasteBack(source.crop.M_c2o, image.shape[:2])
        with stats("warp"):  # on CUDA by default: sized by free memory, once (graph_renderer.py)
            batch = self.renderer.offline_batch(self.render_batch, lambda: self._warp_decode(
                source.features, source.keypoints, source.keypoints))
        chunks = -(-total // batch)

        def renders() -> Iterator[torch.Tensor]:  # the networks, in this thread
            for n in range(chunks):
                with stats("warp"):
                    rows = range(n * batch, min((n + 1) * batch, total))
                    infos = [stitcher(vector_to_motion(motion[i]), **ctl.per_frame.get(i, {})) for i in rows]
                yield self.render_crops(infos, source, stats, batch)

        # the paste-back of chunk n in a worker thread while chunk n + 1 is warped and decoded (issue 25);
        # "paste" then counts only the time the loop waits for it
        for n, frames in enumerate(pipelined(renders(), lambda r: self.paste_renders(r, image, paste),
                                             wait=lambda: stats("paste"))):
            progress.advance(len(frames))
            if on_progress is not None:
                on_progress(n + 1, chunks)
            yield frames

    @torch.no_grad()
    def driving_keypoints(self, infos: list[dict], source: SourceState) -> torch.Tensor:
        """MotionStitch outputs -> x_d (n, 21, 3): LivePortrait's keypoint transform, then the stitching
        network when the cfg's ``flag_stitching`` (DITTO notes sec. 8 steps 7-8)."""
        driving = {k: torch.from_numpy(np.concatenate([info[k].reshape(1, -1) for info in infos]))
                   .to(self.device) for k in infos[0]}
        x_d = transform_keypoint(driving)
        if self.config.flag_stitching:
            x_d = stitch(self.models.stitch, source.keypoints.expand(len(infos), -1, -1), x_d)
        return x_d

    @torch.no_grad()
    def render_infos(self, infos: list[dict], source: SourceState, image: np.ndarray, paste: PasteBack,
                     stats: RenderStats) -> np.ndarray:
        """MotionStitch outputs (one per frame) -> (n, H, W, 3) uint8 frames: keypoints, warp, decode, paste."""
        renders = self.render_crops(infos, source, stats)
        with stats("paste"):
            return self.paste_renders(renders, image, paste)

    @torch.no_grad()
    def render_crops(self, infos: list[dict], source: SourceState, stats: RenderStats,
                     batch: int | None = None) -> torch.Tensor:
        """MotionStitch outputs (one per frame) -> the renders (n, 512, 512, 3) float32 in [0, 255] on the
        device: keypoints, warp, decoder, each network in its format (:attr:`precision`); with
        ``--cuda-graph`` warp + decoder are one replay on static buffers of ``batch`` (default
        ``render_batch``) frames, timed as "decode"."""
        with stats("warp"):
            x_d = self.driving_keypoints(infos, source)
            x_s = source.keypoints.expand(len(infos), -1, -1)
        if self.renderer.cuda_graph:
            with stats("decode"):
                static = self.renderer.static(self._warp_decode, batch or self.render_batch)
                return static(source.features, source.keypoints, x_d)
        with stats("warp"):
            warped = self._run("warp", source.features.expand(len(infos), -1, -1, -1, -1), x_s, x_d)
        with stats("decode"):
            return self._run("decoder", warped).float().clamp(0, 1).permute(0, 2, 3, 1) * 255

    def _warp_decode(self, features: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """f_s (n, C, D, H, W), x_s and x_d (n, 21, 3) -> renders (n, 512, 512, 3) float32 in [0, 255]."""
        return self._run("decoder", self._run("warp", features, x_s, x_d)).float().clamp(0, 1).permute(0, 2, 3, 1) * 255

    def paste_renders(self, renders: torch.Tensor, image: np.ndarray, paste: PasteBack,
                      on_device: bool | None = None) -> np.ndarray:
        """Renders (n, 512, 512, 3) float32 in [0, 255] -> (n, H, W, 3) uint8 frames pasted into ``image``.

        ``on_device`` (default: on CUDA) pastes with ``PasteBack``'s torch path where the renders are
        (within one 8-bit level of the numpy path) and copies the frames back through a pinned buffer;
        otherwise the renders come to the host and the paste is numpy."""
        if renders.device.type == "cuda" if on_device is None else on_device:
            frame = torch.from_numpy(np.ascontiguousarray(image)).to(renders.device)
            pasted = torch.stack([paste(frame, render) for render in renders])
            return to_host(pasted, self._host_buffers).numpy().copy()
        renders = renders.cpu().numpy()
        return np.stack([paste(image, render) for render in renders])

    # ------------------------------------------------------------ streaming
    @torch.no_grad()
    def stream(self, image: np.ndarray, audio_chunks: Iterable[np.ndarray], options: RenderOptions | None = None, *,
               stats: RenderStats | None = None, source: SourceState | None = None,
               face_box=None, **_) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Frames while the speech is still arriving (Ditto's online mode, DITTO notes sec. 7 and 10).

        Each audio chunk goes through :class:`StreamChunker` (6480-sample HuBERT windows every 3200
        samples) -> the encoder (5 feature frames per window) -> :class:`OnlineMotion` (its buffer
        prefilled with the features of ``overlap`` frames of silence; the first DiT window only anchors
        ``d0``, which becomes MotionStitch's relative-motion anchor; every later window gives ``valid =
        80 - overlap`` frames) -> MotionStitch (per-frame ``--controls`` by frame index) -> warp, decode and
        paste, ``render_batch`` frames at a time. Memory is flat in the stream's length: the chunker keeps
        < 6480 samples, OnlineMotion at most 160 feature and motion frames, no frame is kept.

        End of stream: the chunker's last windows are zero-padded (silence), OnlineMotion's last window is
        padded by repeating its last condition row and emits all it holds; the output is cut to
        ``ceil(samples / 16000 * 25)`` frames, the offline count (a stream shorter than ``valid`` frames gets
        windows of silence first, so that it is not all anchor). Every frame is a generated one (the last ones are
        generated from the speech's end and the silence after it), none is repeated.

        Args:
            image: (H, W, 3) uint8 portrait (both sides even).
            audio_chunks: float32 mono 16 kHz arrays of any length, consumed lazily.
            options: ``--motion-overlap`` must be 40..79 here (70 when not given, Ditto's online cfg): with
                a smaller overlap Ditto's online windows do not start at the first audio frame.
            face_box: (x, y, w, h) in ``image`` pixels, or None.

        Yields:
            (frames (n, H, W, 3) uint8, timestamps (n,) float64 seconds = frame index / 25).

        Raises:
            InputError: options that do not apply, no face found.
        """
        from ..motion.hubert_windows import WINDOW, StreamChunker, silence_features, window_features
        from ..motion.windows import OnlineMotion

        opts = options or RenderOptions(model="ditto")
        self.check(opts)
        self.use_compile(0, stream=True)  # only an explicit --compile: it would add to the first-frame delay
        ctl = self.controls(opts, stream=True)
        if ctl.overlap < 40:
            raise InputError(f"--stream needs --motion-overlap 40..79 (got {ctl.overlap}): Ditto's online windows "
                             f"fuse min(overlap, 80 - overlap) frames and start at the first audio frame only then")
        stats = stats or RenderStats.of(self)
        if source is None:
            with stats("crop"):
                source = self.source_state(image, face_box)
        cfg = self.config
        with stats("audio"):
            prefill = silence_features(self.encoder, ctl.overlap)
        conditions = AudioConditions(ctl.emotion, source.eye_open, source.eye_ball, source.motion["kp"],
                                     hold_last=ctl.hold_last)
        online = OnlineMotion(self.window_sampler(opts, stats), motion_to_vector(source.motion), conditions, prefill,
                              seq_frames=self.models.dit.null_cond_embed.shape[1], overlap=ctl.overlap,
                              fix_kp_cond=cfg.fix_kp_cond, fix_kp_cond_dim=cfg.fix_kp_cond_dim, smo_k=cfg.smo_k_d,
                              v_min_max=cfg.v_min_max_for_clip)
        stitcher = self.stitcher(source, -1, opts, ctl)
        paste = PasteBack(source.crop.M_c2o, image.shape[:2])
        chunker = StreamChunker()
        samples = 0
        done = 0  # frames yielded
        pending: list[np.ndarray] = []  # motion frames not yet rendered (< render_batch, or the tail)

        def render(rows: list[np.ndarray], limit: int | None):
            nonlocal done
            if limit is not None:
                rows = rows[: max(0, limit - done)]
            for n in range(0, len(rows), self.render_batch):
                batch = rows[n : n + self.render_batch]
                with stats("warp"):
                    infos = [stitcher(vector_to_motion(m), **ctl.per_frame.get(done + i, {}))
                             for i, m in enumerate(batch)]
                frames = self.render_infos(infos, source, image, paste, stats)
                times = (done + np.arange(len(frames))) / 25.0
                done += len(frames)
                yield frames, times

        pushed = 0  # feature frames given to OnlineMotion

        def motion_from(windows: list[np.ndarray], end: bool) -> list[np.ndarray]:
            nonlocal pushed
            with stats("audio"):
                feats = [window_features(self.encoder(w)) for w in windows]
                if end:  # a stream shorter than one window's new frames: Ditto's first window would only
                    # anchor d0 and emit nothing; add windows of silence so that a second window runs
                    while pushed + sum(len(f) for f in feats) <= online.valid:
                        feats.append(window_features(self.encoder(np.zeros(WINDOW, np.float32))))
            with stats("motion"):
                out = [online.push(f) for f in feats]
                pushed += sum(len(f) for f in feats)
                if end:
                    out.append(online.flush())
            if online.d0 is not None and stitcher.d0 is None:
                stitcher.d0 = online.d0  # the first window's first frame anchors the relative motion
            return [row for block in out for row in block]

        for chunk in audio_chunks:
            chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
            samples += len(chunk)
            pending += motion_from(chunker.push(chunk), end=False)
            ready = len(pending) - len(pending) % self.render_batch
            if ready:
                yield from render(pending[:ready], None)
                pending = pending[ready:]
        pending += motion_from(chunker.flush(), end=True)
        total = num_frames(samples)
        yield from render(pending, total)
        if done < total:  # not expected (OnlineMotion emits all it holds); say so rather than freeze a frame
            self.warn(f"note: the stream ended with {done} of {total} frames")
