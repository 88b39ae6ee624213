"""Hallo's checkpoint on our models: key mapping and numerical equivalence with Hallo's own code.

``tests/data/hallo_tiny.safetensors`` was made once by running Hallo's code (fudan-generative-vision/
hallo @ 8fd7c57, in a throwaway environment, never part of this repo) on a tiny config with seeded
random weights; see tests/data/README.md. Our models, loaded from the same state dict through
``map_hallo_state``, must reproduce its outputs.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avatar_cli.convert import map_hallo_state
from avatar_cli.models.bundle import AvatarModels

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def fixture():
    raw = load_file(DATA / "hallo_tiny.safetensors")
    scale = raw["meta.state_int8_scale"].item()
    state = {k[len("state."):]: (v.float() * scale if v.dtype == torch.int8 else v)
             for k, v in raw.items() if k.startswith("state.")}
    return state, {k: v for k, v in raw.items() if not k.startswith("state.")}


@pytest.fixture(scope="module")
def hallo_models(fixture):
    state, _ = fixture
    models = AvatarModels.from_preset("tiny", family="hallo", seed=99)
    for name, part in map_hallo_state(state).items():
        result = getattr(models, name).load_state_dict(part, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    return models


def test_full_size_hallo_keys_map_with_zero_missing_and_zero_unexpected():
    shapes = json.loads((DATA / "hallo_net_keys.json").read_text())
    assert len(shapes) == 2656
    models = AvatarModels.from_preset("full", family="hallo", device="meta")
    with torch.device("meta"):
        state = {k: torch.empty(v) for k, v in shapes.items()}
    for name, part in map_hallo_state(state).items():
        result = getattr(models, name).load_state_dict(part, strict=False, assign=True)  # shapes checked
        assert result.missing_keys == [] and result.unexpected_keys == [], name
    counts = models.parameter_counts()
    assert counts["reference_net"] == 859_508_800 and counts["denoising_unet"] == 1_525_528_324
    assert counts["face_locator"] == 514_896


def test_tiny_state_dict_loads_strictly(hallo_models):
    assert hallo_models.face_locator is not None and hallo_models.denoising_unet.config.num_motion_frames == 2


def test_projectors_and_face_locator_match_hallo(hallo_models, fixture):
    _, t = fixture
    with torch.no_grad():
        torch.testing.assert_close(hallo_models.image_projector(t["in.face_emb"]), t["out.face_tokens"],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hallo_models.audio_projector(t["in.audio_windows"]), t["out.audio_tokens"],
                                   rtol=1e-4, atol=1e-4)
        frames = t["in.face_mask"][0].permute(1, 0, 2, 3)                        # (F, 3, 64, 64)
        ours = hallo_models.face_locator(frames).permute(1, 0, 2, 3)[None]       # (1, C, F, 8, 8)
        torch.testing.assert_close(ours, t["out.mask_cond_fea"], rtol=1e-4, atol=1e-4)


def _denoise(models, t, full: bool):
    tokens = t["out.face_tokens"]
    net, unet = models.reference_net, models.denoising_unet
    with torch.no_grad():
        reference = net.extract_features(t["in.ref_latents"], tokens)
        motion = net.extract_features(t["in.motion_latents"], tokens)
        kwargs = {}
        if full:
            masks = {r: t[f"in.mask_{r}"] for r in ("full", "face", "lip")}
            kwargs = dict(conditioning_features=t["out.mask_cond_fea"], region_masks=masks,
                          region_scales=tuple(t["in.motion_scale"].tolist()))
        return unet(t["in.sample"], t["in.timestep"], tokens, t["out.audio_tokens"], reference, motion, **kwargs)


def test_denoising_unet_matches_hallos_inference_path(hallo_models, fixture):
    _, t = fixture
    torch.testing.assert_close(_denoise(hallo_models, t, full=True), t["out.denoised"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_denoise(hallo_models, t, full=False), t["out.denoised_plain"], rtol=1e-4, atol=1e-4)


def test_reference_bank_matches(hallo_models, fixture):
    _, t = fixture
    tokens = t["out.face_tokens"]
    latents = torch.cat([t["in.ref_latents"], t["in.motion_latents"]])
    feats = hallo_models.reference_net.extract_features(latents, tokens)
    for key, bank in t.items():
        if key.startswith("bank.denoising_unet.") and key.endswith(".transformer_blocks.0"):
            name = key[len("bank.denoising_unet."):] + ".attn1"
            assert feats[name].dtype == torch.float16  # Hallo keeps its bank in float16
            torch.testing.assert_close(feats[name].float(), bank, rtol=1e-3, atol=1e-3)
