"""bf16 against fp32 for Ditto's renderer networks: the numbers behind ``avatar_cli/precision.py``'s CPU defaults.

Two weight sets: the equivalence fixture's (``tests/data/ditto_tiny_io.safetensors``: seeded weights
with realistic output scales, the recorded inputs) and full-size random weights (torch's default
initialisation, seeded). For each network and each format -- ``autocast`` (fp32 weights, bf16
autocast), ``weights`` (the module and its input in bf16), optionally channels_last -- it prints the
max abs error of the intermediate outputs (appearance features, motion heads / keypoints, warped
features) and the PSNR (dB, peak 1) of the decoder's frame (the decoder output clamped to [0, 1]).

Usage: ``PYTHONPATH=. python scripts/bf16_quality.py [--full]`` (``--full``: also the released sizes,
one 512 px frame per format, about a minute on 2 cores). Prints one JSON object. ``--family unet``: the dual
U-Net family's networks instead (``scripts/bf16_quality_unet.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avatar_cli.models.liveportrait import (AppearanceFeatureExtractor, MotionExtractor, SPADEDecoder,  # noqa: E402
                                            WarpingNetwork, transform_keypoint)
from avatar_cli.precision import psnr, run_in  # noqa: E402
from tests.models.ditto.seeded import FIXTURE_CONFIG, FIXTURE_SEEDS, seeded_state_dict  # noqa: E402

CLASSES = {"appearance": AppearanceFeatureExtractor, "motion": MotionExtractor, "warp": WarpingNetwork,
           "decoder": SPADEDecoder}
FORMATS = {"autocast": ("autocast", False), "weights": ("weights", False),
           "autocast+channels_last": ("autocast", True)}
MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


def _max_err(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(_max_err(x, y) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max())


@torch.no_grad()
def compare(nets: dict, inputs: dict) -> dict:
    out = {}
    for name, net in nets.items():
        args = inputs[name]
        ref = net(*args)
        row = {}
        for label, (mode, cl) in FORMATS.items():
            try:
                got = run_in(net, args, mode, channels_last=cl)
            except (NotImplementedError, RuntimeError) as e:  # e.g. avg_pool3d has no bf16 CPU kernel
                row[label] = {"unsupported": str(e).splitlines()[0][:80]}
                continue
            if name == "decoder":
                row[label] = {"psnr_db": round(psnr(got.float().clamp(0, 1), ref.clamp(0, 1)), 2),
                              "max_abs": round(_max_err(got, ref), 5)}
            elif name == "motion":
                info = lambda heads: transform_keypoint({k: h.float().reshape(h.shape[0], -1)  # noqa: E731
                                                         for k, h in zip(MOTION_KEYS, heads)})
                row[label] = {"max_abs_heads": round(_max_err(got, ref), 5),
                              "max_abs_keypoints": round(_max_err(info(got), info(ref)), 5)}
            else:
                row[label] = {"max_abs": round(_max_err(got, ref), 5),
                              "max_abs_rel": round(_max_err(got, ref) / float(ref.abs().max()), 5)}
        out[name] = row
    return out


def fixture() -> dict:
    with safe_open(ROOT / "tests/data/ditto_tiny_io.safetensors", "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    nets = {}
    for name, cls in CLASSES.items():
        net = cls(**FIXTURE_CONFIG[name])
        net.load_state_dict(seeded_state_dict(net.state_dict(), FIXTURE_SEEDS[name]))
        nets[name] = net.eval()
    inputs = {"appearance": (t["in.appearance"],), "motion": (t["in.motion"],),
              "warp": (t["in.warp.feature"], t["in.warp.kp_source"], t["in.warp.kp_driving"]),
              "decoder": (t["in.decoder"],)}
    return compare(nets, inputs)


def chain_networks() -> tuple[WarpingNetwork, SPADEDecoder, tuple[torch.Tensor, ...]]:
    """The fixture's warp (seeded weights), a decoder of the fixture's recipe (seed 4) whose input width is
    the warp's output width (16), and the warp's recorded inputs (feature, kp_source, kp_driving); also
    ``scripts/compile_speed.py``'s quality check."""
    with safe_open(ROOT / "tests/data/ditto_tiny_io.safetensors", "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    warp = WarpingNetwork(**FIXTURE_CONFIG["warp"])
    warp.load_state_dict(seeded_state_dict(warp.state_dict(), FIXTURE_SEEDS["warp"]))
    decoder = SPADEDecoder(**{**FIXTURE_CONFIG["decoder"], "max_features": 16})
    decoder.load_state_dict(seeded_state_dict(decoder.state_dict(), FIXTURE_SEEDS["decoder"]))
    return warp.eval(), decoder.eval(), (t["in.warp.feature"], t["in.warp.kp_source"], t["in.warp.kp_driving"])


@torch.no_grad()
def fixture_chain() -> dict:
    """The fixture's warp into a decoder of the fixture's recipe (:func:`chain_networks`): a frame for the
    warp, and for warp + decoder together."""
    warp, decoder, args = chain_networks()
    ref = decoder(warp(*args)).clamp(0, 1)
    warped_bf16 = run_in(warp, args, "autocast")
    out = {}
    for label, (w, d) in {"warp bf16, decoder fp32": (True, False), "warp fp32, decoder bf16": (False, True),
                          "both bf16 (decoder channels_last)": (True, True)}.items():
        warped = warped_bf16.float() if w else warp(*args)
        frame = run_in(decoder, (warped,), "autocast", channels_last=True) if d else decoder(warped)
        out[label] = {"psnr_db": round(psnr(frame.float().clamp(0, 1), ref), 2),
                      "max_abs_warped": round(_max_err(warped, warp(*args)), 5)}
    return out


def full() -> dict:
    from avatar_cli.models.ditto import DittoModels

    models = DittoModels.from_preset("full", seed=0)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 256, 256, generator=g)
    with torch.no_grad():
        f_s = models.appearance(rgb)
        heads = models.motion(rgb)
        kp = transform_keypoint({k: h.reshape(1, -1) for k, h in zip(MOTION_KEYS, heads)})
        warped = models.warp(f_s, kp, kp + 0.02 * torch.randn(kp.shape, generator=g))
    nets = {n: getattr(models, n) for n in CLASSES}
    inputs = {"appearance": (rgb,), "motion": (rgb,), "warp": (f_s, kp, kp * 1.02), "decoder": (warped,)}
    return compare(nets, inputs)


if __name__ == "__main__":
    if "--family" in sys.argv and sys.argv[sys.argv.index("--family") + 1:][:1] == ["unet"]:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bf16_quality_unet import main as unet_main

        print(json.dumps(unet_main(), indent=1))
        sys.exit(0)
    torch.manual_seed(0)
    report = {"fixture": fixture(), "fixture_chain": fixture_chain()}
    if "--full" in sys.argv:
        report["full_random"] = full()
    print(json.dumps(report, indent=1))
