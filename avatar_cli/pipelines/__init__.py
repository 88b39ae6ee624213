"""Model families, each a :class:`Pipeline` (``base.py``), and :func:`load_pipeline`, the one way
``render``, ``batch``, ``bench`` and ``audio encode`` get one.

| family | module | models (``--model``) | paper ideas |
|---|---|---|---|
| unet | ``unet.py`` | osa-lcm, fada, teacher, hallo | EMO/Hallo dual U-Net; OSA-LCM, FADA sampling |
| ditto | ``ditto.py`` | ditto | Ditto: motion-space DiT + LivePortrait warp and decoder |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..models.catalog import MODELS
from .base import Pipeline, RenderStats

__all__ = ["Pipeline", "RenderStats", "pipeline_class", "load_pipeline"]


def pipeline_class(family: str) -> type[Pipeline]:
    """The :class:`Pipeline` subclass of a family name ("unet", "ditto")."""
    if family == "unet":
        from .unet import UNetPipeline

        return UNetPipeline
    if family == "ditto":
        from .ditto import DittoPipeline

        return DittoPipeline
    raise InputError(f"unknown model family {family!r}")


def load_pipeline(model: str = "osa-lcm", weights: str | Path | None = None, random_weights: bool = False,
                  arch: str = "full", device="auto", dtype="auto", compile: bool = False,
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
    """
    from ..sampling.methods import METHODS
    from ..weights import converted_folder, downloaded_folder, missing_for

    spec = MODELS[model]
    sampling = METHODS[method or spec.default_method]
    klass = pipeline_class(spec.family)
    if weights is not None and random_weights:
        raise InputError("--weights and --random-weights exclude each other; pick one")
    if random_weights:
        note(f"note: RANDOM weights ({arch} architecture): the video shows noise, not a face")
        cfg_tokens = 4 if spec.cfg_tokens or sampling.guidance == "cfg-tokens" else 0
        family = "hallo" if sampling.family == "hallo" else spec.preset_family
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
