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

Weights folder (``from_pretrained``, ``pipelines/ditto_load.py``): the Hugging Face snapshot of
``digital-avatar/ditto-talkinghead`` (``ditto_pytorch/models/*.pth``, ``ditto_pytorch/aux_models/*``,
``ditto_cfg/*.pkl``) or the folder ``avatar weights convert --from ditto`` writes (``models/``, ``aux_models/``,
``ditto_cfg.json``). Streaming (``stream``, Ditto's online mode): ``pipelines/ditto_stream.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..compiling import CompiledNetwork, wants_compile
from ..errors import InputError
from ..graph_renderer import RendererSettings
from ..media.face_crop import SourceCrop, crop_source, detect_eye_state
from ..media.paste import PasteBack
from ..models.ditto import DittoModels
from ..models.liveportrait.keypoints import transform_keypoint
from ..models.liveportrait.stitching import stitch
from ..motion.condition import AudioConditions, motion_to_vector, vector_to_motion
from ..motion.hubert_windows import FPS, num_frames, offline_features, offline_window_starts
from ..motion.windows import offline_motion
from ..options import RenderJob, RenderOptions
from ..precision import NetworkPrecision, describe as describe_precision, policy
from ..render_loop import pipelined, to_host
from ..safe_pickle import DittoConfig
from ..sampling.motion_ddim import draw_noises, sample_motion_ddim
from .base import Pipeline, RenderStats
from .ditto_controls import DittoControls, DittoControlsMixin  # noqa: F401 (moved; re-exported)
from .ditto_load import EYE_TASK_FILE, HUBERT_FILE, DittoLoadMixin, _folder  # noqa: F401 (moved; re-exported)
from .ditto_stream import STREAM_OVERLAP, DittoStreamMixin  # noqa: F401 (moved; re-exported)

MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")  # the motion extractor's output order


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


class DittoPipeline(DittoLoadMixin, DittoControlsMixin, DittoStreamMixin, Pipeline):
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
            self.warn("note: torch.compile of the warp and decoder at the first frames (about 50 s the first time, "
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
