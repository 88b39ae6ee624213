"""EchoMimic's checkpoints on our models: key mapping and numerical equivalence with EchoMimic's code.

``tests/data/echomimic_tiny.safetensors`` was made once by running EchoMimic's own modules
(antgroup/echomimic @ a53e970: ``src/models/unet_2d_condition.py``, ``unet_3d_echo.py``,
``face_locator.py``, ``mutual_self_attention.py``) in a throwaway environment, on our ``tiny``
preset's sizes with the deterministic weights of ``echomimic_weights.py``; it stores EchoMimic's key
names and shapes (metadata), the position tables, the inputs and the outputs. See tests/data/README.md.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avatar_cli.convert import map_echomimic_state
from avatar_cli.models.attention import ReferenceFeatures
from avatar_cli.models.denoising_unet import DenoisingUNet3D
from avatar_cli.models.face_locator import FaceLocator
from avatar_cli.models.presets import preset
from avatar_cli.models.reference_net import ReferenceNet
from avatar_cli.sampling.guidance import Conditions, GuidedDenoiser

from .echomimic_weights import grid_state

DATA = Path(__file__).resolve().parents[1] / "data"
SEEDS = {"reference_unet": 1, "denoising_unet": 2, "face_locator": 3}


def echomimic_states() -> dict[str, dict[str, torch.Tensor]]:
    """EchoMimic's state dicts of the fixture's tiny models, in EchoMimic's key layout:
    reference_unet, denoising_unet (2D part and motion modules together), face_locator."""
    with safe_open(DATA / "echomimic_tiny.safetensors", "pt") as f:
        meta = f.metadata()
    tensors = load_file(DATA / "echomimic_tiny.safetensors")
    states = {name: grid_state(json.loads(meta[name]), seed) for name, seed in SEEDS.items()}
    states["denoising_unet"].update({k[len("pe."):]: v for k, v in tensors.items() if k.startswith("pe.")})
    return states


@pytest.fixture(scope="module")
def fixture():
    return load_file(DATA / "echomimic_tiny.safetensors")


@pytest.fixture(scope="module")
def models():
    cfg = preset("tiny", "echomimic")
    nets = {"reference_net": ReferenceNet(**cfg["reference_net"]), "denoising_unet": DenoisingUNet3D(**cfg["denoising_unet"]),
            "face_locator": FaceLocator(**cfg["face_locator"])}
    states = echomimic_states()
    motion = {k: v for k, v in states["denoising_unet"].items() if ".motion_modules." in k}
    unet2d = {k: v for k, v in states["denoising_unet"].items() if ".motion_modules." not in k}
    for name, part in map_echomimic_state(states["reference_unet"], unet2d, motion, states["face_locator"]).items():
        result = nets[name].load_state_dict(part, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    return {k: v.eval() for k, v in nets.items()}


def test_full_size_echomimic_keys_map_with_zero_missing_and_zero_unexpected():
    """Every key of EchoMimic's full-size U-Nets and face locator (built from its code on the meta
    device) lands on our full EchoMimic models, and every parameter of ours is covered."""
    shapes = json.loads((DATA / "echomimic_keys.json").read_text())
    cfg = preset("full", "echomimic")
    with torch.device("meta"):
        nets = {"reference_net": ReferenceNet(**cfg["reference_net"]),
                "denoising_unet": DenoisingUNet3D(**cfg["denoising_unet"]), "face_locator": FaceLocator(**cfg["face_locator"])}
        state = {name: {k: torch.empty(v) for k, v in part.items()} for name, part in shapes.items()}
    motion = {k: v for k, v in state["denoising_unet"].items() if ".motion_modules." in k}
    unet2d = {k: v for k, v in state["denoising_unet"].items() if ".motion_modules." not in k}
    for name, part in map_echomimic_state(state["reference_unet"], unet2d, motion, state["face_locator"]).items():
        result = nets[name].load_state_dict(part, strict=False, assign=True)  # shapes are checked
        assert result.missing_keys == [] and result.unexpected_keys == [], name
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    # EchoMimic's counts (the JSON's, position tables excluded): ~3.26 GB and ~3.4 GB + 1.82 GB of float32
    assert counts["reference_net"] == 815_521_280 and counts["face_locator"] == 1_086_192
    tables = sum(int(torch.tensor(v).prod()) for k, v in shapes["denoising_unet"].items() if k.endswith(".pe"))
    assert counts["denoising_unet"] == 1_304_353_924 - tables


def test_face_locator_matches(models, fixture):
    with torch.no_grad():
        ours = models["face_locator"](fixture["in.face_mask"][None, None])            # (1, 32, 8, 8)
    torch.testing.assert_close(ours[:, :, None], fixture["out.face_locator"], rtol=1e-4, atol=1e-4)


def test_reference_bank_matches(models, fixture):
    feats = models["reference_net"].extract_features(fixture["in.ref_latents"], None)
    banks = {k[len("bank."):]: v for k, v in fixture.items() if k.startswith("bank.")}
    assert set(banks) == set(feats)
    for name, bank in banks.items():
        assert feats[name].dtype == torch.float16  # EchoMimic's update() casts the bank to float16
        torch.testing.assert_close(feats[name].float(), bank, rtol=1e-3, atol=1e-3)


def _conditions(models, fixture):
    reference = models["reference_net"].extract_features(fixture["in.ref_latents"], None)
    frames = fixture["in.sample"].shape[2]
    locator = fixture["out.face_locator"].expand(-1, -1, frames, -1, -1)
    empty = torch.zeros(1, 0, 32)  # no context tokens: EchoMimic passes encoder_hidden_states=None
    return Conditions(empty, fixture["in.audio"], reference, None, locator, None)


def test_denoising_unet_matches_echomimic(models, fixture):
    """Reference attention (the portrait's bank), Whisper tokens in attn2 (x3), face-locator features,
    motion modules in every block: one U-Net evaluation as EchoMimic's pipeline makes it."""
    c = _conditions(models, fixture)
    with torch.no_grad():
        ours = models["denoising_unet"](fixture["in.sample"], fixture["in.timestep"], None, c.audio_embeds,
                                        c.reference_features, None, conditioning_features=c.conditioning_features)
    expected = fixture["out.denoised"]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - expected).abs().max() < 1e-5  # measured: 3e-8
    # the fixture tells the layout apart: attn2 unscaled (SD's 1 instead of EchoMimic's 3) misses by ~2e-2
    unet = models["denoising_unet"]
    scaled = [m.processor for n, m in unet.named_modules() if n.endswith("attn2")]
    try:
        for p in scaled:
            p.output_scale = 1.0
        with torch.no_grad():
            plain = unet(fixture["in.sample"], fixture["in.timestep"], None, c.audio_embeds, c.reference_features,
                         None, conditioning_features=c.conditioning_features)
    finally:
        for p in scaled:
            p.output_scale = 3.0
    assert (plain - expected).abs().max() > 1e-3


def test_unconditional_branch_matches_echomimics_cfg_batch(models, fixture):
    """EchoMimic's CFG batch [uncond, cond]: the unconditional half has no reference keys/values,
    zero audio and zero face-locator features. Ours: the same null conditions, as GuidedDenoiser
    batches them."""
    c = _conditions(models, fixture)
    null = Conditions(c.encoder_hidden_states, torch.zeros_like(c.audio_embeds),
                      ReferenceFeatures(c.reference_features, keep=torch.zeros(1, dtype=torch.bool)), None, None, None)
    batch = Conditions.cat([null, c])
    with torch.no_grad():
        ours = models["denoising_unet"](fixture["in.sample"].repeat(2, 1, 1, 1, 1), fixture["in.timestep"], None,
                                        **{k: v for k, v in batch.unet_kwargs().items() if k != "encoder_hidden_states"})
        torch.testing.assert_close(ours, fixture["out.denoised_cfg"], rtol=1e-4, atol=1e-4)
        guided = GuidedDenoiser(models["denoising_unet"], c, "cfg", (2.5,), null)(fixture["in.sample"],
                                                                                int(fixture["in.timestep"]))
    u, k = fixture["out.denoised_cfg"].chunk(2)
    torch.testing.assert_close(guided, u + 2.5 * (k - u), rtol=1e-4, atol=1e-4)
