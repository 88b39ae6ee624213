"""The EMO/Hallo-style dual U-Net family: portrait + speech -> frames, clip by clip.

Data flow::

    image -> square RGB -> VAE encode -> z_ref -> reference net -> reference features (once)
    speech -> 16 kHz mono -> wav2vec2 at video fps -> per-frame features (once; ``pipelines/unet_audio.py``)
    for each clip of F frames:
        audio windows -> audio projector -> audio tokens
        last M latents of the previous clip (zeros for clip 0) -> reference net -> motion features
        initial latents (gaussian | rolling | combined-rolling) -> the method's sampler over the
        denoising U-Net (``sampling/methods.py``, guidance ``sampling/guidance.py``)
        -> latents -> VAE decode -> frames
    -> the shared writer (``pipelines/base.py``): speech muxed as AAC, temporary file renamed

Conditions (and guidance's unconditional branch) come from ``models/conditioning.py``, the same
builder training uses.

Python use::

    from avatar_cli import UNetPipeline, RenderOptions
    pipe = UNetPipeline.from_pretrained("weights/")          # or .from_preset("tiny")
    result = pipe.render("portrait.png", "speech.wav", "out.mp4", RenderOptions(seed=1))
    for frames in pipe.generate(image_uint8, waveform_16k):  # frames: (n, S, S, 3) uint8
        ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..media.audio import SAMPLE_RATE, num_video_frames
from ..media.face import FaceConditions
from ..media.face import face_conditions as build_face_conditions
from ..weights import find_folder
from ..models.audio_encoder import frame_windows
from ..models.bundle import AvatarModels, quiet_libraries
from ..models.conditioning import ConditionBuilder
from ..options import RenderJob, RenderOptions
from ..precision import describe as describe_precision, policy, run_in_format
from ..progress import CountedDenoiser
from ..runtime import resolve_device, resolve_dtype
from ..sampling.clip_init import initial_latents
from ..sampling.guidance import Conditions
from ..sampling.methods import sample
from .base import Pipeline, RenderStats
from .unet_audio import AudioFeaturesMixin
from .unet_windows import ContextWindowsMixin


class UNetPipeline(AudioFeaturesMixin, ContextWindowsMixin, Pipeline):
    """Portrait + speech -> talking-head frames with the dual U-Net (reference net + 3D denoising
    U-Net), sampled by any method of ``sampling/methods.py`` (OSA-LCM one step by default).

    Args:
        models: the networks (:class:`AvatarModels`), moved to ``device``/``dtype`` here.
        device: torch device to run on.
        dtype: floating dtype of the networks and latents.
        compile: ``torch.compile`` the denoising U-Net and the VAE decoder (after every change to
            the networks, e.g. added CFG layers, so nothing compiled is replaced afterwards).
    """

    family = "unet"
    stages = ("reference", "audio", "sampling", "decode", "write")

    def __init__(self, models: AvatarModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 compile: bool = False):
        super().__init__(torch.device(device), dtype, models.source)
        self.models = models.to(self.device, dtype)
        if self.device.type == "cuda":  # NHWC convolutions are faster on tensor cores
            for net in (models.vae, models.reference_net, models.denoising_unet):
                net.to(memory_format=torch.channels_last)
        # the networks that run torch.compiled (render / bench JSON's "compiled", as Ditto's); opt-in only
        self.compiled: list[str] = ["denoising_unet", "vae_decoder"] if compile else []
        if compile:
            models.denoising_unet.compile()
            models.vae.decoder.compile()
        self.vae_scale = 2 ** (len(models.vae.config.block_out_channels) - 1)
        self.conditions = ConditionBuilder(self.models, self.device, dtype)
        self.added_cfg_layers = False
        self._decoders: dict[str, torch.nn.Module] = {"vae": models.vae}
        self._portraits: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.set_precision(dtype)

    def set_precision(self, requested: str | torch.dtype = "auto", native_bf16: bool | None = None) -> dict:
        """Run each network in the format ``precision.policy("unet", ...)`` gives for ``requested`` (the
        ``--dtype`` as given); returns network -> :class:`~avatar_cli.precision.NetworkPrecision`."""
        self.precision = policy("unet", self.device, self.dtype, requested, native_bf16)
        for name, (obj, method) in self._network_calls().items():
            run_in_format(obj, method, self.precision[name], self.device)
        self._portraits = {}  # features computed in another format
        return self.precision

    def _network_calls(self) -> dict:
        """network name -> (the object, the method whose call runs it), for :meth:`set_precision`."""
        m = self.models
        calls = {"audio_encoder": (m.audio_encoder, "_encode_window" if m.settings.audio_encoder == "whisper"
                                   else "forward"), "vae_encoder": (m.vae.encoder, "forward"),
                 "reference_net": (m.reference_net, "extract_features"), "denoising_unet": (m.denoising_unet, "forward"),
                 "vae_decoder": (m.vae.decoder, "forward")}
        if "taesd" in self._decoders:
            calls["taesd"] = (self._decoders["taesd"].decoder, "forward")
        return calls

    def describe(self, options: RenderOptions) -> dict:
        """The base description plus ``precision`` (network -> the format it runs in) and ``compiled``."""
        return {**super().describe(options), "precision": describe_precision(self.precision), "compiled": self.compiled}

    @property
    def reference_net_calls(self) -> int:
        """Reference-net passes so far (features are computed once per video and portrait)."""
        return self.conditions.reference_net_calls

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        compile: bool = False, add_cfg_layers: bool = False) -> "UNetPipeline":
        """Load a weights folder (see ``models/bundle.py``) onto a device.

        ``add_cfg_layers``: give a denoising U-Net without FADA's CFG-token layers zero-initialised
        ones (so ``--method fada`` runs, without guidance), before anything is compiled.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        models = AvatarModels.from_pretrained(path, torch_dtype=dt)
        added = add_cfg_layers and not models.denoising_unet.config.cfg_tokens
        if added:
            models.denoising_unet = models.denoising_unet.with_cfg_layers()
        pipe = cls(models, dev, dt, compile=compile)
        pipe.added_cfg_layers = added
        pipe.set_precision(dtype)
        return pipe

    @classmethod
    def from_preset(cls, arch: str = "tiny", device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    seed: int = 0, cfg_tokens: int = 0, family: str = "osa-lcm", compile: bool = False
                    ) -> "UNetPipeline":
        """The architecture of a preset with random weights (tests, benchmarks, demos).

        ``cfg_tokens`` > 0 adds FADA's CFG-token layers (needed by ``--method fada``);
        ``family="hallo"`` builds Hallo's variant (needed by ``--method hallo``).
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        pipe = cls(AvatarModels.from_preset(arch, seed=seed, cfg_tokens=cfg_tokens, family=family), dev, dt,
                   compile=compile)
        pipe.set_precision(dtype)  # the per-network formats of "auto" (precision.py)
        return pipe

    # ------------------------------------------------------------ the stages
    def _portrait(self, image: np.ndarray, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_ref and the reference features of a portrait: once per video, and once per portrait
        across videos (a batch that reuses a portrait computes them once; the last 8 are kept)."""
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape,
               hashlib.sha1(tokens.float().cpu().numpy().tobytes()).hexdigest())
        if key not in self._portraits:
            z_ref = self.encode_image(image)
            self._portraits[key] = (z_ref, self.conditions.reference(z_ref, tokens))
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

            from ..models.presets import preset

            source = None if self.source.startswith("random") else self.source
            folder = find_folder(source, "taesd", "taesd")
            if folder is not None:
                tiny = AutoencoderTiny.from_pretrained(folder)
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
            run_in_format(tiny.decoder, "forward", self.precision["taesd"], self.device)
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

    def face_conditions(self, image: np.ndarray, opts: RenderOptions,
                        face_box: tuple[float, float, float, float] | None = None, lip_box=None,
                        side: int | None = None) -> FaceConditions:
        """Face box (``face_box`` in frame pixels, else detected), lip box (``lip_box``, else
        detected), region masks and face-locator image drawn at the portrait's side ``side`` (None:
        the frame's) with ``opts.face_expand_ratio``, face embedding (``media/face.py``).

        The ArcFace models are looked for in ``<weights>/face_analysis`` and in the installed
        ``hallo-face-analysis`` component.
        """
        source = None if self.source.startswith("random") else self.source
        root = find_folder(source, "face_analysis", "hallo-face-analysis", "face_analysis")  # used by "auto"
        return build_face_conditions(image, opts.size // self.vae_scale, face_box, opts.face_embedding, root,
                                     warn=self.warn, lip_box=lip_box, side=side,
                                     face_expand_ratio=opts.face_expand_ratio)

    # ------------------------------------------------------------ the pipeline interface
    PREVIEW_SIZE = 256  # --preview's frame side (the "U-Net family at 256 px with TAESD")
    PREVIEW_DDIM_STEPS = 10  # --preview's DDIM steps (hallo: 40, teacher: 25)

    @classmethod
    def preview_options(cls, options: RenderOptions, explicit: frozenset[str] = frozenset(),
                        weights: str | Path | None = None) -> tuple[RenderOptions, str]:
        """``--preview``: 256 px frames, TAESD when it is installed (or random weights: ``weights``
        None), and at most 10 steps for DDIM methods; options in ``explicit`` are kept."""
        changes, said = {}, []
        if "size" not in explicit and options.size > cls.PREVIEW_SIZE:
            changes["size"] = cls.PREVIEW_SIZE
            said.append(f"{cls.PREVIEW_SIZE} px")
        if "decoder" not in explicit and options.decoder == "vae" and (
                weights is None or find_folder(weights, "taesd", "taesd") is not None):
            changes["decoder"] = "taesd"
            said.append("TAESD decoder")
        if ("num_inference_steps" not in explicit and options.sampling.scheduler == "ddim"
                and options.steps > cls.PREVIEW_DDIM_STEPS):
            changes["num_inference_steps"] = cls.PREVIEW_DDIM_STEPS
            said.append(f"{cls.PREVIEW_DDIM_STEPS} DDIM steps")
        return replace(options, **changes), ", ".join(said) or "its usual settings"

    def sampling_units_per_second(self, options: RenderOptions) -> float:
        """Sampler runs per video second: clips (``fps / clip_frames``), or for EchoMimic's context
        windows the windows (each new window brings ``context_frames - context_overlap`` frames)."""
        settings = self.models.settings
        if settings.frame_schedule == "context-windows" and options.init == "gaussian":
            return options.fps / (settings.context_frames - settings.context_overlap)
        return super().sampling_units_per_second(options)

    def check(self, options: RenderOptions) -> None:
        """Raise :class:`InputError` when the options' method cannot sample these weights, or an
        option is out of range for this model (temporal positions)."""
        unet = self.models.denoising_unet
        motion = unet.config.num_motion_frames if options.motion_frames is None else options.motion_frames
        replace(options, motion_frames=motion).validate(unet.config.motion_max_seq_length)
        options.sampling.check_weights(unet.config, self.models.scheduler_config, self.models.face_locator is not None)

    def prepare(self, job: RenderJob, stats: RenderStats) -> dict:
        """Per job: the face conditions (Hallo family), the precomputed features file, the
        separated vocals."""
        opts, inputs = job.options, {}
        if self.models.settings.face_condition == "mask":  # EchoMimic: crop to the face, face mask
            from ..media.face import echomimic_face

            with stats("reference"):
                inputs["face"] = echomimic_face(job.image, job.face_box, warn=self.warn)
                inputs["image"] = inputs["face"].image
        elif self.models.face_locator is not None:  # Hallo family: face box, masks, embedding
            with stats("reference"):
                inputs["face"] = self.face_conditions(job.image, opts, job.face_box, job.lip_box, job.side)
        with stats("audio"):
            inputs["audio_features"] = self._features_for(job)
            if inputs["audio_features"] is None and opts.separate_vocals:
                inputs["waveform"] = self.separated_vocals(job.audio_path, job.waveform.shape[0])
        return inputs

    def quality_checks(self, image: np.ndarray, options: RenderOptions) -> dict:
        """With ``--decoder taesd``: the mean per-frame PSNR (dB, 8-bit) of TAESD's frames against
        the full VAE decoder's on the latents of one clip."""
        if options.decoder != "taesd":
            return {}
        import math

        kept: list[torch.Tensor] = []
        silence = np.zeros(int(round(options.clip_frames / options.fps * SAMPLE_RATE)), np.float32)
        for _ in self.generate(image, silence, options, keep_latents=kept):
            pass
        fast = self.to_uint8(self.decode_latents(kept[0], options.decode_batch_size, "taesd")).astype(np.float64)
        full = self.to_uint8(self.decode_latents(kept[0], options.decode_batch_size, "vae")).astype(np.float64)
        mse = ((fast - full) ** 2).reshape(len(fast), -1).mean(axis=1)
        return {"taesd_psnr_db": round(float(np.mean([99.0 if m == 0 else 10 * math.log10(255 ** 2 / m)
                                                      for m in mse])), 2)}

    # ------------------------------------------------------------ the clip loop
    @torch.no_grad()
    def generate(self, image: np.ndarray, waveform: np.ndarray, options: RenderOptions | None = None, *,
                 on_progress: Callable[[int, int], None] | None = None, stats: RenderStats | None = None,
                 audio_features: torch.Tensor | None = None, face: FaceConditions | None = None,
                 keep_latents: list | None = None) -> Iterator[np.ndarray]:
        """Yield the video's frames clip by clip.

        Args:
            image: (S, S, 3) uint8 RGB portrait, S = ``options.size``.
            waveform: (samples,) float32 mono speech at 16 kHz.
            options: render options (defaults if None).
            on_progress: called as on_progress(clips_done, clips_total) after each clip.
            stats: accumulates per-stage seconds and U-Net evaluations (``render`` passes one).
            audio_features: precomputed (frames, layers, dim) features at ``options.fps``.
            face: face embedding, face-locator image and region masks (Hallo family, see
                :meth:`face_conditions`); None = the null face condition (zero embedding, no
                face-locator features, all-ones masks).
            keep_latents: a list each clip's final latents (1, 4, F, h, w) are appended to.

        Yields:
            (n, S, S, 3) uint8 frames, n = clip frames (the last clip trimmed to the audio).
            In total round(duration_s * fps) frames.

        Raises:
            InputError: options out of range, or a method these weights cannot run.
        """
        opts = options or RenderOptions()
        models, build = self.models, self.conditions
        settings = models.settings
        unet = models.denoising_unet
        motion_count = unet.config.num_motion_frames if opts.motion_frames is None else opts.motion_frames
        opts = replace(opts, motion_frames=motion_count)
        self.check(opts)
        method, steps, scales = opts.sampling, opts.steps, opts.scales
        if image.shape != (opts.size, opts.size, 3):
            raise InputError(f"image must be ({opts.size}, {opts.size}, 3) uint8 for --size {opts.size}")
        stats = stats or RenderStats.of(self)
        scheduler = method.make_scheduler(models.scheduler_config)
        alphas = scheduler.alphas_cumprod  # the training schedule's (rolling starts use it)

        whisper = settings.audio_encoder == "whisper"
        progress = stats.progress
        progress.stage("audio features")
        with stats("audio"):
            total = num_video_frames(waveform.shape[0], opts.fps)
            if audio_features is None:
                audio_features = self.audio_features(waveform, opts.fps, self.audio_padding(opts.clip_frames))
            frame_tokens = self.frame_audio_tokens(audio_features, total, opts.fps) if whisper else None
        frames_per_clip = opts.clip_frames
        clips = -(-total // frames_per_clip)
        progress.set_frames_total(total)

        latent = opts.size // self.vae_scale
        if face is None and settings.face_condition == "mask":  # EchoMimic without a face: all face
            from ..media.face import echomimic_face

            face = echomimic_face(image, None, found=False)
        with stats("reference"):
            face_tokens, locator, masks = build.face_tokens(None), None, None
            if face is not None:
                face_tokens = build.face_tokens(face.embedding)
                if face.mask_image is not None:
                    locator = build.face_locator(face.mask_image, frames_per_clip)
                masks = {k: tuple(m.to(self.device)[None] for m in v) for k, v in face.region_masks.items()} \
                    if face.region_masks is not None else None
            z_ref, reference = self._portrait(image, face_tokens)
            null_reference = build.null_reference(reference, tuple(z_ref.shape)) if method.guided else None
        generator = torch.Generator(self.device).manual_seed(opts.seed)
        if settings.frame_schedule == "context-windows" and opts.init == "gaussian":
            yield from self._generate_windows(
                opts, total, frame_tokens, face_tokens, locator, z_ref, reference, null_reference, scheduler,
                generator, stats, on_progress, keep_latents)
            return
        if settings.first_clip_motion == "reference":
            motion = z_ref.expand(motion_count, -1, -1, -1)
        else:
            motion = torch.zeros(motion_count, z_ref.shape[1], latent, latent, device=self.device, dtype=self.dtype)
        previous = None
        z_ref32 = z_ref.float()  # the sampler's arithmetic runs in float32; the networks in self.dtype
        progress.stage("sampling", self.clip_evaluations(opts, scheduler, clips), "evaluations")

        for n in range(clips):
            with stats("audio"):
                index = torch.arange(n * frames_per_clip, (n + 1) * frames_per_clip)
                if whisper:  # EchoMimic: the frames' Whisper tokens, the last frame's past the end
                    audio_tokens = build.audio_tokens(frame_tokens[index.clamp(max=total - 1)])[None]
                else:
                    audio_tokens = build.audio_tokens(frame_windows(audio_features, index))[None]
            with stats("reference"):
                motion_features, null_motion = build.motion(motion, face_tokens, method.guidance)
            with stats("sampling"):
                rolling = opts.init == "rolling" or (opts.init == "combined-rolling" and n > 0)
                timesteps = method.set_timesteps(scheduler, steps, opts.start_timestep if rolling else None,
                                                 list(opts.window_steps) if opts.window_steps else None)
                noise = torch.randn((1, z_ref.shape[1], frames_per_clip, latent, latent), generator=generator,
                                    device=self.device, dtype=torch.float32)
                if settings.noise_clamp:
                    noise = noise.clamp(-settings.noise_clamp, settings.noise_clamp)
                latents, _ = initial_latents(opts.init, n, noise, previous, z_ref32, alphas, timesteps[0])
                conditions = Conditions(face_tokens, audio_tokens, reference, motion_features, locator, masks)
                null = build.null(conditions, null_reference, null_motion) if method.guided else None
                denoiser = method.denoiser(unet, conditions, null, scales, opts.audio_weights)
                latents = sample(CountedDenoiser(denoiser, progress), latents, scheduler, generator)
                stats.evaluations += denoiser.evaluations
            previous = latents
            if keep_latents is not None:
                keep_latents.append(latents)
            with stats("decode"):
                pixels = self.decode_latents(latents, opts.decode_batch_size, opts.decoder)
                frames = self.to_uint8(pixels)
            if motion_count:
                if settings.motion_source == "decoded":  # Hallo: encode the last decoded frames again
                    with stats("reference"):
                        motion = self.encode_pixels(pixels[-motion_count:])
                else:
                    motion = latents[0, :, -motion_count:].permute(1, 0, 2, 3).to(self.dtype).contiguous()
            if on_progress is not None:
                on_progress(n + 1, clips)
            yield frames[: min(frames_per_clip, total - n * frames_per_clip)]

    def clip_evaluations(self, opts: RenderOptions, scheduler, clips: int) -> int:
        """Denoiser evaluations of the clip loop over ``clips`` clips (per batch element, as
        ``GuidedDenoiser.evaluations`` counts them): each clip's timesteps (fewer for a rolling
        start) times the method's branches; the progress display's total. Runs ``set_timesteps``
        on a copy of ``scheduler``."""
        import copy

        method, probe = opts.sampling, copy.deepcopy(scheduler)
        counts = {}
        for rolling in {opts.init == "rolling" or (opts.init == "combined-rolling" and n > 0) for n in range(clips)}:
            counts[rolling] = len(method.set_timesteps(probe, opts.steps, opts.start_timestep if rolling else None,
                                                       list(opts.window_steps) if opts.window_steps else None))
        return method.branches * sum(counts[opts.init == "rolling" or (opts.init == "combined-rolling" and n > 0)]
                                     for n in range(clips))
