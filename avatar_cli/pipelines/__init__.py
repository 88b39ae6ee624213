"""Model families, each a :class:`Pipeline` (``base.py``), and :func:`load_pipeline`, the one way
``render``, ``batch``, ``bench`` and ``audio encode`` get one.

| family | module | models (``--model``) | paper ideas |
|---|---|---|---|
| unet | ``unet.py`` | osa-lcm, fada, teacher, hallo, echomimic, echomimic-acc | EMO/Hallo dual U-Net; OSA-LCM, FADA sampling; EchoMimic |
| ditto | ``ditto.py`` | ditto | Ditto: motion-space DiT + LivePortrait warp and decoder |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, WeightsError
from ..models.catalog import MODELS
from .base import Pipeline, RenderStats

__all__ = ["Pipeline", "RenderStats", "pipeline_class", "load_pipeline", "choose_model", "download_default"]


def pipeline_class(family: str) -> type[Pipeline]:
    """The :class:`Pipeline` subclass of a family name ("unet", "ditto")."""
    if family == "unet":
        from .unet import UNetPipeline

        return UNetPipeline
    if family == "ditto":
        from .ditto import DittoPipeline

        return DittoPipeline
    raise InputError(f"unknown model family {family!r}")


def _installed(model: str) -> Path | None:
    """The folder ``--model`` would render from without ``--weights``, or None."""
    from ..weights import converted_folder, downloaded_folder

    spec = MODELS[model]
    return converted_folder(model) or (downloaded_folder(spec) if spec.reads_download else None)


def _family_of_folder(weights: Path) -> str:
    """The model a weights folder holds, from its ``avatar_index.json``: ditto, hallo, echomimic(-acc),
    fada or osa-lcm."""
    import json

    index = Path(weights) / "avatar_index.json"
    if not index.is_file():
        return "ditto" if (Path(weights) / "ditto_pytorch").is_dir() else "osa-lcm"
    data = json.loads(index.read_text())
    if data.get("family") == "ditto":
        return "ditto"
    settings = data.get("settings", {})
    if settings.get("default_method") == "hallo":
        return "hallo"
    if settings.get("default_method") in ("echomimic", "echomimic-acc"):  # the converted EchoMimic weights
        return settings["default_method"]
    unet = Path(weights) / "denoising_unet" / "config.json"
    if unet.is_file() and json.loads(unet.read_text()).get("cfg_tokens"):
        return "fada"
    return "osa-lcm"


def choose_model(weights: str | Path | None = None, random_weights: bool = False, download: bool = True,
                 note: Callable[[str], None] = lambda message: None) -> str:
    """What ``--model auto`` (the default) renders with, and a note saying why.

    With ``--weights DIR``: the model that folder holds. With random weights: osa-lcm (the
    architecture the project is built around). Otherwise the first installed of ``AUTO_ORDER``
    (a distilled OSA-LCM student, a FADA student, Ditto, EchoMimic-acc, Hallo, EchoMimic); with none
    installed, the default public model (Ditto), which the caller downloads with :func:`download_default` after checking
    its inputs, unless ``download`` is False or the hub is offline.

    Raises:
        InputError: nothing installed and no download allowed or possible (one line naming the
            command to run and the size).
    """
    from ..models.catalog import AUTO_ORDER, DEFAULT_DOWNLOAD
    from ..weights import _offline, load_manifest

    if weights is not None:  # the folder says which model it holds: nothing to announce
        return _family_of_folder(Path(weights))
    if random_weights:
        return "osa-lcm"
    for model in AUTO_ORDER:
        if _installed(model) is not None:
            note(f"note: --model auto: {model} (the first installed of {', '.join(AUTO_ORDER)})")
            return model
    component = load_manifest()[MODELS[DEFAULT_DOWNLOAD].components[0]]
    size = f"{component.size / 1e9:.1f} GB" if component.size else "size unknown"
    command = f"avatar weights download {component.name}"
    if not download or _offline():  # one line, one remedy (docs/usage.md lists --weights / --random-weights)
        why = "--no-download was given" if not download else "HF_HUB_OFFLINE is set"
        raise InputError(f"no model is installed and {why}; run '{command}' ({size}) where the hub can be reached")
    return DEFAULT_DOWNLOAD


def download_default(note: Callable[[str], None] = lambda message: None, quiet: bool = False) -> None:
    """Download the default public model (``DEFAULT_DOWNLOAD``) into the Hugging Face cache, its size
    announced first, with a progress bar unless ``quiet``; what ``--model auto`` does on first use.

    Raises:
        InputError: the download failed (one line naming the command to run and the size).
    """
    from ..models.catalog import DEFAULT_DOWNLOAD
    from ..weights import download as fetch, load_manifest

    component = load_manifest()[MODELS[DEFAULT_DOWNLOAD].components[0]]
    size = f"{component.size / 1e9:.1f} GB" if component.size else "size unknown"
    command = f"avatar weights download {component.name}"
    if not quiet:
        note(f"note: no model is installed; downloading {DEFAULT_DOWNLOAD} ({size}) once, as '{command}' does")
    try:
        fetch(component, quiet=quiet, log=note)
    except WeightsError as err:
        raise InputError(f"no model is installed and the download failed ({err}); run '{command}' ({size}) "
                         f"where the hub can be reached") from None


def load_pipeline(model: str = "osa-lcm", weights: str | Path | None = None, random_weights: bool = False,
                  arch: str = "full", device="auto", dtype="auto", compile: bool | None = None,
                  add_cfg_layers: bool = False, method: str | None = None,
                  note: Callable[[str], None] = lambda message: None) -> Pipeline:
    """The pipeline for ``--model`` from ``--weights DIR``, ``--random-weights`` (``arch``), or the
    installed (converted) components.

    Args:
        model: a key of ``MODELS`` (``models/catalog.py``).
        method: the sampling method to be run (decides e.g. whether random weights get CFG-token
            layers); None = the model's own.
        add_cfg_layers: give weights without FADA's CFG-token layers zero-initialised ones.
        note: where one-line notes go (random weights, added layers).

    Raises:
        InputError: conflicting choices, or no weights installed for ``model`` (the message names
            the download or conversion to run).
        AvatarError: a package the model needs is not installed (``catalog.check_packages``).
    """
    from ..models.catalog import check_packages
    from ..sampling.methods import METHODS
    from ..weights import converted_folder, downloaded_folder, missing_for

    spec = MODELS[model]
    sampling = METHODS[method or spec.default_method]
    klass = pipeline_class(spec.family)
    if weights is not None and random_weights:
        raise InputError("--weights and --random-weights exclude each other; pick one")
    check_packages(model, random_weights)
    if random_weights:
        note(f"note: RANDOM weights ({arch} architecture): the video shows noise, not a face")
        cfg_tokens = 4 if spec.cfg_tokens or sampling.guidance == "cfg-tokens" else 0
        family = sampling.family if sampling.family in ("hallo", "echomimic") else spec.preset_family
        return klass.from_preset(arch, device=device, dtype=dtype, cfg_tokens=cfg_tokens, family=family,
                                 compile=compile)
    if weights is None:  # the installed components: a folder that 'avatar weights convert' wrote
        weights = converted_folder(model) or (downloaded_folder(spec) if spec.reads_download else None)
        if weights is None:
            raise InputError(f"--model {model} needs weights that are not installed: {'; '.join(missing_for(model))}. "
                             f"Or pass --weights DIR (a folder in the project's layout) or --random-weights")
    wants_layers = add_cfg_layers and sampling.guidance == "cfg-tokens"
    pipe = klass.from_pretrained(weights, device=device, dtype=dtype, compile=compile, add_cfg_layers=wants_layers)
    if wants_layers and getattr(pipe, "added_cfg_layers", False):
        note(f"note: added zero-initialised CFG-token layers: --method {sampling.name} runs without guidance")
    return pipe
