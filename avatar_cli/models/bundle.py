"""All networks of the avatar model, built from a preset or loaded from a folder.

On-disk layout (what :meth:`AvatarModels.save_pretrained` writes and ``--weights DIR`` reads):
one sub-folder per component, each as its library's ``save_pretrained`` writes it::

    DIR/avatar_index.json              component -> class, and the avatar-cli version
    DIR/vae/                           diffusers AutoencoderKL (config.json + safetensors)
    DIR/reference_net/                 ReferenceNet (= SD1.5 UNet2DConditionModel)
    DIR/denoising_unet/                DenoisingUNet3D
    DIR/audio_encoder/                 transformers Wav2Vec2Model + preprocessor_config.json, or (EchoMimic
                                       family) whisper_tiny.pt, OpenAI's Whisper checkpoint as released
    DIR/audio_projector/, image_projector/  (not in the EchoMimic family: it has no projectors)
    DIR/face_locator/                  FaceLocator (Hallo and EchoMimic families)
    DIR/scheduler/scheduler_config.json  the noise schedule the models were trained with

``avatar_index.json`` also holds the :class:`ModelSettings`: how the models expect to be driven.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from ..errors import WeightsError
from .denoising_unet import DenoisingUNet3D
from .face_locator import FaceLocator
from .presets import SETTINGS, resolve
from .projectors import AudioProjector, ImageProjector
from .reference_net import ReferenceNet

INDEX_FILE = "avatar_index.json"


@contextmanager
def quiet_libraries():
    """No per-file progress bars or info chatter from transformers/diffusers while loading or saving."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            transformers_logging.enable_progress_bar()

_DIFFUSERS = {
    "vae": AutoencoderKL,
    "reference_net": ReferenceNet,
    "denoising_unet": DenoisingUNet3D,
    "audio_projector": AudioProjector,
    "image_projector": ImageProjector,
}
_PROJECTORS = ("audio_projector", "image_projector")
WHISPER_FILE = "whisper_tiny.pt"  # DIR/audio_encoder/<this>: EchoMimic's audio_processor/whisper_tiny.pt


def whisper_features_class():
    """``WhisperFeatures`` (``models/whisper_features.py``: Whisper-tiny encoder features as EchoMimic
    computes them); imported on use.

    Raises:
        WeightsError: the module is not installed with this copy of avatar-cli.
    """
    try:
        from .whisper_features import WhisperFeatures
    except ImportError as err:
        raise WeightsError("the EchoMimic family needs the Whisper feature encoder (avatar_cli/models/"
                           f"whisper_features.py), which this copy of avatar-cli lacks ({err})") from None
    return WhisperFeatures


def random_whisper_checkpoint(dims: dict, seed: int = 0) -> dict:
    """An OpenAI Whisper checkpoint (``{"dims": ..., "model_state_dict": ...}``) of the encoder with
    seeded random weights, in the layout of openai/whisper ``whisper/model.py`` (``AudioEncoder``:
    conv1, conv2, the sinusoidal ``positional_embedding``, ``blocks.<i>`` residual attention blocks
    with ``attn.query/key/value/out``, ``attn_ln``, ``mlp.0/2``, ``mlp_ln``, then ``ln_post``).

    Only the encoder: EchoMimic's features never run the decoder. Used for ``--random-weights``.
    """
    import math

    d, layers, ctx, mels = dims["n_audio_state"], dims["n_audio_layer"], dims["n_audio_ctx"], dims["n_mels"]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * (1.0 / math.sqrt(shape[-1]))

    # openai/whisper model.py sinusoids(length, channels): sin | cos of position / 10000^(i / (half - 1))
    half = d // 2
    inv = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half))
    angle = torch.arange(ctx)[:, None] * inv[None]
    state = {"encoder.conv1.weight": rand(d, mels, 3), "encoder.conv1.bias": torch.zeros(d),
             "encoder.conv2.weight": rand(d, d, 3), "encoder.conv2.bias": torch.zeros(d),
             "encoder.positional_embedding": torch.cat([angle.sin(), angle.cos()], dim=1)}
    for i in range(layers):
        p = f"encoder.blocks.{i}."
        for name in ("query", "value", "out"):
            state[f"{p}attn.{name}.weight"], state[f"{p}attn.{name}.bias"] = rand(d, d), torch.zeros(d)
        state[f"{p}attn.key.weight"] = rand(d, d)
        for ln in ("attn_ln", "mlp_ln"):
            state[f"{p}{ln}.weight"], state[f"{p}{ln}.bias"] = torch.ones(d), torch.zeros(d)
        state[f"{p}mlp.0.weight"], state[f"{p}mlp.0.bias"] = rand(4 * d, d), torch.zeros(4 * d)
        state[f"{p}mlp.2.weight"], state[f"{p}mlp.2.bias"] = rand(d, 4 * d), torch.zeros(d)
    state["encoder.ln_post.weight"], state["encoder.ln_post.bias"] = torch.ones(d), torch.zeros(d)
    return {"dims": dict(dims), "model_state_dict": state}


def load_whisper(checkpoint: str | Path | dict):
    """The Whisper feature encoder from OpenAI's checkpoint: a ``whisper_tiny.pt`` path or the dict
    of :func:`random_whisper_checkpoint` (written to a temporary file for
    ``WhisperFeatures.from_openai_checkpoint``)."""
    klass = whisper_features_class()
    if isinstance(checkpoint, dict):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / WHISPER_FILE
            torch.save(checkpoint, path)
            return klass.from_openai_checkpoint(path)
    return klass.from_openai_checkpoint(checkpoint)


@dataclass
class ModelSettings:
    """How a model family expects to be driven; the pipeline follows these.

    Attributes:
        null_reference: the "no reference" condition of guidance: "zero-latent" (the reference
            features of a zero latent) or "none" (no reference keys/values; Hallo).
        first_clip_motion: motion frames of clip 0: "zeros" (zero latents; OSA-LCM) or
            "reference" (the portrait latent repeated; Hallo).
        motion_source: the next clip's motion frames: "latents" (the last generated latents) or
            "decoded" (the last decoded frames encoded again by the VAE; Hallo).
        audio_padding: "none", or "clip" (silence appended to whole clips before wav2vec2; Hallo).
        default_method: the sampling method the weights are made for.
        audio_encoder: "wav2vec2" (+ the audio projector) or "whisper" (EchoMimic: Whisper-tiny
            features as the U-Net's per-frame tokens, no projector).
        face_condition: "hallo" (face-locator image of the 1.2x face box, region masks, ArcFace
            embedding) or "mask" (EchoMimic: the portrait cropped to the face box dilated by 0.5,
            the face box dilated by 0.1 as a 1-channel face-locator mask; ``media/face.py``).
        frame_schedule: "clips" (clip by clip with motion frames) or "context-windows" (the whole
            video's latents at once, each step averaged over overlapping windows; EchoMimic).
        context_frames, context_overlap: the windows of "context-windows" (12 and 3 in EchoMimic).
        noise_clamp: initial noise clamped to [-c, c] (EchoMimic: 1.5); 0 = not clamped.
    """

    null_reference: str = "zero-latent"
    first_clip_motion: str = "zeros"
    motion_source: str = "latents"
    audio_padding: str = "none"
    default_method: str = "osa-lcm"
    audio_encoder: str = "wav2vec2"
    face_condition: str = "hallo"
    frame_schedule: str = "clips"
    context_frames: int = 12
    context_overlap: int = 3
    noise_clamp: float = 0.0

    @classmethod
    def of(cls, family: str) -> "ModelSettings":
        return cls(**SETTINGS[family])


@dataclass
class AvatarModels:
    """The networks of one avatar model, plus the noise schedule they were trained with.

    Attributes:
        vae: ``AutoencoderKL``; image (B, 3, H, W) in [-1, 1] <-> latents (B, 4, H/8, W/8).
        reference_net: :class:`ReferenceNet`.
        denoising_unet: :class:`DenoisingUNet3D`.
        audio_encoder: transformers ``Wav2Vec2Model``, or (``settings.audio_encoder == "whisper"``)
            the ``WhisperFeatures`` of ``models/whisper_features.py``.
        feature_extractor: the ``Wav2Vec2FeatureExtractor``; None with Whisper.
        audio_projector: :class:`AudioProjector`; None with Whisper (EchoMimic has none).
        image_projector: :class:`ImageProjector`; None in EchoMimic (no face embedding).
        scheduler_config: the training noise schedule (a diffusers scheduler config dict).
        face_locator: :class:`FaceLocator` or None (Hallo and EchoMimic families).
        settings: :class:`ModelSettings`.
        source: where the weights came from ("random:<arch>" or a folder path).
        audio_checkpoint: Whisper only: the OpenAI checkpoint it was loaded from (a path, or the dict
            of random weights), which :meth:`save_pretrained` writes as ``audio_encoder/whisper_tiny.pt``.
    """

    vae: AutoencoderKL
    reference_net: ReferenceNet
    denoising_unet: DenoisingUNet3D
    audio_encoder: "Wav2Vec2Model | object"
    feature_extractor: Wav2Vec2FeatureExtractor | None = None
    audio_projector: AudioProjector | None = None
    image_projector: ImageProjector | None = None
    scheduler_config: dict = field(default_factory=dict)
    face_locator: FaceLocator | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    source: str = ""
    audio_checkpoint: "str | Path | dict | None" = None

    # ---------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, arch: "str | Path | dict" = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                    cfg_tokens: int = 0, family: str = "osa-lcm") -> "AvatarModels":
        """The preset's architecture with random weights (seeded, so reproducible).

        ``arch``: a preset name (``full``, ``tiny``), or a config of any width: a JSON file or a dict
        (:func:`models.presets.resolve`; ``{"base": "tiny", "denoising_unet": {...}}``).
        ``device="meta"`` builds shapes only (no memory), e.g. to count parameters.
        ``cfg_tokens`` > 0 gives the denoising U-Net FADA's CFG-token layers.
        ``family="hallo"``: Hallo's variant (face locator, 2 motion frames, its scheduler).
        ``family="echomimic"``: EchoMimic's (Whisper tokens into ``attn2``, no projectors, a
        1-channel face locator; ``models/presets.py``); the Whisper encoder is built after the
        networks, from its own generator, so the networks' weights do not depend on it.

        Raises:
            InputError: an unknown preset or family, an unreadable config file, a network or an
                argument the classes do not take.
        """
        named = isinstance(arch, str) and not arch.endswith(".json")
        cfg = resolve(arch, family)
        if cfg_tokens:
            cfg = {**cfg, "denoising_unet": {**cfg["denoising_unet"], "cfg_tokens": cfg_tokens}}
        source = f"random:{arch}" + ("" if family == "osa-lcm" else f":{family}") if named else f"random:config:{family}"
        return cls.from_config(cfg, seed=seed, device=device, source=source)

    @classmethod
    def from_config(cls, cfg: dict, seed: int = 0, device: str | torch.device = "cpu",
                    source: str = "random:config") -> "AvatarModels":
        """Random weights (seeded; the global RNG is left as it was) for a complete per-network config
        (what :func:`models.presets.preset` / :func:`models.presets.resolve` return; ``settings``
        entry: :class:`ModelSettings`; an ``audio_encoder`` with Whisper's ``n_audio_state`` when
        ``settings.audio_encoder == "whisper"``, else a transformers ``Wav2Vec2Config``).

        Raises:
            InputError: a network's constructor refuses its arguments (the message names the network).
        """
        cfg = dict(cfg)
        try:
            return cls._build(cfg, seed, device, source)
        except (TypeError, ValueError, KeyError) as err:  # an argument a class does not take, a size missing
            from ..errors import InputError

            raise InputError(f"the model config does not build: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None

    @classmethod
    def _build(cls, cfg: dict, seed: int, device: str | torch.device, source: str) -> "AvatarModels":
        settings = ModelSettings(**cfg["settings"])
        whisper = settings.audio_encoder == "whisper"
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            parts = dict(
                vae=AutoencoderKL(**cfg["vae"]),
                reference_net=ReferenceNet(**cfg["reference_net"]),
                denoising_unet=DenoisingUNet3D(**cfg["denoising_unet"]),
            )
            if not whisper:
                parts.update(
                    audio_encoder=Wav2Vec2Model(Wav2Vec2Config(**cfg["audio_encoder"])),
                    feature_extractor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                               do_normalize=True, return_attention_mask=False),
                    audio_projector=AudioProjector(**cfg["audio_projector"]),
                    image_projector=ImageProjector(**cfg["image_projector"]),
                )
            if "face_locator" in cfg:
                parts["face_locator"] = FaceLocator(**cfg["face_locator"])
        checkpoint = None
        if whisper:
            checkpoint = random_whisper_checkpoint(cfg["audio_encoder"], seed)
            parts["audio_encoder"] = None if str(device) == "meta" else load_whisper(checkpoint)
        models = cls(**parts, scheduler_config=dict(cfg["scheduler"]), settings=settings, source=source,
                     audio_checkpoint=checkpoint)
        return models.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None) -> "AvatarModels":
        """Load a folder in the layout of this module's docstring.

        Raises:
            WeightsError: the folder or a component is missing or unreadable (message names it).
        """
        root = Path(path)
        if not root.is_dir():
            raise WeightsError(f"weights folder {root} does not exist")
        try:
            index = json.loads((root / INDEX_FILE).read_text()) if (root / INDEX_FILE).is_file() else {}
            settings = ModelSettings(**index.get("settings", {}))
        except (OSError, TypeError, json.JSONDecodeError) as err:
            raise WeightsError(f"cannot load weights from {root}: {str(err).splitlines()[0]}") from err
        whisper = settings.audio_encoder == "whisper"
        components = [name for name in _DIFFUSERS if not (whisper and name in _PROJECTORS)]
        missing = [name for name in (*components, "audio_encoder", "scheduler") if not (root / name).is_dir()]
        if whisper and "audio_encoder" not in missing and not (root / "audio_encoder" / WHISPER_FILE).is_file():
            missing.append(f"audio_encoder/{WHISPER_FILE}")
        if missing:
            raise WeightsError(f"weights folder {root} lacks {', '.join(missing)}")
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        try:
            with quiet_libraries():
                parts = {name: _DIFFUSERS[name].from_pretrained(root / name, **kwargs) for name in components}
                if whisper:
                    parts["audio_checkpoint"] = root / "audio_encoder" / WHISPER_FILE
                    parts["audio_encoder"] = load_whisper(parts["audio_checkpoint"])
                else:
                    parts["audio_encoder"] = Wav2Vec2Model.from_pretrained(
                        root / "audio_encoder", **({"dtype": torch_dtype} if torch_dtype else {}))
                    parts["feature_extractor"] = Wav2Vec2FeatureExtractor.from_pretrained(root / "audio_encoder")
                if (root / "face_locator").is_dir():
                    parts["face_locator"] = FaceLocator.from_pretrained(root / "face_locator", **kwargs)
            scheduler_config = {k: v for k, v in json.loads((root / "scheduler" / "scheduler_config.json").read_text())
                                .items() if not k.startswith("_")}
        except (OSError, ValueError, RuntimeError, TypeError, json.JSONDecodeError) as err:
            raise WeightsError(f"cannot load weights from {root}: {str(err).splitlines()[0]}") from err
        return cls(**parts, scheduler_config=scheduler_config, settings=settings, source=str(root)).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write every component (safetensors + configs) under ``path``."""
        from .. import __version__

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        with quiet_libraries():
            for name in _DIFFUSERS:
                if getattr(self, name) is not None:
                    getattr(self, name).save_pretrained(root / name)
            if self.settings.audio_encoder == "whisper":
                (root / "audio_encoder").mkdir(exist_ok=True)
                if isinstance(self.audio_checkpoint, dict):
                    torch.save(self.audio_checkpoint, root / "audio_encoder" / WHISPER_FILE)
                elif self.audio_checkpoint is not None:
                    import shutil

                    shutil.copyfile(self.audio_checkpoint, root / "audio_encoder" / WHISPER_FILE)
                else:
                    raise WeightsError("these Whisper features have no checkpoint to save")
            else:
                self.audio_encoder.save_pretrained(root / "audio_encoder")
                self.feature_extractor.save_pretrained(root / "audio_encoder")
            if self.face_locator is not None:
                self.face_locator.save_pretrained(root / "face_locator")
        save_scheduler_config(self.scheduler_config, root / "scheduler")
        index = {"avatar_cli_version": __version__,
                 **{name: type(net).__name__ for name, net in self.networks().items()},
                 "settings": asdict(self.settings)}
        (root / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    # ---------------------------------------------------------------- helpers
    def networks(self) -> dict[str, torch.nn.Module]:
        """Name -> network, in data-flow order (absent optional ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.nn.Module)}


    def eval(self) -> "AvatarModels":
        for net in self.networks().values():
            net.eval().requires_grad_(False)
        return self

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "AvatarModels":
        """Move every network (in place) to a device and/or floating dtype."""
        from diffusers.utils import logging as diffusers_logging

        previous = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []" is noise here
        try:
            for net in self.networks().values():
                net.to(device=device, dtype=dtype)
        finally:
            diffusers_logging.set_verbosity(previous)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Name -> number of parameters (buffers excluded)."""
        return {name: sum(p.numel() for p in net.parameters()) for name, net in self.networks().items()}


def save_scheduler_config(config: dict, folder: Path) -> None:
    """Write a noise-schedule config as ``scheduler_config.json`` (any diffusers scheduler reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler", **config}, indent=2))
