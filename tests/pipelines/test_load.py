"""load_pipeline: the one way every command gets a pipeline, for every family."""

from __future__ import annotations

import pytest

from avatar_cli.errors import InputError
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.options import RenderOptions
from avatar_cli.pipelines import load_pipeline
from avatar_cli.pipelines.ditto import DittoPipeline
from avatar_cli.pipelines.unet import UNetPipeline


def test_compile_keeps_the_added_cfg_layers(tmp_path):
    """--compile --add-cfg-layers: the layers are added first, then that U-Net is compiled (before,
    the compiled U-Net was replaced by an uncompiled one with the layers)."""
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")  # no CFG-token layers
    notes = []
    pipe = load_pipeline("fada", tmp_path / "w", device="cpu", dtype="float32", compile=True, add_cfg_layers=True,
                         note=notes.append)
    unet = pipe.models.denoising_unet
    assert unet.config.cfg_tokens > 0 and hasattr(unet, "cfg_embedding")
    assert unet._compiled_call_impl is not None  # the U-Net that runs is the compiled one
    assert pipe.models.vae.decoder._compiled_call_impl is not None
    assert any("CFG-token layers" in n for n in notes)
    # the render / bench JSON's "compiled" names them, as Ditto's does; without --compile it is empty
    assert pipe.describe(RenderOptions(model="fada"))["compiled"] == ["denoising_unet", "vae_decoder"]
    plain = load_pipeline("fada", tmp_path / "w", device="cpu", dtype="float32", add_cfg_layers=True)
    assert plain.describe(RenderOptions(model="fada"))["compiled"] == [] and plain.models.vae.decoder._compiled_call_impl is None


def test_random_weights_pick_the_family_and_its_variant():
    assert isinstance(load_pipeline("ditto", random_weights=True, arch="tiny", device="cpu"), DittoPipeline)
    hallo = load_pipeline("hallo", random_weights=True, arch="tiny", device="cpu")
    assert isinstance(hallo, UNetPipeline) and hallo.models.face_locator is not None
    fada = load_pipeline("fada", random_weights=True, arch="tiny", device="cpu")
    assert fada.models.denoising_unet.config.cfg_tokens == 4
    with pytest.raises(InputError, match="exclude each other"):
        load_pipeline("osa-lcm", "weights", random_weights=True)
