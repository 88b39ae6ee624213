"""The project's Ditto / LivePortrait modules reproduce Ditto's own code (fixture recorded upstream).

``tests/data/ditto_tiny_io.safetensors``: inputs and fp32 outputs of Ditto's modules at the reduced
widths of :data:`seeded.FIXTURE_CONFIG`, with the weights of :func:`seeded.seeded_state_dict` (see
tests/data/README.md). Here the same weights go into the project's modules, which must give the same
outputs to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from avatar_cli.models.liveportrait import (
    AppearanceFeatureExtractor, MotionExtractor, SPADEDecoder, StitchingNetwork, WarpingNetwork,
    bins_to_degrees, stitch, transform_keypoint)
from avatar_cli.models.motion_dit import MotionDecoder
from avatar_cli.sampling.motion_ddim import cosine_alphas_cumprod, sample_motion_ddim, timestep_pairs

from .seeded import FIXTURE_CONFIG, FIXTURE_SEEDS, checksum, seeded_state_dict

FIXTURE = Path(__file__).parents[2] / "data" / "ditto_tiny_io.safetensors"
TOL = dict(rtol=1e-4, atol=1e-4)
CLASSES = {"appearance": AppearanceFeatureExtractor, "motion": MotionExtractor, "warp": WarpingNetwork,
           "decoder": SPADEDecoder, "stitch": StitchingNetwork, "dit": MotionDecoder}


@pytest.fixture(scope="module")
def fx():
    with safe_open(FIXTURE, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["meta"])
    return tensors, meta


@pytest.fixture(scope="module")
def nets(fx):
    _, meta = fx
    out = {}
    for name, cls in CLASSES.items():
        net = cls(**FIXTURE_CONFIG[name])
        state = seeded_state_dict(net.state_dict(), FIXTURE_SEEDS[name])
        assert checksum(state) == pytest.approx(meta["weight_checksums"][name], rel=1e-9), (
            f"{name}: seeded weights differ from the fixture's (torch RNG stream changed?)")
        net.load_state_dict(state, strict=True)
        out[name] = net.eval()
    return out


def test_fixture_config_is_the_recorded_one(fx):
    _, meta = fx
    assert json.loads(json.dumps(FIXTURE_CONFIG)) == meta["config"]
    assert meta["seeds"] == FIXTURE_SEEDS


@torch.no_grad()
def test_appearance_extractor(fx, nets):
    t, _ = fx
    torch.testing.assert_close(nets["appearance"](t["in.appearance"]), t["out.appearance"], **TOL)


@torch.no_grad()
def test_motion_extractor(fx, nets):
    t, _ = fx
    outs = nets["motion"](t["in.motion"])
    for name, got in zip(["pitch", "yaw", "roll", "t", "exp", "scale", "kp"], outs):
        torch.testing.assert_close(got, t[f"out.motion.{name}"], **TOL, msg=name)


def test_transform_keypoint_and_degrees(fx):
    t, _ = fx
    info = {k: t[f"in.tk.{k}"] for k in ["kp", "pitch", "yaw", "roll", "t", "exp", "scale"]}
    torch.testing.assert_close(transform_keypoint(info), t["out.tk"], **TOL)
    torch.testing.assert_close(bins_to_degrees(info["pitch"]), t["out.tk.pitch_degrees"], **TOL)
    # degrees given directly take the same path as their logits
    deg = {**info, **{k: bins_to_degrees(info[k]) for k in ("pitch", "yaw", "roll")}}
    torch.testing.assert_close(transform_keypoint(deg), t["out.tk"], **TOL)


@torch.no_grad()
def test_stitching(fx, nets):
    t, _ = fx
    x_s, x_d = t["in.stitch.x_s"], t["in.stitch.x_d"]
    before = x_d.clone()
    torch.testing.assert_close(stitch(nets["stitch"], x_s, x_d), t["out.stitch"], **TOL)
    torch.testing.assert_close(nets["stitch"](x_s, x_d), t["out.stitch"], **TOL)
    assert torch.equal(x_d, before)  # the input is not modified


@torch.no_grad()
def test_warp_deformation_occlusion_and_output(fx, nets):
    t, _ = fx
    f, kp_s, kp_d = t["in.warp.feature"], t["in.warp.kp_source"], t["in.warp.kp_driving"]
    dense = nets["warp"].dense_motion_network(f, kp_s, kp_d)
    torch.testing.assert_close(dense["deformation"], t["out.warp.deformation"], **TOL)
    torch.testing.assert_close(dense["occlusion_map"], t["out.warp.occlusion_map"], **TOL)
    torch.testing.assert_close(nets["warp"](f, kp_s, kp_d), t["out.warp"], **TOL)


@torch.no_grad()
def test_spade_decoder(fx, nets):
    t, _ = fx
    torch.testing.assert_close(nets["decoder"](t["in.decoder"]), t["out.decoder"], **TOL)


@torch.no_grad()
def test_motion_dit_cond_uncond_guided(fx, nets):
    t, _ = fx
    args = (t["in.dit.x"], t["in.dit.cond_frame"], t["in.dit.cond"], t["in.dit.t"])
    dit = nets["dit"]
    torch.testing.assert_close(dit(*args), t["out.dit.cond"], **TOL)
    torch.testing.assert_close(dit(*args, drop_cond=True), t["out.dit.uncond"], **TOL)
    torch.testing.assert_close(dit.guided(*args, guidance=2.0), t["out.dit.guided"], **TOL)
    # a per-sample drop mask mixes the two branches row by row
    mixed = dit(*args, drop_cond=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], t["out.dit.uncond"][0], **TOL)
    torch.testing.assert_close(mixed[1], t["out.dit.cond"][1], **TOL)


def test_schedule_and_timesteps(fx):
    t, meta = fx
    torch.testing.assert_close(cosine_alphas_cumprod(), t["out.alphas_cumprod"], rtol=0, atol=0)
    for steps, pairs in meta["time_pairs"].items():
        assert timestep_pairs(int(steps)) == [tuple(p) for p in pairs], steps


@torch.no_grad()
def test_ddim_10_steps_with_injected_noises(fx, nets):
    t, _ = fx
    dit = nets["dit"]
    cond_frame, cond = t["in.ddim.cond_frame"], t["in.ddim.cond"]
    out = sample_motion_ddim(lambda x, tt: dit.guided(x, cond_frame, cond, tt, 2.0), t["in.ddim.x_T"],
                             list(t["in.ddim.noises"]), steps=10)
    torch.testing.assert_close(out, t["out.ddim"], **TOL)
