"""The render pipeline: portrait + speech -> frames -> mp4. Owns the clip loop (docs/architecture.md, "Data flow").

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .media.audio import SAMPLE_RATE, Waveform, load_speech, num_video_frames
from .media.face import FaceConditions
from .media.face import face_conditions as build_face_conditions
from .media.features import file_sha256, fingerprint, load_features
from .media.video import BackgroundWriter, VideoWriter
from .models.audio_encoder import encode_audio, encode_audio_windowed, frame_windows
from .models.attention import ReferenceFeatures
from .models.bundle import AvatarModels, quiet_libraries
from .options import RenderJob, RenderOptions, RenderResult, prepare_job  # noqa: F401 (prepare_job re-exported)
from .sampling.clip_init import initial_latents
from .sampling.guidance import Conditions, GuidedDenoiser
from .sampling.methods import make_scheduler, sample, set_schedule

STAGES = ("audio", "reference", "sampling", "decode", "write")


@dataclass
class RenderStats:
    """Seconds per stage (CUDA-synchronised), denoising-U-Net evaluations, and the first-frame
    delay (start of the first clip's sampling to its frames handed to the video writer)."""

    device: torch.device
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    unet_evaluations: int = 0
    sampling_started: float | None = None
    first_frame_at: float | None = None

    @property
    def first_frame_delay_s(self) -> float | None:
        if self.sampling_started is None or self.first_frame_at is None:
            return None
        return self.first_frame_at - self.sampling_started

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
        if stage == "sampling" and self.sampling_started is None:
            self.sampling_started = start


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

    def __init__(self, models: AvatarModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 compile: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.models = models.to(self.device, dtype)
        if self.device.type == "cuda":  # NHWC convolutions are faster on tensor cores
            for net in (models.vae, models.reference_net, models.denoising_unet):
                net.to(memory_format=torch.channels_last)
        if compile:
            models.denoising_unet.compile()
            models.vae.decoder.compile()
        self.vae_scale = 2 ** (len(models.vae.config.block_out_channels) - 1)
        self._decoders: dict[str, torch.nn.Module] = {"vae": models.vae}
        self._portraits: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.reference_net_calls = 0  # counted, so tests can see features are computed once per video
        self.warn: Callable[[str], None] = lambda message: print(f"avatar: {message}", file=sys.stderr)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto",
                        compile: bool = False) -> "AvatarPipeline":
        """Load a weights folder (see ``models/bundle.py``) onto a device."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_pretrained(path, torch_dtype=dt), dev, dt, compile=compile)

    @classmethod
    def from_preset(cls, arch: str = "tiny", device: str = "auto", dtype: str = "auto", seed: int = 0,
                    cfg_tokens: int = 0, family: str = "osa-lcm", compile: bool = False) -> "AvatarPipeline":
        """The architecture of a preset with random weights (tests, benchmarks, demos).

        ``cfg_tokens`` > 0 adds FADA's CFG-token layers (needed by ``--model fada``);
        ``family="hallo"`` builds Hallo's variant (needed by ``--model hallo``).
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(AvatarModels.from_preset(arch, seed=seed, cfg_tokens=cfg_tokens, family=family), dev, dt,
                   compile=compile)

    # ------------------------------------------------------------ the stages
    def _reference_features(self, latents: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.reference_net_calls += 1
        return self.models.reference_net.extract_features(latents, tokens)

    def _portrait(self, image: np.ndarray, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_ref and the reference features of a portrait: once per video, and once per portrait
        across videos (a batch that reuses a portrait computes them once; the last 8 are kept)."""
        import hashlib

        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape,
               hashlib.sha1(tokens.float().cpu().numpy().tobytes()).hexdigest())
        if key not in self._portraits:
            z_ref = self.encode_image(image)
            self._portraits[key] = (z_ref, self._reference_features(z_ref, tokens))
            while len(self._portraits) > 8:
                self._portraits.pop(next(iter(self._portraits)))
        return self._portraits[key]

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, 4, S/8, S/8), the VAE posterior mean times the scaling factor."""
        vae = self.models.vae
        return vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mean * vae.config.scaling_factor

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 -> z_ref (1, 4, S/8, S/8)."""
        return self.encode_pixels(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)

    def decoder(self, name: str = "vae") -> torch.nn.Module:
        """The latent decoder: "vae" (the model's AutoencoderKL) or "taesd" (diffusers' AutoencoderTiny).

        TAESD comes from ``<weights>/taesd``, else the installed ``taesd`` component, else (random
        weights only) a random one of the preset's size.

        Raises:
            InputError: TAESD asked for and not found.
        """
        if name not in self._decoders:
            from diffusers import AutoencoderTiny

            from .models.presets import preset
            from .weights import installed_path, load_manifest

            source = Path(self.models.source) if self.models.source and not self.models.source.startswith("random") \
                else None
            component = load_manifest().get("taesd")
            installed = installed_path(component) if component is not None else None
            if source is not None and (source / "taesd").is_dir():
                tiny = AutoencoderTiny.from_pretrained(source / "taesd")
            elif installed is not None:
                tiny = AutoencoderTiny.from_pretrained(installed)
            elif self.models.source.startswith("random:"):
                arch = self.models.source.split(":")[1]
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    tiny = AutoencoderTiny(**preset(arch)["taesd"])
            else:
                raise InputError("--decoder taesd needs TAESD: run 'avatar weights download taesd' (or put it in "
                                 "<weights>/taesd)")
            with quiet_libraries():
                self._decoders[name] = tiny.eval().requires_grad_(False).to(self.device, self.dtype)
        return self._decoders[name]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 4, decoder: str = "vae") -> torch.Tensor:
        """(B=1, 4, F, h, w) latents -> (F, 3, S, S) pixels in [-1, 1], decoded ``batch_size`` at a time
        by ``decoder`` ("vae" or "taesd")."""
        net = self.decoder(decoder)
        flat = latents[0].permute(1, 0, 2, 3) / net.config.scaling_factor
        return torch.cat([net.decode(chunk.to(self.dtype)).sample.clamp(-1, 1) for chunk in flat.split(batch_size)])

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> np.ndarray:
        """(F, 3, S, S) in [-1, 1] -> (F, S, S, 3) uint8 on the CPU."""
        return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray, fps: float, pad_to_multiple: int | None = None,
                       window_frames: int = 750, margin_frames: int = 100) -> torch.Tensor:
        """(samples,) 16 kHz mono -> (frames, layers, dim) wav2vec2 features at ``fps``.

        ``pad_to_multiple``: append silence up to a whole number of clips of that many frames
        before encoding, as Hallo does (the result then has the padded frame count). Speech longer
        than ``window_frames + 2 * margin_frames`` frames (38 s at 25 fps) is encoded by windows
        with memory flat in its length (``encode_audio_windowed``).
        """
        frames = num_video_frames(waveform.shape[0], fps)
        pad = max(0, 400 - waveform.shape[0])  # shorter than wav2vec2's first conv window
        if pad_to_multiple:
            extra = -frames % pad_to_multiple
            frames += extra
            pad = max(pad, round(extra * SAMPLE_RATE / fps))
        model, extractor = self.models.audio_encoder, self.models.feature_extractor
        if frames > window_frames + 2 * margin_frames:
            return encode_audio_windowed(model, extractor, waveform, frames, pad, window_frames, margin_frames)
        return encode_audio(model, extractor, np.asarray(waveform), frames, pad)

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
        return build_face_conditions(image, opts.size // self.vae_scale, face_box, opts.face_embedding, root,
                                     warn=self.warn)

    def separated_vocals(self, audio_path: str | Path, num_samples: int | None = None) -> Waveform:
        """The recording's vocals, (samples,) float32 at 16 kHz, padded or trimmed to ``num_samples``
        (``media/vocals.py``; the model from ``<weights>/audio_separator`` or the manifest).

        Raises:
            InputError: audio-separator not installed.
            WeightsError: the separator's model is not found.
        """
        from .media.vocals import check_separator_installed, find_vocal_model, separate_vocals

        check_separator_installed()
        return separate_vocals(audio_path, find_vocal_model(self.models.source), num_samples)

    def audio_fingerprint(self) -> str:
        """A fingerprint of the audio encoder's weights (features files record and check it)."""
        if not hasattr(self, "_audio_fingerprint"):
            self._audio_fingerprint = fingerprint(self.models.audio_encoder)
        return self._audio_fingerprint

    def audio_padding(self, clip_frames: int) -> int | None:
        """The ``pad_to_multiple`` of :meth:`audio_features` for clips of ``clip_frames``: the clip
        length for the Hallo family (silence to whole clips before wav2vec2), else None."""
        return clip_frames if self.models.settings.audio_padding == "clip" else None

    def encode_audio_file(self, audio_path: str | Path, fps: float = 25.0, clip_frames: int = 16,
                          separate_vocals: bool = False) -> tuple[torch.Tensor, dict[str, str]]:
        """Decode a speech file and compute its per-frame features as render would, with the
        metadata a features file records (see ``media/features.py``). ``separate_vocals``: from
        the recording's separated vocals, as ``render --separate-vocals`` computes them."""
        from . import __version__

        waveform = load_speech(audio_path)
        if separate_vocals:
            waveform = self.separated_vocals(audio_path, waveform.shape[0])
        pad = self.audio_padding(clip_frames)
        features = self.audio_features(waveform, fps, pad)
        frames = num_video_frames(waveform.shape[0], fps)
        meta = {"fps": repr(float(fps)), "sample_rate": str(SAMPLE_RATE), "model": self.audio_fingerprint(),
                "audio_sha256": file_sha256(audio_path), "frames": str(frames),
                "padding": str(features.shape[0] - frames), "vocals": "separated" if separate_vocals else "original",
                "avatar_cli_version": __version__}
        return features, meta

    def _features_for(self, job: "RenderJob") -> torch.Tensor | None:
        """The job's precomputed features, checked against this render (None: compute them)."""
        if job.audio_features is None:
            return None
        opts = job.options
        features, meta = load_features(job.audio_features)
        name = job.audio_features
        if float(meta.get("fps", "nan")) != float(opts.fps):
            raise InputError(f"audio features {name} are at {meta.get('fps')} fps, the render at {opts.fps:g}; "
                             f"encode again with --fps {opts.fps:g}")
        if meta.get("model") != self.audio_fingerprint():
            raise InputError(f"audio features {name} come from another audio encoder (model {meta.get('model')}); "
                             f"encode again with these weights")
        frames = num_video_frames(job.waveform.shape[0], opts.fps)
        pad = self.audio_padding(opts.clip_frames)
        expected = frames + (-frames % pad if pad else 0)
        if int(meta.get("frames", -1)) != frames or features.shape[0] != expected:
            raise InputError(f"audio features {name} have {meta.get('frames')} frames, the speech {job.audio_path} "
                             f"{frames}; encode this speech")
        if meta.get("audio_sha256") != file_sha256(job.audio_path):
            self.warn(f"warning: audio features {name} were computed from another file of the same length")
        return features

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
                audio_features = self.audio_features(waveform, opts.fps, self.audio_padding(opts.clip_frames))
        frames_per_clip = opts.clip_frames
        clips = -(-total // frames_per_clip)

        latent = opts.size // self.vae_scale
        with stats("reference"):
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
            z_ref, reference = self._portrait(image, face_tokens)
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
        z_ref32 = z_ref.float()  # the sampler's arithmetic runs in float32; the networks in self.dtype

        for n in range(clips):
            with stats("audio"):
                index = torch.arange(n * frames_per_clip, (n + 1) * frames_per_clip)
                windows = frame_windows(audio_features, index)
                audio_tokens = models.audio_projector(windows.to(self.device))[None]
            with stats("reference"):
                motion_features = null_motion = None
                if motion_count and method.guidance == "cfg" and not torch.equal(face_tokens, null_tokens):
                    # Hallo's reference net pairs motion frames with alternating face tokens
                    # (docs/hallo.md, "What runs"): reproduce that pairing for each branch.
                    motion_features = self._reference_features(motion, _alternating(face_tokens, null_tokens, 1))
                    null_motion = self._reference_features(motion, _alternating(face_tokens, null_tokens, 0))
                elif motion_count:
                    motion_features = null_motion = self._reference_features(motion, face_tokens)
            with stats("sampling"):
                rolling = opts.init == "rolling" or (opts.init == "combined-rolling" and n > 0)
                timesteps = set_schedule(scheduler, method, steps, opts.noise_level if rolling else None,
                                         list(opts.window_steps) if opts.window_steps else None)
                noise = torch.randn((1, z_ref.shape[1], frames_per_clip, latent, latent), generator=generator,
                                    device=self.device, dtype=torch.float32)
                latents, _ = initial_latents(opts.init, n, noise, previous, z_ref32, alphas, timesteps[0])
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
                pixels = self.decode_latents(latents, opts.decode_batch_size, opts.decoder)
                frames = self.to_uint8(pixels)
            if motion_count:
                if settings.motion_source == "decoded":  # Hallo: encode the last decoded frames again
                    with stats("reference"):
                        motion = self.encode_pixels(pixels[-motion_count:])
                else:
                    motion = latents[0, :, -motion_count:].permute(1, 0, 2, 3).to(self.dtype).contiguous()
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
        stats.stages["reference"] += job.image_s  # reading the portrait: the reference's input
        face = None
        if self.models.face_locator is not None:  # Hallo family: face box, masks, embedding
            with stats("reference"):
                face = self.face_conditions(job.image, opts, job.face_box)
        with stats("audio"):
            features = self._features_for(job)
            waveform = job.waveform
            if features is None and opts.separate_vocals:
                waveform = self.separated_vocals(job.audio_path, job.waveform.shape[0])
        written = 0
        with VideoWriter(job.output, opts.size, opts.fps, audio_path=job.audio_path, crf=opts.crf) as writer:
            sink = BackgroundWriter(writer) if opts.overlap else None
            try:
                for frames in self.generate(job.image, waveform, opts, on_clip=on_clip, stats=stats, face=face,
                                            audio_features=features):
                    if stats.first_frame_at is None:
                        stats.first_frame_at = time.perf_counter()
                    with stats("write"):  # with overlap: only the time the queue makes us wait
                        if sink:
                            sink.put(frames)
                        else:
                            writer.write(frames)
                    written += len(frames)
                with stats("write"):
                    if sink:
                        sink.close()
                    finish = time.perf_counter()
            except BaseException:
                if sink:
                    sink.abort()
                raise
        stats.stages["write"] += time.perf_counter() - finish  # ffmpeg finishing, mux, rename
        wall = time.perf_counter() - start + job.decode_s + job.image_s
        duration = written / opts.fps
        guidance = opts.guidance
        return RenderResult(
            output=str(job.output), frames=written, fps=opts.fps, duration_s=duration, size=opts.size,
            model=opts.model, nfe=opts.method.nfe(opts.steps), num_inference_steps=opts.steps,
            guidance=guidance,
            unet_evaluations=stats.unet_evaluations, clips=-(-written // opts.clip_frames),
            stages={k: round(v, 4) for k, v in stats.stages.items()}, wall_s=round(wall, 4),
            first_frame_delay_s=None if stats.first_frame_delay_s is None else round(stats.first_frame_delay_s, 4),
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
