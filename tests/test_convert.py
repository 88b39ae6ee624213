"""Checkpoint layouts: SD1.5 and AnimateDiff keys load into our models; single-file conversion."""

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers, \
    convert_ldm_unet_checkpoint
from safetensors.torch import save_file

from avatar_cli.cli import main
from avatar_cli.convert import convert_motion_module
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.models.denoising_unet import DenoisingUNet3D
from avatar_cli.models.presets import preset
from avatar_cli.models.reference_net import ReferenceNet
from tests.ldm_layout import unet_to_ldm, vae_to_ldm

DATA = Path(__file__).parent / "data"


def test_sd15_unet_keys_load_into_both_unets_without_missing_2d_or_unexpected_keys():
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**preset("full")["reference_net"]).state_dict()
        reference_net = ReferenceNet(**preset("full")["reference_net"])
        denoising = DenoisingUNet3D(**preset("full")["denoising_unet"])
    result = reference_net.load_state_dict(sd15, strict=False, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    result = denoising.load_state_dict(sd15, strict=False, assign=True)
    assert result.unexpected_keys == []
    assert all(".motion_modules." in k or ".audio_modules." in k for k in result.missing_keys)
    # and through the original LDM single-file names, with diffusers' converter
    ldm = unet_to_ldm(sd15, layers_per_block=2, levels=4)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in ldm
    assert set(convert_ldm_unet_checkpoint(ldm, dict(reference_net.config))) == set(sd15)


def test_animatediff_motion_module_keys_map_onto_the_temporal_attention():
    shapes = json.loads((DATA / "mm_sd_v15_v2_keys.json").read_text())
    assert len(shapes) == 588 and "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0." \
        "attention_blocks.0.to_q.weight" in shapes
    with torch.device("meta"):
        checkpoint = {k: torch.empty(v) for k, v in shapes.items()}
        denoising = DenoisingUNet3D(**preset("full")["denoising_unet"])
    converted = convert_motion_module(checkpoint)  # the project's converter: diffusers' + the position tables
    assert set(convert_animatediff_checkpoint_to_diffusers(checkpoint)) < set(converted)
    tables = [k for k in shapes if k.endswith("pos_encoder.pe")]
    assert len(tables) == 42 and sum(k.endswith("pos_embed.pe") for k in converted) == 21  # one per transformer block
    own = denoising.state_dict()
    result = denoising.load_state_dict(converted, strict=False, assign=True)
    assert result.unexpected_keys == []
    motion_own = {k for k in own if ".motion_modules." in k}
    assert motion_own == set(converted)  # every motion parameter and table filled, shapes checked by load_state_dict
    assert all(tuple(own[k].shape) == tuple(converted[k].shape) for k in converted)


def _tiny_sd_checkpoint(tmp_path, extra=None):
    cfg = preset("tiny")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        models = AvatarModels.from_preset("tiny", seed=7)
    state = {**unet_to_ldm(models.reference_net.state_dict(), cfg["reference_net"]["layers_per_block"], 2),
             **vae_to_ldm(models.vae.state_dict(), 4),
             "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(3),
             "alphas_cumprod": torch.ones(1000), **(extra or {})}
    path = tmp_path / "sd15-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path, models


def test_convert_writes_the_project_layout_and_reports_keys(tmp_path, capsys):
    path, models = _tiny_sd_checkpoint(tmp_path)
    out = tmp_path / "converted"
    assert main(["weights", "convert", "--from", "sd15", str(path), "--arch", "tiny", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report["components"]}
    assert by_name["reference_net"]["missing"] == 0 and by_name["vae"]["missing"] == 0
    assert set(by_name["denoising_unet"]["missing_groups"]) == {"audio_modules", "motion_modules"}
    assert report["ignored"] == {"text encoder": 1, "ema": 0, "schedule buffers": 1}
    loaded = ReferenceNet.from_pretrained(out / "reference_net")
    for key, value in models.reference_net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    vae = type(models.vae).from_pretrained(out / "vae")
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in models.vae.state_dict().items())
    unet = DenoisingUNet3D.from_pretrained(out / "denoising_unet")
    assert torch.equal(unet.conv_in.weight, models.reference_net.conv_in.weight)
    assert sorted(p.name for p in out.iterdir()) == ["denoising_unet", "reference_net", "scheduler", "vae"]


def test_convert_with_a_motion_module_and_failures(tmp_path, capsys):
    path, _ = _tiny_sd_checkpoint(tmp_path)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        donor = DenoisingUNet3D(**preset("tiny")["denoising_unet"])
    # the donor's motion modules in AnimateDiff's original names
    original = {}
    for key, value in donor.state_dict().items():
        if ".motion_modules." not in key or key.endswith("pos_embed.pe"):
            continue
        block, rest = key.split(".motion_modules.")
        j, rest = rest.split(".", 1)
        rest = (rest.replace("attn1", "attention_blocks.0").replace("attn2", "attention_blocks.1")
                .replace("norm1", "norms.0").replace("norm2", "norms.1").replace("norm3", "ff_norm"))
        original[f"{block}.motion_modules.{j}.temporal_transformer.{rest}"] = value
    torch.save(original, tmp_path / "mm.ckpt")
    out = tmp_path / "converted"
    assert main(["weights", "convert", "--from", "sd15", str(path), "--motion-module", str(tmp_path / "mm.ckpt"),
                 "--arch", "tiny", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set({c["name"]: c for c in report["components"]}["denoising_unet"]["missing_groups"]) == {"audio_modules"}
    unet = DenoisingUNet3D.from_pretrained(out / "denoising_unet")
    for key, value in donor.state_dict().items():
        if ".motion_modules." in key:
            assert torch.equal(unet.state_dict()[key], value), key
    # existing output, unexpected keys, not an SD checkpoint
    assert main(["weights", "convert", "--from", "sd15", str(path), "--arch", "tiny", "-o", str(out)]) == 2
    bad, _ = _tiny_sd_checkpoint(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path,
                                 extra={"model.diffusion_model.extra_layer.weight": torch.ones(2)})
    capsys.readouterr()
    assert main(["weights", "convert", "--from", "sd15", str(bad), "--arch", "tiny", "-o", str(tmp_path / "x")]) == 1
    assert "unexpected key" in capsys.readouterr().err and not (tmp_path / "x").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    assert main(["weights", "convert", "--from", "sd15", str(tmp_path / "junk.safetensors"), "-o", str(tmp_path / "y")]) == 2
