"""save_pretrained / from_pretrained in the project's folder layout."""

import json

import pytest
import torch

from avatar_cli.errors import WeightsError
from avatar_cli.models.bundle import INDEX_FILE, AvatarModels


def test_round_trip_gives_identical_weights_and_outputs(tmp_path):
    models = AvatarModels.from_preset("tiny", seed=3)
    models.save_pretrained(tmp_path / "w")
    layout = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert layout == sorted(["audio_encoder", "audio_projector", "denoising_unet", "image_projector", INDEX_FILE,
                             "reference_net", "scheduler", "vae"])
    assert (tmp_path / "w/denoising_unet/diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "w/denoising_unet/config.json").exists()
    assert json.loads((tmp_path / "w" / INDEX_FILE).read_text())["denoising_unet"] == "DenoisingUNet3D"
    loaded = AvatarModels.from_pretrained(tmp_path / "w")
    for name, net in models.networks().items():
        theirs = loaded.networks()[name].state_dict()
        for key, value in net.state_dict().items():
            assert torch.equal(value, theirs[key]), f"{name}.{key}"
    assert loaded.scheduler_config["beta_schedule"] == "scaled_linear"
    tokens = loaded.image_projector.null_tokens()
    torch.testing.assert_close(tokens, models.image_projector.null_tokens())


def test_different_seeds_give_different_random_weights():
    a = AvatarModels.from_preset("tiny", seed=0).denoising_unet.conv_in.weight
    b = AvatarModels.from_preset("tiny", seed=1).denoising_unet.conv_in.weight
    c = AvatarModels.from_preset("tiny", seed=0).denoising_unet.conv_in.weight
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_missing_or_broken_folders_are_reported(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        AvatarModels.from_pretrained(tmp_path / "nope")
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")
    import shutil

    shutil.rmtree(tmp_path / "w" / "vae")
    with pytest.raises(WeightsError, match="lacks vae"):
        AvatarModels.from_pretrained(tmp_path / "w")
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")
    (tmp_path / "w/vae/diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot load"):
        AvatarModels.from_pretrained(tmp_path / "w")
