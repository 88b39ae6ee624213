"""EchoMimic's release (+ an sd-vae-ft-mse folder) -> the EchoMimic family's folder."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import InputError, WeightsError
from .keys import ComponentReport, ConversionReport, _fill_meta, convert_motion_module, load_checkpoint

#: Where the files sit in HF BadToBest/EchoMimic (configs/prompts/animation.yaml, animation_acc.yaml).
ECHOMIMIC_FILES = {"reference_net": "reference_unet.pth", "denoising_unet": "denoising_unet.pth",
                   "motion_modules": "motion_module.pth", "face_locator": "face_locator.pth",
                   "whisper": "audio_processor/whisper_tiny.pt"}
ECHOMIMIC_ACC_FILES = {**ECHOMIMIC_FILES, "denoising_unet": "denoising_unet_acc.pth",
                       "motion_modules": "motion_module_acc.pth"}
ECHOMIMIC_UNET_CONFIG = "sd-image-variations-diffusers/unet/config.json"


def map_echomimic_state(reference: dict[str, torch.Tensor], denoising: dict[str, torch.Tensor],
                        motion: dict[str, torch.Tensor], face_locator: dict[str, torch.Tensor]
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """EchoMimic's state dicts -> our component -> state dict (names only; shapes unchanged).

    - ``reference_unet.pth`` (its ``UNet2DConditionModel``, ``src/models/unet_2d_condition.py``: no
      ``conv_norm_out``/``conv_out``, transformer blocks without ``attn2``/``norm2``) -> the reference
      net with ``output_layers=False, cross_attention=False``: same names.
    - ``denoising_unet(_acc).pth`` (``EchoUNet3DConditionModel``, ``src/models/unet_3d_echo.py``: the SD
      tree with ``InflatedConv3d`` / ``InflatedGroupNorm``, which keep ``nn.Conv2d`` / ``nn.GroupNorm``
      names) -> the 2D part of the denoising U-Net unchanged; any ``motion_modules`` keys in it go
      with the motion file's.
    - ``motion_module(_acc).pth`` (AnimateDiff's ``VanillaTemporalModule`` layout,
      ``src/models/motion_module.py``) -> the temporal attention through :func:`convert_motion_module`.
      Upstream loads the denoising file after the motion file (``load_state_dict(strict=False)``), so
      a key in both takes the denoising file's value; so here.
    - ``face_locator.pth`` (``src/models/face_locator.py``: ``InflatedConv3d`` = ``nn.Conv2d``) -> the
      face locator, same names.

    Raises:
        WeightsError: a motion module's two attention blocks carry different position tables.
    """
    unet = {k: v for k, v in denoising.items() if ".motion_modules." not in k}
    temporal = {**motion, **{k: v for k, v in denoising.items() if ".motion_modules." in k}}
    unet.update(convert_motion_module(temporal))
    return {"reference_net": dict(reference), "denoising_unet": unet, "face_locator": dict(face_locator)}


def _check_unet_config(path: Path, config) -> None:
    """The SD image-variations U-Net config EchoMimic builds both U-Nets from must have our preset's
    layout. Raises WeightsError naming the first field that differs."""
    import json

    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    source = json.loads(path.read_text())
    for key in ("block_out_channels", "layers_per_block", "attention_head_dim", "down_block_types",
                "up_block_types", "norm_num_groups", "in_channels", "out_channels"):
        if key in source and plain(source[key]) != plain(getattr(config, key)):
            raise WeightsError(f"{path}: {key} is {source[key]}, the reference net here has "
                               f"{plain(getattr(config, key))} (is --arch or --config right?)")
    if source.get("use_linear_projection"):
        raise WeightsError(f"{path}: use_linear_projection is set; EchoMimic's U-Nets here use 1x1 convolutions")


def convert_echomimic(root: str | Path, output: str | Path, vae: str | Path, acc: bool = False,
                      arch: str = "full", overwrite: bool = False, config: "str | Path | dict | None" = None
                      ) -> ConversionReport:
    """Convert EchoMimic's released files into the project's layout (EchoMimic family of our models).

    Reads, under ``root`` (the HF BadToBest/EchoMimic repo layout): ``reference_unet.pth``,
    ``denoising_unet.pth`` and ``motion_module.pth`` (with ``acc``: ``denoising_unet_acc.pth`` and
    ``motion_module_acc.pth``), ``face_locator.pth``, ``audio_processor/whisper_tiny.pt`` and, when
    present, ``sd-image-variations-diffusers/unet/config.json`` (checked against the preset). Every
    ``.pth`` is read with ``torch.load(weights_only=True)``; every key must land (zero missing, zero
    unexpected). Writes, atomically, ``vae/`` (from ``vae``, a diffusers sd-vae-ft-mse folder),
    ``reference_net/``, ``denoising_unet/``, ``face_locator/``, ``audio_encoder/whisper_tiny.pt`` (the
    OpenAI Whisper checkpoint, copied as released), ``scheduler/`` (EchoMimic's
    ``configs/inference/inference_v2.yaml`` DDIM kwargs) and ``avatar_index.json`` (settings: the
    EchoMimic family, default method "echomimic" or "echomimic-acc"). ``arch`` names the preset sizes;
    ``config`` gives a checkpoint of another width (``models/configs.py``: a JSON file or a dict, complete
    or ``{"base": ..., "<network>": {...}}``; without ``"base"`` it starts from ``arch``).

    Raises:
        InputError: a file absent or unreadable, an existing output without ``overwrite``.
        WeightsError: a missing or unexpected key, a shape that differs, a Whisper checkpoint that is
            not OpenAI's layout or not as wide as the U-Net's audio context.
    """
    from diffusers import AutoencoderKL

    from ..models.bundle import AvatarModels, WHISPER_FILE
    from ..models.presets import resolve

    root, output = Path(root), Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    files = ECHOMIMIC_ACC_FILES if acc else ECHOMIMIC_FILES
    absent = [name for name in files.values() if not (root / name).is_file()]
    if absent:
        what = "echomimic-acc" if acc else "echomimic"
        raise InputError(f"{root} lacks {absent[0]}" + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
                         + f": give the folder of HF BadToBest/EchoMimic's files, or run 'avatar weights download {what}'")
    if not Path(vae).is_dir():
        raise InputError(f"VAE folder {vae} does not exist; give a diffusers sd-vae-ft-mse folder "
                         f"('avatar weights download sd-vae-ft-mse')")
    models = AvatarModels.from_config(resolve(config if config is not None else arch, "echomimic", base=arch),
                                      device="meta")
    if (root / ECHOMIMIC_UNET_CONFIG).is_file():
        _check_unet_config(root / ECHOMIMIC_UNET_CONFIG, models.reference_net.config)

    whisper = load_checkpoint(root / files["whisper"])
    dims = whisper.get("dims") if isinstance(whisper.get("dims"), dict) else None
    if dims is None or not isinstance(whisper.get("model_state_dict"), dict):
        raise WeightsError(f"{root / files['whisper']} is not an OpenAI Whisper checkpoint (dims + model_state_dict)")
    width = models.denoising_unet.config.cross_attention_dim
    if dims.get("n_audio_state") != width:
        raise WeightsError(f"{root / files['whisper']}: Whisper width {dims.get('n_audio_state')}, the U-Net's audio "
                           f"context {width} (is --arch or --config right?)")
    whisper_keys = len(whisper["model_state_dict"])
    del whisper

    states = {key: load_checkpoint(root / files[key]) for key in ("reference_net", "denoising_unet",
                                                                  "motion_modules", "face_locator")}
    ignored = {"second position table per motion module (equal to the first)": sum(
        k.endswith("attention_blocks.1.pos_encoder.pe") for k in {**states["motion_modules"], **states["denoising_unet"]})}
    reports = _fill_meta(models, map_echomimic_state(states["reference_net"], states["denoising_unet"],
                                                     states["motion_modules"], states["face_locator"]))
    try:
        models.vae = AutoencoderKL.from_pretrained(vae)
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot load the VAE folder {vae}: {str(err).splitlines()[0]}") from None
    models.settings.default_method = "echomimic-acc" if acc else "echomimic"
    models.audio_checkpoint = root / files["whisper"]
    models.source = str(root)
    models.eval()
    with atomic_folder(output) as tmp:
        models.save_pretrained(tmp)
    reports.append(ComponentReport(f"audio_encoder ({files['whisper']} -> audio_encoder/{WHISPER_FILE})",
                                   loaded=whisper_keys))
    return ConversionReport(str(output), reports, ignored, {"whisper_dims": dims})
