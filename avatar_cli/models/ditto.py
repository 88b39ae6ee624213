"""Ditto's six networks as one bundle: built at the released sizes (random or loaded) or a tiny preset.

Files (HF ``digital-avatar/ditto-talkinghead``, folder ``ditto_pytorch/models/``), each loaded by its
upstream layout with ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``:

=====================  ============================  ===============================================
attribute              file                          layout
=====================  ============================  ===============================================
``appearance``         appearance_extractor.pth      plain state dict
``motion``             motion_extractor.pth          plain state dict
``warp``               warp_network.pth              plain state dict
``decoder``            decoder.pth                   plain state dict (spectral-norm u/v/orig)
``stitch``             stitch_network.pth            ``{"retarget_shoulder": sd, ...}``, keys may
                                                     carry ``module.`` (DDP); other entries ignored
``dit``                lmdm_v0.4_hubert.pth          ``{"model_state_dict": sd}``
=====================  ============================  ===============================================
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, WeightsError
from .configs import merge_config, resolve_config
from .liveportrait import (AppearanceFeatureExtractor, MotionExtractor, SPADEDecoder, StitchingNetwork,
                           WarpingNetwork)
from .motion_dit import MotionDecoder

CLASSES: dict[str, type[nn.Module]] = {
    "appearance": AppearanceFeatureExtractor, "motion": MotionExtractor, "warp": WarpingNetwork,
    "decoder": SPADEDecoder, "stitch": StitchingNetwork, "dit": MotionDecoder,
}
FILES = {
    "appearance": "appearance_extractor.pth", "motion": "motion_extractor.pth", "warp": "warp_network.pth",
    "decoder": "decoder.pth", "stitch": "stitch_network.pth", "dit": "lmdm_v0.4_hubert.pth",
}
# Entry of the file's top-level dict that holds the state dict (None: the file is the state dict).
ENTRIES = {"stitch": "retarget_shoulder", "dit": "model_state_dict"}
WHAT = {"appearance": "appearance extractor", "motion": "motion extractor", "warp": "warping network",
        "decoder": "SPADE decoder", "stitch": "stitching network", "dit": "motion DiT (LMDM)"}

PRESETS: dict[str, dict[str, dict]] = {
    # The released configs (Ditto core/models/modules/*, LMDM.py; DITTO.md sec. 3).
    "full": {
        "appearance": dict(image_channel=3, block_expansion=64, num_down_blocks=2, max_features=512,
                           reshape_channel=32, reshape_depth=16, num_resblocks=6),
        "motion": dict(num_kp=21, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_bins=66),
        "warp": dict(num_kp=21, block_expansion=64, max_features=512, num_down_blocks=2, reshape_channel=32,
                     reshape_depth=16, dense_block_expansion=32, dense_max_features=1024, dense_num_blocks=5,
                     compress=4),
        "decoder": dict(upscale=2, max_features=512, block_expansion=64, out_channels=64, num_down_blocks=2,
                        spade_hidden=128),
        "stitch": dict(input_size=126, hidden_sizes=(128, 128, 64), output_size=65),
        "dit": dict(nfeats=265, seq_len=80, latent_dim=512, ff_size=1024, num_layers=8, num_heads=8,
                    dropout=0.1, cond_feature_dim=1103),
    },
}
# Same interfaces (256x256 crop in, 512x512 frame out, 21 keypoints, 66 bins, 80x265 motion from
# 1103-wide conditions) at small widths: for tests and demos on a CPU. The stitching network keeps its sizes.
PRESETS["tiny"] = merge_config(PRESETS["full"], {
    "appearance": dict(block_expansion=8, max_features=16, reshape_channel=8, reshape_depth=2, num_resblocks=1),
    "motion": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    "warp": dict(block_expansion=4, max_features=16, reshape_channel=8, reshape_depth=2, dense_block_expansion=4,
                 dense_max_features=8, dense_num_blocks=3, compress=1),
    "decoder": dict(max_features=16, block_expansion=4, out_channels=4, spade_hidden=8),
    "dit": dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4),
})


def ditto_config(spec: "str | Path | dict" = "full", base: str | None = None) -> dict[str, dict]:
    """The complete per-network config that ``spec`` names: a preset name (a deep copy of
    :data:`PRESETS`), a JSON config file or a dict (``models/configs.py``: ``{"base": "tiny", "dit":
    {"latent_dim": 48}}``; without ``"base"`` it starts from ``base``'s preset, and with neither it
    must be complete). Lists are turned into the tuples the presets use.

    Raises:
        InputError: an unknown preset name, an unreadable file, a network name not in :data:`CLASSES`.
    """
    def named(name: str) -> dict:
        if name not in PRESETS:
            raise KeyError(f"unknown Ditto preset {name!r}; choose one of {', '.join(PRESETS)}")
        return copy.deepcopy(PRESETS[name])

    cfg = resolve_config(spec, named, tuple(CLASSES), default_base=base, what="Ditto config")
    return {name: {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()} for name, args in cfg.items()}


class DittoModels(nn.Module):
    """The six networks (eval mode): ``appearance``, ``motion``, ``warp``, ``decoder``, ``stitch``, ``dit``.

    ``config`` holds each network's constructor arguments. ``.to(device, dtype)`` is ``nn.Module.to``.
    """

    def __init__(self, config: dict[str, dict]):
        super().__init__()
        self.config = copy.deepcopy(config)
        for name, cls in CLASSES.items():
            self.add_module(name, cls(**self.config[name]))
        self.eval()

    appearance: AppearanceFeatureExtractor
    motion: MotionExtractor
    warp: WarpingNetwork
    decoder: SPADEDecoder
    stitch: StitchingNetwork
    dit: MotionDecoder

    @classmethod
    def from_preset(cls, name: "str | Path | dict" = "full", seed: int = 0) -> DittoModels:
        """Random weights (torch's default initialisation, seeded; the global RNG is left as it was).

        ``name``: a preset name, or a config of any width (a JSON file or a dict; :func:`ditto_config`).

        Raises:
            ValueError: unknown preset name.
            InputError: an unreadable config file, or a config the networks do not build from.
        """
        if isinstance(name, str) and not name.endswith(".json") and name not in PRESETS:
            raise ValueError(f"unknown Ditto preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_config(ditto_config(name), seed=seed)

    @classmethod
    def from_config(cls, config: dict[str, dict], seed: int = 0, device: str | torch.device = "cpu") -> DittoModels:
        """Random weights for a complete config (network -> constructor arguments), seeded; ``device="meta"``
        builds shapes only.

        Raises:
            InputError: a network's constructor refuses its arguments (one line naming the network).
        """
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            try:
                return cls(config)
            except (TypeError, ValueError, KeyError, RuntimeError) as err:
                raise InputError(f"the Ditto config does not build: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}") from None

    @classmethod
    def from_files(cls, directory: str | Path, preset: "str | Path | dict" = "full") -> DittoModels:
        """Load the six released ``.pth`` files from ``directory`` (see the module docstring) into networks
        of ``preset``'s sizes (a preset name, or a config of any width: :func:`ditto_config`).

        Modules are built on the meta device and take the file's tensors (no double allocation).

        Raises:
            WeightsError: a file is missing or unreadable, lacks its entry, or has a missing key, an
                extra key or a tensor of the wrong shape (one line naming the file and the key).
            InputError: an unknown preset name or an unusable config.
        """
        directory = Path(directory)
        models = cls.from_config(ditto_config(preset), device="meta")
        for name, filename in FILES.items():
            state = _read_state_dict(directory / filename, ENTRIES.get(name))
            _load_strict(getattr(models, name), state, directory / filename, WHAT[name])
        return models.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> DittoModels:
        """The networks of a folder ``avatar weights convert --from ditto`` wrote (``models/*.pth``), at the
        sizes its ``avatar_index.json`` records: ``"config"`` (any width), else ``"preset"`` (folders of
        earlier versions), else the released ``full``.

        Raises:
            WeightsError: as :meth:`from_files`, or an unreadable index.
        """
        folder = Path(folder)
        return cls.from_files(folder / "models", index_config(folder))

    def parameter_counts(self) -> dict[str, int]:
        """Network name -> number of parameters (buffers excluded), e.g. ``{"appearance": 836224, ...}``."""
        return {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in CLASSES}


def index_config(folder: str | Path) -> "str | dict":
    """The sizes a converted Ditto folder's ``avatar_index.json`` records: its ``"config"`` (complete, any
    width), else its ``"preset"`` name (folders written before configs), else ``"full"``.

    Raises:
        WeightsError: the index is not readable JSON.
    """
    import json

    index = Path(folder) / "avatar_index.json"
    if not index.is_file():
        return "full"
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{index}: not readable JSON ({str(err).splitlines()[0]})") from None
    return data.get("config") or data.get("preset", "full")


def _read_state_dict(path: Path, entry: str | None) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``entry`` of its top-level dict if given), ``module.`` prefixes removed."""
    if not path.is_file():
        raise WeightsError(f"{path} not found: Ditto's PyTorch weights are the ditto_pytorch/models/ folder "
                           "of HF digital-avatar/ditto-talkinghead")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusal, truncated zip, not a torch file...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({first})") from exc
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            raise WeightsError(f"{path}: no '{entry}' entry (not Ditto's {path.name})")
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    # DDP checkpoints prefix every key with 'module.' (Ditto's remove_ddp_dumplicate_key drops them all).
    return {k.replace("module.", ""): v for k, v in obj.items()}


def check_layout(expected: dict[str, torch.Tensor], state: dict, path: Path, what: str, shape_hint: str = "") -> None:
    """Raise a one-line :class:`WeightsError` naming ``path`` and the first missing key, unexpected
    key or wrong shape of ``state`` against ``expected`` (a module's ``state_dict()``, meta tensors
    are fine). Used by loading and by ``avatar weights convert --from ditto``."""
    hint = f"expected the layout of Ditto's {what}"
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{path}: missing key '{missing[0]}'{more}; {hint}")
    extra = [k for k in state if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(f"{path}: unexpected key '{extra[0]}'{more}; {hint}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise WeightsError(f"{path}: key '{key}' has shape {tuple(state[key].shape)}, expected "
                               f"{tuple(ref.shape)}; {hint}{shape_hint}")


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Check keys and shapes against ``module`` (:func:`check_layout`), then load with strict=True."""
    expected = module.state_dict()
    check_layout(expected, state, path, what)
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
