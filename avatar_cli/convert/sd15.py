"""An SD1.5 single-file checkpoint (+ an AnimateDiff motion module) -> ``vae/``, ``reference_net/``,
``denoising_unet/``, ``scheduler/`` (diffusers' own LDM converters)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_folder
from ..errors import InputError, WeightsError
from .keys import ConversionReport, _load, _unconsumed, convert_motion_module, load_checkpoint

# Top-level keys of SD1.5's single file that are not network weights we use.
_SD_IGNORED_PREFIXES = ("cond_stage_model.", "conditioner.", "model_ema.")
_SD_SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "model_ema.decay",
                        "model_ema.num_updates"}


def convert_sd15(checkpoint: str | Path, output: str | Path, motion_module: str | Path | None = None,
                 arch: str = "full", overwrite: bool = False, config: "str | Path | dict | None" = None
                 ) -> ConversionReport:
    """Convert an SD1.5 single file (and optionally an AnimateDiff motion module) to our layout.

    Writes ``output/{vae,reference_net,denoising_unet,scheduler}`` (``save_pretrained`` format) into a
    temporary folder renamed when complete.

    Raises:
        InputError: unreadable inputs, existing output without ``overwrite``.
        WeightsError: a key that fits nowhere, or a required part (U-Net, VAE) absent.
    """
    from diffusers import AutoencoderKL

    from ..models.bundle import save_scheduler_config
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from ..models.denoising_unet import DenoisingUNet3D
    from ..models.presets import resolve
    from ..models.reference_net import ReferenceNet

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    state = load_checkpoint(checkpoint)
    cfg = resolve(config if config is not None else arch, base=arch)
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
