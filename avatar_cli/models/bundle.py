"""All networks of the avatar model, built from a preset or loaded from a folder.

On-disk layout (what :meth:`AvatarModels.save_pretrained` writes and ``--weights DIR`` reads):
one sub-folder per component, each as its library's ``save_pretrained`` writes it::

    DIR/avatar_index.json              component -> class, and the avatar-cli version
    DIR/vae/                           diffusers AutoencoderKL (config.json + safetensors)
    DIR/reference_net/                 ReferenceNet (= SD1.5 UNet2DConditionModel)
    DIR/denoising_unet/                DenoisingUNet3D
    DIR/audio_encoder/                 transformers Wav2Vec2Model + preprocessor_config.json
    DIR/audio_projector/, image_projector/
    DIR/face_locator/                  FaceLocator (Hallo family only)
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
from .presets import SETTINGS, preset
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
    """

    null_reference: str = "zero-latent"
    first_clip_motion: str = "zeros"
    motion_source: str = "latents"
    audio_padding: str = "none"
    default_method: str = "osa-lcm"

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
        audio_encoder: transformers ``Wav2Vec2Model``.
        feature_extractor: its ``Wav2Vec2FeatureExtractor``.
        audio_projector: :class:`AudioProjector`.
        image_projector: :class:`ImageProjector`.
        scheduler_config: the training noise schedule (a diffusers scheduler config dict).
        face_locator: :class:`FaceLocator` or None (Hallo family only).
        settings: :class:`ModelSettings`.
        source: where the weights came from ("random:<arch>" or a folder path).
    """

    vae: AutoencoderKL
    reference_net: ReferenceNet
    denoising_unet: DenoisingUNet3D
    audio_encoder: Wav2Vec2Model
    feature_extractor: Wav2Vec2FeatureExtractor
    audio_projector: AudioProjector
    image_projector: ImageProjector
    scheduler_config: dict
    face_locator: FaceLocator | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    source: str = ""

    # ---------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, arch: str = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                    cfg_tokens: int = 0, family: str = "osa-lcm") -> "AvatarModels":
        """The preset's architecture with random weights (seeded, so reproducible).

        ``device="meta"`` builds shapes only (no memory), e.g. to count parameters.
        ``cfg_tokens`` > 0 gives the denoising U-Net FADA's CFG-token layers.
        ``family="hallo"``: Hallo's variant (face locator, 2 motion frames, its scheduler).
        """
        cfg = preset(arch, family)
        cfg["denoising_unet"]["cfg_tokens"] = cfg_tokens
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            models = cls(
                vae=AutoencoderKL(**cfg["vae"]),
                reference_net=ReferenceNet(**cfg["reference_net"]),
                denoising_unet=DenoisingUNet3D(**cfg["denoising_unet"]),
                audio_encoder=Wav2Vec2Model(Wav2Vec2Config(**cfg["audio_encoder"])),
                feature_extractor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                           do_normalize=True, return_attention_mask=False),
                audio_projector=AudioProjector(**cfg["audio_projector"]),
                image_projector=ImageProjector(**cfg["image_projector"]),
                scheduler_config=dict(cfg["scheduler"]),
                face_locator=FaceLocator(**cfg["face_locator"]) if "face_locator" in cfg else None,
                settings=ModelSettings(**cfg["settings"]),
                source=f"random:{arch}" + ("" if family == "osa-lcm" else f":{family}"),
            )
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
        missing = [name for name in (*_DIFFUSERS, "audio_encoder", "scheduler") if not (root / name).is_dir()]
        if missing:
            raise WeightsError(f"weights folder {root} lacks {', '.join(missing)}")
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        try:
            with quiet_libraries():
                parts = {name: klass.from_pretrained(root / name, **kwargs) for name, klass in _DIFFUSERS.items()}
                parts["audio_encoder"] = Wav2Vec2Model.from_pretrained(
                    root / "audio_encoder", **({"dtype": torch_dtype} if torch_dtype else {}))
                parts["feature_extractor"] = Wav2Vec2FeatureExtractor.from_pretrained(root / "audio_encoder")
                if (root / "face_locator").is_dir():
                    parts["face_locator"] = FaceLocator.from_pretrained(root / "face_locator", **kwargs)
            scheduler_config = {k: v for k, v in json.loads((root / "scheduler" / "scheduler_config.json").read_text())
                                .items() if not k.startswith("_")}
            index = json.loads((root / INDEX_FILE).read_text()) if (root / INDEX_FILE).is_file() else {}
            settings = ModelSettings(**index.get("settings", {}))
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
                getattr(self, name).save_pretrained(root / name)
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
