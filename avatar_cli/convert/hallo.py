"""Hallo's ``net.pth`` (+ its sd-vae-ft-mse and wav2vec2 folders) -> the Hallo family's folder."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import InputError, WeightsError
from .keys import ConversionReport, _fill_meta, convert_motion_module, load_checkpoint

_HALLO_PARTS = {"reference_unet.": "reference_net", "denoising_unet.": "denoising_unet",
                "face_locator.": "face_locator", "imageproj.": "image_projector", "audioproj.": "audio_projector"}
_HALLO_AUDIO = {".attn2_0.": ".audio_attn.full.", ".attn2_1.": ".audio_attn.face.", ".attn2_2.": ".audio_attn.lip.",
                ".zero_conv_full.": ".zero_conv.full.", ".zero_conv_face.": ".zero_conv.face.",
                ".zero_conv_lip.": ".zero_conv.lip."}


def map_hallo_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Hallo ``net.pth`` keys -> our component -> state dict (names only; shapes unchanged).

    - ``reference_unet``, ``face_locator``, ``imageproj``, ``audioproj``: same names.
    - ``denoising_unet``: SD1.5 names for the 2D part; AnimateDiff motion modules through
      :func:`convert_motion_module`; audio modules renamed (``attn2_0/1/2`` -> ``audio_attn.full/
      face/lip``, ``zero_conv_*`` -> ``zero_conv.*``).

    Raises:
        WeightsError: a key with no known prefix.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in _HALLO_PARTS.values()}
    stray = [k for k in state if not k.startswith(tuple(_HALLO_PARTS))]
    if stray:
        raise WeightsError(f"{len(stray)} key(s) of no Hallo component, e.g. {stray[0]}: not a Hallo net.pth")
    motion = {}
    for key, value in state.items():
        prefix = next(p for p in _HALLO_PARTS if key.startswith(p))
        name, rest = _HALLO_PARTS[prefix], key[len(prefix):]
        if name == "denoising_unet" and ".motion_modules." in rest:
            motion[rest] = value
            continue
        if name == "denoising_unet" and ".audio_modules." in rest:
            for old, new in _HALLO_AUDIO.items():
                rest = rest.replace(old, new)
        parts[name][rest] = value
    parts["denoising_unet"].update(convert_motion_module(motion))
    return parts


def convert_hallo(net: str | Path, output: str | Path, vae: str | Path, wav2vec2: str | Path,
                  arch: str = "full", overwrite: bool = False, config: "str | Path | dict | None" = None
                  ) -> ConversionReport:
    """Convert Hallo's released files into the project's layout (Hallo family of our models).

    Args:
        net: ``hallo/net.pth`` (or a safetensors file with the same keys).
        output: folder to write (temporary name, renamed when complete).
        vae: Hallo's ``sd-vae-ft-mse`` folder (diffusers layout).
        wav2vec2: Hallo's ``wav2vec/wav2vec2-base-960h`` folder (transformers layout).
        arch: preset sizes ("full" for the real file).
        config: the sizes of a checkpoint of another width (``models/configs.py``: a JSON file or a dict,
            complete or ``{"base": ..., "<network>": {...}}``; without ``"base"`` it starts from ``arch``).

    Raises:
        InputError: unreadable inputs, existing output.
        WeightsError: a missing or unexpected key, or a shape that differs.
    """
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from ..models.bundle import AvatarModels
    from ..models.presets import resolve

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    for folder, what in ((vae, "VAE"), (wav2vec2, "wav2vec2")):
        if not Path(folder).is_dir():
            raise InputError(f"{what} folder {folder} does not exist; give Hallo's {what} folder")
    state = load_checkpoint(net)
    # Built on the meta device and filled by assignment: every parameter comes from the file, so
    # nothing is initialised (fast, and no second copy of 2.4 B parameters in memory).
    models = AvatarModels.from_config(resolve(config if config is not None else arch, "hallo", base=arch),
                                      device="meta")
    ignored = {"second position table per motion module (equal to the first)": sum(
        k.endswith("attention_blocks.1.pos_encoder.pe") for k in state)}
    reports = _fill_meta(models, map_hallo_state(state))
    try:
        models.vae = AutoencoderKL.from_pretrained(vae)
        models.audio_encoder = Wav2Vec2Model.from_pretrained(wav2vec2)
        models.feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(wav2vec2)
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot load Hallo's VAE or wav2vec2 folder: {str(err).splitlines()[0]}") from None
    models.source = str(net)
    models.eval()
    with atomic_folder(output) as tmp:
        models.save_pretrained(tmp)
    return ConversionReport(str(output), reports, ignored)
