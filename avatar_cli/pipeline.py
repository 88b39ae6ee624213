"""The render pipeline: portrait + speech -> frames -> mp4. Owns the clip loop (DESIGN sec. 1).

Data flow::

    image -> square RGB -> VAE encode -> z_ref -> reference net -> reference features (once)
    speech -> 16 kHz mono -> wav2vec2 at video fps -> per-frame features (once)
    for each clip of F frames:
        audio windows -> audio projector -> audio tokens
        last M latents of the previous clip (zeros for clip 0) -> reference net -> motion features
        initial latents (gaussian | rolling | combined-rolling) -> sampler over the denoising U-Net
        -> latents -> VAE decode -> frames -> video writer
    -> speech muxed as AAC -> temporary file renamed to the output

Python use::

    from avatar_cli import AvatarPipeline, RenderOptions
    pipe = AvatarPipeline.from_pretrained("weights/")          # or .from_preset("tiny")
    result = pipe.render("portrait.png", "speech.wav", "out.mp4", RenderOptions(seed=1))
    for frames in pipe.generate(image_uint8, waveform_16k):   # frames: (n, S, S, 3) uint8
        ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .media.audio import SAMPLE_RATE, load_speech, num_video_frames
from .media.face import FaceConditions, face_conditions
from .media.image import FITS, load_portrait
from .media.video import VideoWriter, check_output_path
from .models.audio_encoder import encode_audio, frame_windows
from .models.attention import ReferenceFeatures
from .models.bundle import AvatarModels
from .sampling.clip_init import INIT_MODES, initial_latents
from .sampling.guidance import Conditions, GuidedDenoiser
from .sampling.methods import METHODS, Method, make_scheduler, sample, set_schedule

STAGES = ("audio", "reference", "sampling", "decode", "write")


_MAX_STEPS = {"lcm": 50, "perflow": 100, "ddim": 1000}


@dataclass
class RenderOptions:
    """What to render. Units: fps in frames per second, size in pixels, noise_level a timestep.

    Attributes:
        model: sampling method, a key of ``METHODS`` (``sampling/methods.py``).
        num_inference_steps: steps per clip; None = the method's default (osa-lcm 1, adv-lcm 2,
            fada and fada-balanced 6, teacher 25).
        guidance_audio, guidance_ref: cfg_a, cfg_r of FADA eqs. 9-10; None = the method's default.
        guidance_scale: the single CFG scale of ``hallo``; None = 3.5.
        window_steps: PeRFlow steps per window, nearest t = 1 first (e.g. (2, 2, 1, 1)).
        init: clip initialisation, one of ``INIT_MODES`` (rolling ones: LCM and DDIM methods).
        noise_level: tau for rolling starts, in [1, 999].
        seed: noise seed; same seed, device and dtype give identical frames.
        fps: video frame rate (audio features are computed at this rate).
        size: square frame side, a multiple of 64.
        fit: "crop" (centre square) or "pad" (black borders) for non-square portraits.
        clip_frames: F, frames generated together.
        motion_frames: M, latents carried from one clip to the next; None = the model's own.
        crf: libx264 quality (lower is better, 18 looks lossless).
        decode_batch_size: frames per VAE decode call (memory bound).
        face_box: (x, y, w, h) of the face in the input image's pixels; None = detect (Hallo family).
        face_embedding: "auto" (ArcFace through InsightFace), "none" (the zero embedding), or a
            .npy file of 512 floats (Hallo family).
        motion_scale: weights of the audio branches (pose/full, face, lip); Hallo's motion scale.
    """

    model: str = "osa-lcm"
    num_inference_steps: int | None = None
    guidance_audio: float | None = None
    guidance_ref: float | None = None
    guidance_scale: float | None = None
    window_steps: tuple[int, ...] | None = None
    init: str = "gaussian"
    noise_level: int = 980
    seed: int = 0
    fps: float = 25.0
    size: int = 512
    fit: str = "crop"
    clip_frames: int = 16
    motion_frames: int | None = None
    crf: int = 18
    decode_batch_size: int = 4
    face_box: tuple[int, int, int, int] | None = None
    face_embedding: str = "auto"
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def method(self) -> Method:
        return METHODS[self.model]

    @property
    def steps(self) -> int:
        """num_inference_steps after defaults (the window split's sum for PeRFlow, if given)."""
        if self.num_inference_steps is not None:
            return self.num_inference_steps
        if self.window_steps is not None:
            return sum(self.window_steps)
        return self.method.default_steps

    @property
    def scales(self) -> tuple[float, ...]:
        """Guidance scales after defaults: (cfg_a, cfg_r), (s,) for CFG, () without guidance."""
        m = self.method
        if m.guidance == "cfg":
            return (m.scales[0] if self.guidance_scale is None else self.guidance_scale,)
        if m.guidance == "none":
            return ()
        return (m.scales[0] if self.guidance_audio is None else self.guidance_audio,
                m.scales[1] if self.guidance_ref is None else self.guidance_ref)

    @property
    def guidance(self) -> dict | None:
        """The guidance used, for reports: {"rule", "audio", "ref"} or {"rule", "scale"}; None."""
        rule, scales = self.method.guidance, self.scales
        if rule == "none":
            return None
        if rule == "cfg":
            return {"rule": rule, "scale": scales[0]}
        return {"rule": rule, "audio": scales[0], "ref": scales[1]}

    def validate(self, max_sequence: int | None = None) -> None:
        """Raise :class:`InputError` naming the first option out of range.

        ``max_sequence``: the model's temporal positions (motion + clip frames); None skips that check.
        """
        if self.model not in METHODS:
            raise InputError(f"--model must be one of {', '.join(METHODS)} (got {self.model!r})")
        method = self.method
        top = _MAX_STEPS[method.scheduler]
        low = 4 if method.scheduler == "perflow" else 1
        checks = [
            (low <= self.steps <= top, f"--steps for {self.model} must be {low}..{top} (got {self.steps})"),
            (self.init in INIT_MODES, f"--init must be one of {', '.join(INIT_MODES)} (got {self.init!r})"),
            (self.init == "gaussian" or method.supports_rolling,
             f"--init {self.init} cannot start PeRFlow's windows; use it with the LCM or DDIM methods"),
            (self.window_steps is None or method.scheduler == "perflow",
             f"--window-steps applies to the PeRFlow methods (fada, fada-balanced), not {self.model}"),
            (self.window_steps is None or (len(self.window_steps) == 4 and min(self.window_steps) >= 1
                                           and sum(self.window_steps) == self.steps),
             f"--window-steps must be 4 counts >= 1 summing to --steps (got {self.window_steps})"),
            (method.guidance != "none" or (self.guidance_audio is None and self.guidance_ref is None
                                           and self.guidance_scale is None),
             f"{self.model} is distilled without guidance; the --guidance-* options do not apply"),
            (method.guidance == "cfg" or self.guidance_scale is None,
             f"--guidance-scale is the single CFG scale of --model hallo; {self.model} takes "
             f"--guidance-audio/--guidance-ref"),
            (method.guidance in ("multi-cfg", "cfg-tokens") or (self.guidance_audio is None and self.guidance_ref is None),
             f"--guidance-audio/--guidance-ref apply to multi-CFG methods; {self.model} takes --guidance-scale"),
            (all(g is None or 0 <= g <= 30 for g in (self.guidance_audio, self.guidance_ref, self.guidance_scale)),
             "guidance scales must be 0..30"),
            (self.face_box is None or (len(self.face_box) == 4 and self.face_box[2] > 0 and self.face_box[3] > 0),
             f"--face-box must be x,y,w,h with w, h > 0 (got {self.face_box})"),
            (len(self.motion_scale) == 3 and all(0 <= v <= 10 for v in self.motion_scale),
             f"--motion-scale must be three weights pose,face,lip in 0..10 (got {self.motion_scale})"),
            (1 <= self.noise_level <= 999, f"--noise-level must be 1..999 (got {self.noise_level})"),
            (1 <= self.fps <= 120, f"--fps must be 1..120 (got {self.fps:g})"),
            (self.size % 64 == 0 and 64 <= self.size <= 2048,
             f"--size must be a multiple of 64 in 64..2048 (got {self.size}); try --size 512"),
            (self.fit in FITS, f"--fit must be one of {', '.join(FITS)} (got {self.fit!r})"),
            (0 <= self.crf <= 51, f"--crf must be 0..51 (got {self.crf})"),
            (self.decode_batch_size >= 1, f"decode batch size must be >= 1 (got {self.decode_batch_size})"),
            (self.seed >= 0, f"--seed must be >= 0 (got {self.seed})"),
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


@dataclass
class RenderResult:
    """What a render did. Times in seconds; ``rtf`` = wall seconds / video seconds; ``nfe`` =
    denoising-U-Net evaluations per clip (the method's table value); ``unet_evaluations`` = the
    evaluations counted over the whole video; ``guidance`` = {"rule", "audio", "ref"},
    {"rule", "scale"} or None."""

    output: str
    frames: int
    fps: float
    duration_s: float
    size: int
    model: str
    nfe: int
    num_inference_steps: int
    guidance: dict | None
    unet_evaluations: int
    clips: int
    stages: dict[str, float]
    wall_s: float
    rtf: float
    device: str
    dtype: str
    seed: int
    init: str
    weights: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RenderStats:
    """Seconds per stage (CUDA-synchronised) and denoising-U-Net evaluations of a render."""

    device: torch.device
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    unet_evaluations: int = 0

    @contextmanager
    def __call__(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stages[stage] += time.perf_counter() - start


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu. Raises InputError for an unavailable CUDA device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but this machine has no CUDA GPU (or torch is a CPU build); "
                         "use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA GPUs that support it (else float16), float32 on the CPU."""
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise InputError(f"--dtype must be auto, float32, float16 or bfloat16 (got {dtype!r})")
    return names[dtype]


class AvatarPipeline:
    """Portrait + speech -> talking-head frames, with OSA-LCM one-step (or few-step LCM) sampling.

    Args:
        models: the networks (:class:`AvatarModels`), moved to ``device``/``dtype`` here.
        device: torch device to run on.
        dtype: floating dtype of the networks and latents.
    """

    def __init__(self, models: AvatarModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.models = models.to(self.device, dtype)
        self.vae_scale = 2 ** (len(models.vae.config.block_out_channels) - 1)
        self.reference_net_calls = 0  # counted, so tests can see features are computed once per video
        self.warn: Callable[[str], None] = lambda message: print(f"avatar: {message}", file=sys.stderr)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto") -> "AvatarPipeline":
        """Load a weights folder (see ``models/bundle.py``) onto a device."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_pretrained(path, torch_dtype=dt), dev, dt)

    @classmethod
    def from_preset(cls, arch: str = "tiny", device: str = "auto", dtype: str = "auto", seed: int = 0,
                    cfg_tokens: int = 0, family: str = "osa-lcm") -> "AvatarPipeline":
        """The architecture of a preset with random weights (tests, benchmarks, demos).

        ``cfg_tokens`` > 0 adds FADA's CFG-token layers (needed by ``--model fada``);
        ``family="hallo"`` builds Hallo's variant (needed by ``--model hallo``).
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_preset(arch, seed=seed, cfg_tokens=cfg_tokens, family=family), dev, dt)

    # ------------------------------------------------------------ the stages
    def _reference_features(self, latents: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.reference_net_calls += 1
        return self.models.reference_net.extract_features(latents, tokens)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, 4, S/8, S/8), the VAE posterior mean times the scaling factor."""
        vae = self.models.vae
        return vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mean * vae.config.scaling_factor

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 -> z_ref (1, 4, S/8, S/8)."""
        return self.encode_pixels(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """(B=1, 4, F, h, w) latents -> (F, 3, S, S) pixels in [-1, 1], decoded ``batch_size`` at a time."""
        vae = self.models.vae
        flat = latents[0].permute(1, 0, 2, 3) / vae.config.scaling_factor
        return torch.cat([vae.decode(chunk.to(self.dtype)).sample.clamp(-1, 1) for chunk in flat.split(batch_size)])

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> np.ndarray:
        """(F, 3, S, S) in [-1, 1] -> (F, S, S, 3) uint8 on the CPU."""
        return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray, fps: float, pad_to_multiple: int | None = None) -> torch.Tensor:
        """(samples,) 16 kHz mono -> (frames, layers, dim) wav2vec2 features at ``fps``.

        ``pad_to_multiple``: append silence up to a whole number of clips of that many frames
        before encoding, as Hallo does (the result then has the padded frame count).
        """
        frames = num_video_frames(waveform.shape[0], fps)
        pad = max(0, 400 - waveform.shape[0])  # shorter than wav2vec2's first conv window
        if pad_to_multiple:
            extra = -frames % pad_to_multiple
            frames += extra
            pad = max(pad, round(extra * SAMPLE_RATE / fps))
        return encode_audio(self.models.audio_encoder, self.models.feature_extractor, waveform, frames, pad)

    def face_conditions(self, image: np.ndarray, opts: RenderOptions,
                        face_box: tuple[float, float, float, float] | None = None) -> FaceConditions:
        """Face box (``face_box`` in frame pixels, else detected), region masks, face embedding.

        The ArcFace models are looked for in ``<weights>/face_analysis`` and in the installed
        ``hallo-face-analysis`` component.
        """
        from .weights import installed_path, load_manifest

        root = None
        if self.models.source and (Path(self.models.source) / "face_analysis").is_dir():
            root = Path(self.models.source) / "face_analysis"
        elif opts.face_embedding == "auto":
            component = load_manifest().get("hallo-face-analysis")
            found = installed_path(component) if component is not None else None
            root = None if found is None else found / "face_analysis"
        return face_conditions(image, opts.size // self.vae_scale, face_box, opts.face_embedding, root,
                               warn=self.warn)

    def _check_method(self, opts: RenderOptions) -> None:
        method, models = opts.method, self.models
        if method.guidance == "cfg-tokens" and not models.denoising_unet.config.cfg_tokens:
            raise InputError(f"--model {opts.model} needs a FADA student with CFG-token layers and these weights "
                             f"have none; distil one, or pass --add-cfg-layers (zero-initialised: no guidance)")
        if method.family == "hallo" and models.face_locator is None:
            raise InputError(f"--model {opts.model} needs Hallo's weights (with a face locator); convert them with "
                             f"'avatar weights convert --from hallo' and pass --weights DIR")
        if method.scheduler == "perflow" and models.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise InputError(f"--model {opts.model} samples epsilon-prediction students; these weights predict "
                             f"{models.scheduler_config['prediction_type']}")

    # ------------------------------------------------------------ the clip loop
    @torch.no_grad()
    def generate(self, image: np.ndarray, waveform: np.ndarray, options: RenderOptions | None = None,
                 on_clip: Callable[[int, int], None] | None = None, stats: "RenderStats | None" = None,
                 audio_features: torch.Tensor | None = None, face: "FaceConditions | None" = None
                 ) -> Iterator[np.ndarray]:
        """Yield the video's frames clip by clip.

        Args:
            image: (S, S, 3) uint8 RGB portrait, S = ``options.size``.
            waveform: (samples,) float32 mono speech at 16 kHz.
            options: render options (defaults if None).
            on_clip: called as on_clip(clips_done, clips_total) after each clip.
            stats: accumulates per-stage seconds and U-Net evaluations (``render`` passes one).
            audio_features: precomputed (frames, layers, dim) features at ``options.fps``.
            face: face embedding, face-locator image and region masks (Hallo family, see
                :meth:`face_conditions`); None = the null face condition (zero embedding, no
                face-locator features, all-ones masks).

        Yields:
            (n, S, S, 3) uint8 frames, n = clip frames (the last clip trimmed to the audio).
            In total round(duration_s * fps) frames.
        """
        opts = options or RenderOptions()
        models = self.models
        settings = models.settings
        unet = models.denoising_unet
        motion_count = unet.config.num_motion_frames if opts.motion_frames is None else opts.motion_frames
        opts = replace(opts, motion_frames=motion_count)
        opts.validate(unet.config.motion_max_seq_length)
        self._check_method(opts)
        method, steps, scales = opts.method, opts.steps, opts.scales
        if image.shape != (opts.size, opts.size, 3):
            raise InputError(f"image must be ({opts.size}, {opts.size}, 3) uint8 for --size {opts.size}")
        stats = stats or RenderStats(self.device)
        scheduler = make_scheduler(method, models.scheduler_config)
        alphas = scheduler.alphas_cumprod  # the training schedule's (rolling starts use it)
        guided = method.guidance in ("multi-cfg", "cfg")

        with stats("audio"):
            total = num_video_frames(waveform.shape[0], opts.fps)
            if audio_features is None:
                pad = opts.clip_frames if settings.audio_padding == "clip" else None
                audio_features = self.audio_features(waveform, opts.fps, pad)
        frames_per_clip = opts.clip_frames
        clips = -(-total // frames_per_clip)

        latent = opts.size // self.vae_scale
        with stats("reference"):
            z_ref = self.encode_image(image)
            null_tokens = models.image_projector.null_tokens(1)
            face_tokens, locator, masks = null_tokens, None, None
            if face is not None:
                if face.embedding is not None:
                    face_tokens = models.image_projector(face.embedding.to(self.device)[None])
                if face.mask_image is not None and models.face_locator is not None:
                    locator = models.face_locator(face.mask_image.to(self.device, self.dtype)[None])
                    locator = locator[:, :, None].expand(-1, -1, frames_per_clip, -1, -1)
                masks = {k: v.to(self.device)[None] for k, v in face.region_masks.items()} \
                    if face.region_masks is not None else None
            reference = self._reference_features(z_ref, face_tokens)
            null_reference = None
            if guided and settings.null_reference == "none":  # Hallo: no reference keys/values
                null_reference = ReferenceFeatures(reference, keep=torch.zeros(1, dtype=torch.bool))
            elif guided:  # the reference features of a zero latent (once per video)
                null_reference = self._reference_features(torch.zeros_like(z_ref), null_tokens)
        generator = torch.Generator(self.device).manual_seed(opts.seed)
        if settings.first_clip_motion == "reference":
            motion = z_ref.expand(motion_count, -1, -1, -1)
        else:
            motion = torch.zeros(motion_count, z_ref.shape[1], latent, latent, device=self.device, dtype=self.dtype)
        previous = None

        for n in range(clips):
            with stats("audio"):
                index = torch.arange(n * frames_per_clip, (n + 1) * frames_per_clip)
                windows = frame_windows(audio_features, index)
                audio_tokens = models.audio_projector(windows.to(self.device))[None]
            with stats("reference"):
                motion_features = null_motion = None
                if motion_count and method.guidance == "cfg" and not torch.equal(face_tokens, null_tokens):
                    # Hallo's reference net pairs motion frames with alternating face tokens
                    # (DESIGN sec. 7): reproduce that pairing for each branch.
                    motion_features = self._reference_features(motion, _alternating(face_tokens, null_tokens, 1))
                    null_motion = self._reference_features(motion, _alternating(face_tokens, null_tokens, 0))
                elif motion_count:
                    motion_features = null_motion = self._reference_features(motion, face_tokens)
            with stats("sampling"):
                rolling = opts.init == "rolling" or (opts.init == "combined-rolling" and n > 0)
                timesteps = set_schedule(scheduler, method, steps, opts.noise_level if rolling else None,
                                         list(opts.window_steps) if opts.window_steps else None)
                noise = torch.randn((1, z_ref.shape[1], frames_per_clip, latent, latent), generator=generator,
                                    device=self.device, dtype=torch.float32).to(self.dtype)
                latents, _ = initial_latents(opts.init, n, noise, previous, z_ref, alphas, timesteps[0])
                conditions = Conditions(face_tokens, audio_tokens, reference, motion_features, locator, masks)
                null = None
                if guided:
                    null = Conditions(null_tokens, torch.zeros_like(audio_tokens), null_reference, null_motion,
                                      None, masks)
                denoiser = GuidedDenoiser(unet, conditions, method.guidance, scales, null, opts.motion_scale)
                latents = sample(denoiser, latents, scheduler, generator)
                stats.unet_evaluations += denoiser.evaluations
            previous = latents
            with stats("decode"):
                pixels = self.decode_latents(latents, opts.decode_batch_size)
                frames = self.to_uint8(pixels)
            if motion_count:
                if settings.motion_source == "decoded":  # Hallo: encode the last decoded frames again
                    with stats("reference"):
                        motion = self.encode_pixels(pixels[-motion_count:])
                else:
                    motion = latents[0, :, -motion_count:].permute(1, 0, 2, 3).contiguous()
            if on_clip is not None:
                on_clip(n + 1, clips)
            yield frames[: min(frames_per_clip, total - n * frames_per_clip)]

    def render(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path,
               options: RenderOptions | None = None, overwrite: bool = False,
               on_clip: Callable[[int, int], None] | None = None) -> RenderResult:
        """Render a video file: read the inputs, run :meth:`generate`, write and mux the mp4.

        Raises:
            InputError: bad image, audio, output path or options (nothing is written).
            AvatarError: ffmpeg failed.
        """
        return self.render_job(prepare_job(image_path, audio_path, output_path, options, overwrite), on_clip)

    def render_job(self, job: "RenderJob", on_clip: Callable[[int, int], None] | None = None) -> RenderResult:
        """Render a job whose inputs :func:`prepare_job` has read and checked."""
        opts = job.options
        start = time.perf_counter()
        stats = RenderStats(self.device)
        stats.stages["audio"] += job.decode_s
        face = None
        if self.models.face_locator is not None:  # Hallo family: face box, masks, embedding
            with stats("reference"):
                face = self.face_conditions(job.image, opts, job.face_box)
        written = 0
        with VideoWriter(job.output, opts.size, opts.fps, audio_path=job.audio_path, crf=opts.crf) as writer:
            for frames in self.generate(job.image, job.waveform, opts, on_clip=on_clip, stats=stats, face=face):
                with stats("write"):
                    writer.write(frames)
                written += len(frames)
            finish = time.perf_counter()
        stats.stages["write"] += time.perf_counter() - finish  # ffmpeg finishing, mux, rename
        wall = time.perf_counter() - start + job.decode_s
        duration = written / opts.fps
        guidance = opts.guidance
        return RenderResult(
            output=str(job.output), frames=written, fps=opts.fps, duration_s=duration, size=opts.size,
            model=opts.model, nfe=opts.method.nfe(opts.steps), num_inference_steps=opts.steps,
            guidance=guidance,
            unet_evaluations=stats.unet_evaluations, clips=-(-written // opts.clip_frames),
            stages={k: round(v, 4) for k, v in stats.stages.items()}, wall_s=round(wall, 4),
            rtf=round(wall / duration, 4), device=str(self.device), dtype=str(self.dtype).replace("torch.", ""),
            seed=opts.seed, init=opts.init, weights=self.models.source,
        )


def _alternating(cond: torch.Tensor, null: torch.Tensor, branch: int, images: int = 3) -> torch.Tensor:
    """Face tokens for the motion frames of one CFG branch as Hallo's reference net pairs them.

    Hallo runs its reference net on [ref, m_1..m_M] for the unconditional (branch 0) and the
    conditional (branch 1) half, with the context [null, cond] repeated: image k of the 2(M+1) gets
    the conditional tokens when k is odd. Returns (M, T, D) for the motion frames of ``branch``.
    """
    m = images - 1
    rows = [cond if (branch * images + 1 + j) % 2 else null for j in range(m)]
    return torch.cat(rows)


@dataclass
class RenderJob:
    """A render's checked inputs: the portrait (S, S, 3) uint8, the speech (samples,) float32 at
    16 kHz, where to write, and the options. ``decode_s``: seconds spent decoding the speech."""

    image: np.ndarray
    waveform: np.ndarray
    audio_path: Path
    output: Path
    options: RenderOptions
    decode_s: float = 0.0
    face_box: tuple[float, float, float, float] | None = None  # ``options.face_box`` in frame pixels


def prepare_job(image_path: str | Path, audio_path: str | Path, output_path: str | Path,
                options: RenderOptions | None = None, overwrite: bool = False) -> RenderJob:
    """Read and check everything a render needs except the models (so bad input fails fast).

    Raises:
        InputError: bad options, image, audio or output path.
    """
    opts = options or RenderOptions()
    opts.validate()
    output = check_output_path(output_path, overwrite)
    image, geometry = load_portrait(image_path, opts.size, opts.fit, with_geometry=True)
    face_box = None
    if opts.face_box is not None:
        x, y, w, h = opts.face_box
        if x < 0 or y < 0 or x + w > geometry.width or y + h > geometry.height:
            raise InputError(f"--face-box {x},{y},{w},{h} lies outside the {geometry.width}x{geometry.height} "
                             f"image; give x,y,w,h in its pixels")
        face_box = geometry.box_to_frame(opts.face_box)
    start = time.perf_counter()
    waveform = load_speech(audio_path)
    return RenderJob(image, waveform, Path(audio_path), output, opts, time.perf_counter() - start, face_box)
