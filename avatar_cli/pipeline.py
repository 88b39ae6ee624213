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

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .media.audio import SAMPLE_RATE, load_speech, num_video_frames
from .media.image import FITS, load_portrait
from .media.video import VideoWriter, check_output_path
from .models.audio_encoder import encode_audio, frame_windows
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
        window_steps: PeRFlow steps per window, nearest t = 1 first (e.g. (2, 2, 1, 1)).
        init: clip initialisation, one of ``INIT_MODES`` (rolling ones: LCM methods only).
        noise_level: tau for rolling starts, in [1, 999].
        seed: noise seed; same seed, device and dtype give identical frames.
        fps: video frame rate (audio features are computed at this rate).
        size: square frame side, a multiple of 64.
        fit: "crop" (centre square) or "pad" (black borders) for non-square portraits.
        clip_frames: F, frames generated together.
        motion_frames: M, latents carried from one clip to the next; None = the model's own.
        crf: libx264 quality (lower is better, 18 looks lossless).
        decode_batch_size: frames per VAE decode call (memory bound).
    """

    model: str = "osa-lcm"
    num_inference_steps: int | None = None
    guidance_audio: float | None = None
    guidance_ref: float | None = None
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
    def guidance(self) -> tuple[float, float] | None:
        """(cfg_a, cfg_r) after defaults, or None for methods without guidance."""
        m = self.method
        if m.guidance == "none":
            return None
        return (m.guidance_audio if self.guidance_audio is None else self.guidance_audio,
                m.guidance_ref if self.guidance_ref is None else self.guidance_ref)

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
             f"--init {self.init} needs a consistency model; use it with --model osa-lcm or adv-lcm"),
            (self.window_steps is None or method.scheduler == "perflow",
             f"--window-steps applies to the PeRFlow methods (fada, fada-balanced), not {self.model}"),
            (self.window_steps is None or (len(self.window_steps) == 4 and min(self.window_steps) >= 1
                                           and sum(self.window_steps) == self.steps),
             f"--window-steps must be 4 counts >= 1 summing to --steps (got {self.window_steps})"),
            (method.guidance != "none" or (self.guidance_audio is None and self.guidance_ref is None),
             f"{self.model} is distilled without guidance; --guidance-audio/--guidance-ref do not apply"),
            (all(g is None or 0 <= g <= 30 for g in (self.guidance_audio, self.guidance_ref)),
             "--guidance-audio and --guidance-ref must be 0..30"),
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
    evaluations counted over the whole video; ``guidance`` = {"rule", "audio", "ref"} or None."""

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

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto") -> "AvatarPipeline":
        """Load a weights folder (see ``models/bundle.py``) onto a device."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_pretrained(path, torch_dtype=dt), dev, dt)

    @classmethod
    def from_preset(cls, arch: str = "tiny", device: str = "auto", dtype: str = "auto", seed: int = 0,
                    cfg_tokens: int = 0) -> "AvatarPipeline":
        """The architecture of a preset with random weights (tests, benchmarks, demos).

        ``cfg_tokens`` > 0 adds FADA's CFG-token layers (needed by ``--model fada``).
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_preset(arch, seed=seed, cfg_tokens=cfg_tokens), dev, dt)

    # ------------------------------------------------------------ the stages
    def _reference_features(self, latents: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.reference_net_calls += 1
        return self.models.reference_net.extract_features(latents, tokens)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 -> z_ref (1, 4, S/8, S/8), the VAE posterior mean times the scaling factor."""
        vae = self.models.vae
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device, self.dtype) / 127.5 - 1
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """(B=1, 4, F, h, w) latents -> (F, S, S, 3) uint8 frames, decoded ``batch_size`` at a time."""
        vae = self.models.vae
        flat = latents[0].permute(1, 0, 2, 3) / vae.config.scaling_factor
        out = []
        for chunk in flat.split(batch_size):
            pixels = vae.decode(chunk.to(self.dtype)).sample
            pixels = ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            out.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray, fps: float) -> torch.Tensor:
        """(samples,) 16 kHz mono -> (frames, layers, dim) wav2vec2 features at ``fps``."""
        frames = num_video_frames(waveform.shape[0], fps)
        if waveform.shape[0] < 400:  # shorter than wav2vec2's first conv window: pad with silence
            waveform = np.pad(waveform, (0, 400 - waveform.shape[0]))
        return encode_audio(self.models.audio_encoder, self.models.feature_extractor, waveform, frames)

    # ------------------------------------------------------------ the clip loop
    @torch.no_grad()
    def generate(self, image: np.ndarray, waveform: np.ndarray, options: RenderOptions | None = None,
                 on_clip: Callable[[int, int], None] | None = None, stats: "RenderStats | None" = None,
                 audio_features: torch.Tensor | None = None) -> Iterator[np.ndarray]:
        """Yield the video's frames clip by clip.

        Args:
            image: (S, S, 3) uint8 RGB portrait, S = ``options.size``.
            waveform: (samples,) float32 mono speech at 16 kHz.
            options: render options (defaults if None).
            on_clip: called as on_clip(clips_done, clips_total) after each clip.
            stats: accumulates per-stage seconds and U-Net evaluations (``render`` passes one).
            audio_features: precomputed (frames, layers, dim) features at ``options.fps``.

        Yields:
            (n, S, S, 3) uint8 frames, n = clip frames (the last clip trimmed to the audio).
            In total round(duration_s * fps) frames.
        """
        opts = options or RenderOptions()
        models = self.models
        unet = models.denoising_unet
        motion_count = unet.config.num_motion_frames if opts.motion_frames is None else opts.motion_frames
        opts = replace(opts, motion_frames=motion_count)
        opts.validate(unet.config.motion_max_seq_length)
        method, steps, guidance = opts.method, opts.steps, opts.guidance
        if method.guidance == "cfg-tokens" and not unet.config.cfg_tokens:
            raise InputError(f"--model {opts.model} needs a FADA student with CFG-token layers and these weights "
                             f"have none; distil one, or pass --add-cfg-layers (zero-initialised: no guidance)")
        if image.shape != (opts.size, opts.size, 3):
            raise InputError(f"image must be ({opts.size}, {opts.size}, 3) uint8 for --size {opts.size}")
        stats = stats or RenderStats(self.device)
        scheduler = make_scheduler(method, models.scheduler_config)
        alphas = scheduler.alphas_cumprod  # the training schedule's (rolling starts use it)

        with stats("audio"):
            features = audio_features if audio_features is not None else self.audio_features(waveform, opts.fps)
        total = features.shape[0]
        frames_per_clip = opts.clip_frames
        clips = -(-total // frames_per_clip)

        latent = opts.size // self.vae_scale
        with stats("reference"):
            z_ref = self.encode_image(image)
            face_tokens = models.image_projector.null_tokens(1)
            reference = self._reference_features(z_ref, face_tokens)
            # multi-CFG's "no reference" branch: the reference features of a zero latent (once per video)
            null_reference = self._reference_features(torch.zeros_like(z_ref), face_tokens) \
                if method.guidance == "multi-cfg" else None
        generator = torch.Generator(self.device).manual_seed(opts.seed)
        motion = torch.zeros(motion_count, z_ref.shape[1], latent, latent, device=self.device, dtype=self.dtype)
        previous = None

        for n in range(clips):
            with stats("audio"):
                index = torch.arange(n * frames_per_clip, (n + 1) * frames_per_clip)
                windows = frame_windows(features, index)
                audio_tokens = models.audio_projector(windows.to(self.device))[None]
            with stats("reference"):
                motion_features = self._reference_features(motion, face_tokens) if motion_count else None
            with stats("sampling"):
                noise = torch.randn((1, z_ref.shape[1], frames_per_clip, latent, latent), generator=generator,
                                    device=self.device, dtype=torch.float32).to(self.dtype)
                latents, start = initial_latents(opts.init, n, noise, previous, z_ref, alphas, opts.noise_level)
                set_schedule(scheduler, method, steps, start if start < alphas.shape[0] - 1 else None,
                             list(opts.window_steps) if opts.window_steps else None)
                conditions = Conditions(face_tokens, audio_tokens, reference, motion_features)
                denoiser = GuidedDenoiser(unet, conditions, method.guidance, *(guidance or (1.0, 1.0)),
                                          null_reference=null_reference)
                latents = sample(denoiser, latents, scheduler, generator)
                stats.unet_evaluations += denoiser.evaluations
            previous = latents
            if motion_count:
                motion = latents[0, :, -motion_count:].permute(1, 0, 2, 3).contiguous()
            with stats("decode"):
                frames = self.decode_latents(latents, opts.decode_batch_size)
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
        written = 0
        with VideoWriter(job.output, opts.size, opts.fps, audio_path=job.audio_path, crf=opts.crf) as writer:
            for frames in self.generate(job.image, job.waveform, opts, on_clip=on_clip, stats=stats):
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
            guidance=None if guidance is None else {"rule": opts.method.guidance, "audio": guidance[0],
                                                    "ref": guidance[1]},
            unet_evaluations=stats.unet_evaluations, clips=-(-written // opts.clip_frames),
            stages={k: round(v, 4) for k, v in stats.stages.items()}, wall_s=round(wall, 4),
            rtf=round(wall / duration, 4), device=str(self.device), dtype=str(self.dtype).replace("torch.", ""),
            seed=opts.seed, init=opts.init, weights=self.models.source,
        )


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


def prepare_job(image_path: str | Path, audio_path: str | Path, output_path: str | Path,
                options: RenderOptions | None = None, overwrite: bool = False) -> RenderJob:
    """Read and check everything a render needs except the models (so bad input fails fast).

    Raises:
        InputError: bad options, image, audio or output path.
    """
    opts = options or RenderOptions()
    opts.validate()
    output = check_output_path(output_path, overwrite)
    image = load_portrait(image_path, opts.size, opts.fit)
    start = time.perf_counter()
    waveform = load_speech(audio_path)
    return RenderJob(image, waveform, Path(audio_path), output, opts, time.perf_counter() - start)
