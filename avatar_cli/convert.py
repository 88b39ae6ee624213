"""Checkpoint conversion into the project's folder layout (``models/bundle.py``).

- Ditto's PyTorch release (HF ``digital-avatar/ditto-talkinghead``: the cfg pickle, six ``.pth`` files,
  five auxiliary ONNX/MediaPipe files) is checked key by key without loading its tensors and gathered
  into one folder (:func:`convert_ditto`); the ``.pth`` files keep their upstream layout, which
  ``DittoModels.from_files`` reads.
- Hallo's ``net.pth`` (one state dict: ``reference_unet.``, ``denoising_unet.``, ``face_locator.``,
  ``imageproj.``, ``audioproj.``) maps by name onto the Hallo family of our models
  (:func:`map_hallo_state`), with zero missing and zero unexpected keys.

- EchoMimic's release (HF ``BadToBest/EchoMimic``: ``reference_unet.pth``, ``denoising_unet(_acc).pth``,
  ``motion_module(_acc).pth``, ``face_locator.pth``, ``audio_processor/whisper_tiny.pt``) maps by name
  onto the EchoMimic family (:func:`map_echomimic_state`, :func:`convert_echomimic`), with zero missing
  and zero unexpected keys.

- An SD1.5 single-file checkpoint (``.safetensors`` / ``.ckpt``, original LDM key layout) becomes
  ``vae/`` (from ``first_stage_model.*``), ``reference_net/`` and the 2D part of
  ``denoising_unet/`` (from ``model.diffusion_model.*``), with diffusers' own converters
  (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``).
- An AnimateDiff motion-module file (``mm_sd_v15_v2.ckpt`` layout) fills the denoising U-Net's
  temporal attention, through diffusers' ``convert_animatediff_checkpoint_to_diffusers``.

Every key of the input must land somewhere: unexpected keys fail the conversion; keys known to
be unused (SD's text encoder, its schedule buffers, EMA copies, AnimateDiff's sinusoidal tables,
which our modules compute) are counted and reported; parameters the inputs do not provide (the
audio blocks) keep their initialisation and are reported as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_folder
from .errors import InputError, WeightsError

# Top-level keys of SD1.5's single file that are not network weights we use.
_SD_IGNORED_PREFIXES = ("cond_stage_model.", "conditioner.", "model_ema.")
_SD_SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
                        "model_ema.num_updates"}


@dataclass
class ComponentReport:
    """Keys of one converted component: loaded, missing (kept initialised), unexpected (fatal)."""

    name: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        groups: dict[str, int] = {}
        for key in self.missing:
            group = next((g for g in (".audio_modules.", ".motion_modules.", ".cfg_modules.", "cfg_embedding")
                          if g in key), "other")
            groups[group.strip(".")] = groups.get(group.strip("."), 0) + 1
        return {"name": self.name, "loaded": self.loaded, "missing": len(self.missing), "missing_groups": groups,
                "unexpected": self.unexpected[:20]}


@dataclass
class ConversionReport:
    """What a conversion wrote: ``output``, keys per component, counts of input keys deliberately
    left out (``ignored``), and ``notes`` (other facts: files linked or copied, the cfg's arrays)."""

    output: str
    components: list[ComponentReport]
    ignored: dict[str, int]
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"output": self.output, "components": [c.summary() for c in self.components], "ignored": self.ignored}
        if self.notes:
            out["notes"] = self.notes
        return out


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch ``.ckpt``/``.pth``/``.pt`` (weights only, ``state_dict``
    unwrapped). Raises InputError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoder error means "not a checkpoint we can read"
        raise InputError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} holds no state dict")
    return state


def convert_motion_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AnimateDiff's original motion-module keys -> our (diffusers') temporal-attention keys.

    diffusers' ``convert_animatediff_checkpoint_to_diffusers`` renames the weights and drops the
    position tables (``pos_encoder.pe``), which diffusers recomputes. A file may carry its own
    tables (Hallo's does); AnimateDiff keeps one per attention block, diffusers one per transformer
    block, so the first block's table is kept and the second must equal it.

    Raises:
        WeightsError: the two attention blocks of a module carry different position tables.
    """
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    converted = convert_animatediff_checkpoint_to_diffusers(state)
    for key, value in state.items():
        if key.endswith("attention_blocks.0.pos_encoder.pe"):
            twin = state.get(key.replace("attention_blocks.0", "attention_blocks.1"))
            if twin is not None and not twin.is_meta and not torch.equal(twin, value):
                raise WeightsError(f"{key}: the two attention blocks carry different position tables")
            converted[key.replace(".temporal_transformer", "").replace("attention_blocks.0.pos_encoder.pe",
                                                                         "pos_embed.pe")] = value
    return converted


def _unconsumed(keys: list[str], state: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> list[str]:
    """Input keys a diffusers converter left out (it skips names it does not know, silently):
    the converted tensors are the inputs or views of them, so compare their storages."""
    used = {t.untyped_storage().data_ptr() for t in converted.values() if t.numel()}
    return [k for k in keys if state[k].numel() and state[k].untyped_storage().data_ptr() not in used]


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, assign: bool = False) -> ComponentReport:
    result = module.load_state_dict(state, strict=False, assign=assign)
    report = ComponentReport(name, loaded=len(state) - len(result.unexpected_keys),
                             missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))
    if report.unexpected:
        raise WeightsError(f"{name}: {len(report.unexpected)} unexpected key(s), e.g. {report.unexpected[0]}; "
                           f"the checkpoint does not match the {name} architecture")
    return report


def convert_sd15(checkpoint: str | Path, output: str | Path, motion_module: str | Path | None = None,
                 arch: str = "full", overwrite: bool = False) -> ConversionReport:
    """Convert an SD1.5 single file (and optionally an AnimateDiff motion module) to our layout.

    Writes ``output/{vae,reference_net,denoising_unet,scheduler}`` (``save_pretrained`` format) into a
    temporary folder renamed when complete.

    Raises:
        InputError: unreadable inputs, existing output without ``overwrite``.
        WeightsError: a key that fits nowhere, or a required part (U-Net, VAE) absent.
    """
    from diffusers import AutoencoderKL

    from .models.bundle import save_scheduler_config
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from .models.denoising_unet import DenoisingUNet3D
    from .models.presets import preset
    from .models.reference_net import ReferenceNet

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    state = load_checkpoint(checkpoint)
    cfg = preset(arch)
    unet_keys = [k for k in state if k.startswith("model.diffusion_model.")]
    vae_keys = [k for k in state if k.startswith("first_stage_model.")]
    if not unet_keys or not vae_keys:
        raise WeightsError(f"{checkpoint} is not an SD1.5 single-file checkpoint: it lacks "
                           f"{'model.diffusion_model.*' if not unet_keys else 'first_stage_model.*'} keys")
    ignored = {"text encoder": sum(k.startswith(_SD_IGNORED_PREFIXES[:2]) for k in state),
               "ema": sum(k.startswith("model_ema.") for k in state),
               "schedule buffers": sum(k in _SD_SCHEDULE_BUFFERS for k in state)}
    stray = [k for k in state if k not in _SD_SCHEDULE_BUFFERS and not k.startswith(_SD_IGNORED_PREFIXES)
             and k not in unet_keys and k not in vae_keys]
    if stray:
        raise WeightsError(f"{len(stray)} unexpected key(s) in {checkpoint}, e.g. {stray[0]}")

    reference_net = ReferenceNet(**cfg["reference_net"])
    unet2d = convert_ldm_unet_checkpoint(state, dict(reference_net.config))
    vae = AutoencoderKL(**cfg["vae"])
    vae_state = convert_ldm_vae_checkpoint(state, dict(vae.config))
    left = _unconsumed(unet_keys, state, unet2d) + _unconsumed(vae_keys, state, vae_state)
    if left:
        raise WeightsError(f"{len(left)} unexpected key(s) in {checkpoint}, e.g. {left[0]}: they fit no model here")
    reports = [_load(reference_net, unet2d, "reference_net")]
    if reports[0].missing:
        raise WeightsError(f"reference_net: {len(reports[0].missing)} missing key(s), e.g. {reports[0].missing[0]}")

    denoising_unet = DenoisingUNet3D(**cfg["denoising_unet"])
    report = _load(denoising_unet, unet2d, "denoising_unet")
    if motion_module is not None:
        motion_state = load_checkpoint(motion_module)
        motion = convert_motion_module(motion_state)
        ignored["second position table per motion module (equal to the first)"] = \
            sum(k.endswith("attention_blocks.1.pos_encoder.pe") for k in motion_state)
        motion_report = _load(denoising_unet, motion, "denoising_unet (motion modules)")
        report.loaded += motion_report.loaded
        report.missing = [k for k in report.missing if k in set(motion_report.missing)]
    # sinusoidal position tables the motion file did not carry are computed at construction
    report.missing = [k for k in report.missing if not k.endswith("pos_embed.pe")]
    reports.append(report)

    expected = vae.state_dict()
    vae_state = {k: v.reshape(expected[k].shape) if k in expected else v for k, v in vae_state.items()}
    reports.append(_load(vae, vae_state, "vae"))

    with atomic_folder(output) as tmp:
        reference_net.save_pretrained(tmp / "reference_net")
        denoising_unet.save_pretrained(tmp / "denoising_unet")
        vae.save_pretrained(tmp / "vae")
        save_scheduler_config(cfg["scheduler"], tmp / "scheduler")
    return ConversionReport(str(output), reports, ignored)


# ------------------------------------------------------------------------------------------- Hallo
_HALLO_PARTS = {"reference_unet.": "reference_net", "denoising_unet.": "denoising_unet",
                "face_locator.": "face_locator", "imageproj.": "image_projector", "audioproj.": "audio_projector"}
_HALLO_AUDIO = {".attn2_0.": ".audio_attn.full.", ".attn2_1.": ".audio_attn.face.", ".attn2_2.": ".audio_attn.lip.",
                ".zero_conv_full.": ".zero_conv.full.", ".zero_conv_face.": ".zero_conv.face.",
                ".zero_conv_lip.": ".zero_conv.lip."}


def _fill_meta(models, parts: dict[str, dict[str, torch.Tensor]]) -> list[ComponentReport]:
    """Load each network's state (``parts``: network name -> state dict) into ``models`` built on the
    meta device, by assignment; every parameter must come from the file.

    Raises:
        WeightsError: a shape that differs, or a missing key (one line naming the first)."""
    reports = []
    for name, part in parts.items():
        module = getattr(models, name)
        try:
            report = _load(module, part, name, assign=True)
        except RuntimeError as err:  # a shape that differs
            lines = str(err).splitlines()
            raise WeightsError(f"{name}: {(lines[1] if len(lines) > 1 else lines[0]).strip()} "
                               f"(is --arch right?)") from None
        left = [k for k, v in module.state_dict().items() if v.is_meta]
        if report.missing or left:
            raise WeightsError(f"{name}: {len(report.missing or left)} missing key(s), e.g. {(report.missing or left)[0]}")
        reports.append(report)
    return reports


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
                  arch: str = "full", overwrite: bool = False) -> ConversionReport:
    """Convert Hallo's released files into the project's layout (Hallo family of our models).

    Args:
        net: ``hallo/net.pth`` (or a safetensors file with the same keys).
        output: folder to write (temporary name, renamed when complete).
        vae: Hallo's ``sd-vae-ft-mse`` folder (diffusers layout).
        wav2vec2: Hallo's ``wav2vec/wav2vec2-base-960h`` folder (transformers layout).
        arch: preset sizes ("full" for the real file).

    Raises:
        InputError: unreadable inputs, existing output.
        WeightsError: a missing or unexpected key, or a shape that differs.
    """
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from .models.bundle import AvatarModels

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    for folder, what in ((vae, "VAE"), (wav2vec2, "wav2vec2")):
        if not Path(folder).is_dir():
            raise InputError(f"{what} folder {folder} does not exist; give Hallo's {what} folder")
    state = load_checkpoint(net)
    # Built on the meta device and filled by assignment: every parameter comes from the file, so
    # nothing is initialised (fast, and no second copy of 2.4 B parameters in memory).
    models = AvatarModels.from_preset(arch, family="hallo", device="meta")
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


# ------------------------------------------------------------------------------------------- Ditto
#: Where the files sit in HF digital-avatar/ditto-talkinghead (DITTO notes sec. 2).
DITTO_CFG = "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"
DITTO_MODELS = "ditto_pytorch/models"
DITTO_AUX = "ditto_pytorch/aux_models"
DITTO_AUX_FILES = ("hubert_streaming_fix_kv.onnx", "det_10g.onnx", "2d106det.onnx", "landmark203.onnx",
                   "face_landmarker.task")


def _read_ditto_state(path: Path, entry: str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict, other top-level entries) of one Ditto ``.pth``, memory-mapped: the tensors' bytes
    are not read (``torch.load(mmap=True, weights_only=True)``; a legacy, non-zip file is read whole).
    ``module.`` prefixes (DDP) are removed, as Ditto's loader does.

    Raises:
        WeightsError: unreadable, not weights-only, no ``entry``, or not a dict of tensors (one line).
    """
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = load(True)
        except RuntimeError as err:  # "mmap can only be used with files saved with the zipfile format"
            if "mmap" not in str(err):
                raise
            obj = load(False)
    except Exception as err:  # noqa: BLE001 - weights_only refusal, truncated zip, not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({first[:200]})") from None
    others: list[str] = []
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            raise WeightsError(f"{path}: no '{entry}' entry (not Ditto's {path.name})")
        others = [str(k) for k in obj if k != entry]
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k.replace("module.", ""): v for k, v in obj.items()}, others


def check_ditto_models(directory: str | Path, preset: str = "full") -> tuple[list[ComponentReport], dict[str, int]]:
    """Check the six ``.pth`` files of ``ditto_pytorch/models/`` against :class:`DittoModels` (built on
    the meta device at ``preset``): every key present, none extra, every shape equal, as
    ``DittoModels.from_files`` (``load_state_dict(strict=True)``) will require; without reading the
    tensors (memory-mapped), so ~0.7 GB of weights cost no RAM.

    Returns:
        (one report per network, named ``appearance (appearance_extractor.pth)`` etc.; the top-level
        entries of the stitch file Ditto does not use, counted under ``ignored``).

    Raises:
        WeightsError: a file missing or unreadable, or a missing / extra key or a wrong shape (one line
            naming the file and the first key).
    """
    from .models.ditto import ENTRIES, FILES, PRESETS, WHAT, DittoModels, check_layout

    directory = Path(directory)
    if preset not in PRESETS:
        raise InputError(f"unknown Ditto preset {preset!r}; choose one of {', '.join(PRESETS)}")
    with torch.device("meta"):
        models = DittoModels(PRESETS[preset])
    reports, ignored = [], {}
    for name, filename in FILES.items():
        path = directory / filename
        if not path.is_file():
            raise WeightsError(f"{path} not found: Ditto's PyTorch weights are the ditto_pytorch/models/ folder of "
                               f"HF digital-avatar/ditto-talkinghead")
        state, others = _read_ditto_state(path, ENTRIES.get(name))
        check_layout(getattr(models, name).state_dict(), state, path, WHAT[name], " (is --arch right?)")
        reports.append(ComponentReport(f"{name} ({filename})", loaded=len(state)))
        if others:
            ignored[f"{filename} entries Ditto does not use ({', '.join(others)})"] = len(others)
    return reports, ignored


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` (its resolved target: an HF cache snapshot holds symbolic links to blobs) at
    ``dst``, or copy it where a link is impossible (another filesystem, no link support).
    Returns "linked" or "copied"."""
    import os
    import shutil

    try:
        os.link(src.resolve(), dst)
        return "linked"
    except OSError:
        shutil.copyfile(src, dst)
        return "copied"


def convert_ditto(snapshot: str | Path, output: str | Path, arch: str = "full",
                  overwrite: bool = False) -> ConversionReport:
    """Gather Ditto's released PyTorch set into one folder that ``--model ditto`` reads.

    Writes, atomically (a hidden ``.NAME.partial`` folder renamed when complete)::

        output/avatar_index.json        {"family": "ditto", "preset": ..., "models": {...}, ...}
        output/ditto_cfg.json           DittoConfig.save: the cfg pickle's settings as JSON
        output/ditto_cfg.safetensors    its arrays (delta_eye_arr (15, 63), v_min_max_for_clip (4, 265))
        output/models/*.pth             the six networks, upstream layout (DittoModels.from_files)
        output/aux_models/*             hubert_streaming_fix_kv.onnx, det_10g.onnx, 2d106det.onnx,
                                        landmark203.onnx, face_landmarker.task

    The ``.pth`` and auxiliary files are hard links to the snapshot's where possible (no second copy
    of 2.3 GB), else copies. The cfg pickle is read by the restricted unpickler only
    (``safe_pickle.DittoConfig.from_pickle``); every ``.pth`` is checked by :func:`check_ditto_models`
    before anything is written.

    Args:
        snapshot: the repo folder (holding ``ditto_cfg/`` and ``ditto_pytorch/``), e.g. the installed
            ``ditto`` component's.
        output: folder to write.
        arch: the DittoModels preset the ``.pth`` files must match ("full" for the release).

    Raises:
        InputError: snapshot not a folder or a file absent, output exists without ``overwrite``, or a cfg
            pickle that is refused (it would run code) or unreadable: nothing is written.
        WeightsError: a ``.pth`` file with a missing / extra key or a wrong shape: nothing is written.
    """
    import json

    from . import __version__
    from .models.ditto import FILES
    from .safe_pickle import DittoConfig

    snapshot, output = Path(snapshot), Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    if not snapshot.is_dir():
        raise InputError(f"{snapshot} is not a folder; give the folder of HF digital-avatar/ditto-talkinghead "
                         f"(holding ditto_cfg/ and ditto_pytorch/)")
    wanted = ([DITTO_CFG] + [f"{DITTO_MODELS}/{f}" for f in FILES.values()]
              + [f"{DITTO_AUX}/{f}" for f in DITTO_AUX_FILES])
    absent = [p for p in wanted if not (snapshot / p).is_file()]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise InputError(f"{snapshot} lacks {absent[0]}{more}: give the folder of HF digital-avatar/ditto-talkinghead, "
                         f"or run 'avatar weights download ditto'")
    try:
        cfg = DittoConfig.from_pickle(snapshot / DITTO_CFG)
    except WeightsError as err:  # refused (a global that could run code) or malformed: bad input
        raise InputError(str(err)) from None
    reports, ignored = check_ditto_models(snapshot / DITTO_MODELS, arch)

    how = {"linked": 0, "copied": 0}
    with atomic_folder(output) as tmp:
        tmp.mkdir(parents=True)
        cfg.save(tmp)
        for sub, source, names in (("models", DITTO_MODELS, FILES.values()),
                                   ("aux_models", DITTO_AUX, DITTO_AUX_FILES)):
            (tmp / sub).mkdir()
            for name in names:
                how[_link_or_copy(snapshot / source / name, tmp / sub / name)] += 1
        index = {"family": "ditto", "preset": arch, "avatar_cli_version": __version__, "source": str(snapshot),
                 "cfg": sorted(p.name for p in tmp.glob("ditto_cfg.*")),
                 "models": {attr: f"models/{name}" for attr, name in FILES.items()},
                 "aux_models": [f"aux_models/{name}" for name in DITTO_AUX_FILES]}
        (tmp / "avatar_index.json").write_text(json.dumps(index, indent=2) + "\n")  # models.bundle.INDEX_FILE
    notes = {"files": how, "cfg_arrays": {k: list(v.shape) for k, v in cfg.arrays().items()}}
    return ConversionReport(str(output), reports, ignored, notes)


# ------------------------------------------------------------------------------------------- EchoMimic
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
                               f"{plain(getattr(config, key))} (is --arch right?)")
    if source.get("use_linear_projection"):
        raise WeightsError(f"{path}: use_linear_projection is set; EchoMimic's U-Nets here use 1x1 convolutions")


def convert_echomimic(root: str | Path, output: str | Path, vae: str | Path, acc: bool = False,
                      arch: str = "full", overwrite: bool = False) -> ConversionReport:
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
    EchoMimic family, default method "echomimic" or "echomimic-acc").

    Raises:
        InputError: a file absent or unreadable, an existing output without ``overwrite``.
        WeightsError: a missing or unexpected key, a shape that differs, a Whisper checkpoint that is
            not OpenAI's layout or not as wide as the U-Net's audio context.
    """
    from diffusers import AutoencoderKL

    from .models.bundle import AvatarModels, WHISPER_FILE

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
    models = AvatarModels.from_preset(arch, family="echomimic", device="meta")
    if (root / ECHOMIMIC_UNET_CONFIG).is_file():
        _check_unet_config(root / ECHOMIMIC_UNET_CONFIG, models.reference_net.config)

    whisper = load_checkpoint(root / files["whisper"])
    dims = whisper.get("dims") if isinstance(whisper.get("dims"), dict) else None
    if dims is None or not isinstance(whisper.get("model_state_dict"), dict):
        raise WeightsError(f"{root / files['whisper']} is not an OpenAI Whisper checkpoint (dims + model_state_dict)")
    width = models.denoising_unet.config.cross_attention_dim
    if dims.get("n_audio_state") != width:
        raise WeightsError(f"{root / files['whisper']}: Whisper width {dims.get('n_audio_state')}, the U-Net's audio "
                           f"context {width} (is --arch right?)")
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
