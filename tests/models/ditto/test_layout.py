"""Every Ditto network built at the released config has exactly the released file's keys, shapes, dtypes.

``tests/data/ditto_keys.json`` was derived once from Ditto's own code (its modules built at the
released configs; see tests/data/README.md). Parameter counts are DITTO.md 12.1's; file sizes are the
HF file sizes of DITTO.md sec. 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from avatar_cli.models.ditto import FILES, PRESETS, DittoModels

KEYS = json.loads((Path(__file__).parents[2] / "data" / "ditto_keys.json").read_text())
PARAMS = {"appearance": 836_224, "motion": 28_118_728, "warp": 45_529_829, "decoder": 55_365_388,
          "stitch": 45_249, "dit": 47_788_297}
FILE_BYTES = {"appearance": 3_387_959, "motion": 112_545_506, "warp": 182_180_086, "decoder": 221_813_590,
              "dit": 191_247_715}


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return DittoModels(PRESETS["full"])


@pytest.mark.parametrize("name", list(FILES))
def test_keys_shapes_dtypes_match_ditto(full_meta, name):
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in getattr(full_meta, name).state_dict().items()}
    ref = KEYS[FILES[name]]
    assert sorted(set(ours) - set(ref)) == [] and sorted(set(ref) - set(ours)) == []
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}


def test_key_counts_and_rotary_copies():
    assert {f: len(v) for f, v in KEYS.items()} == {
        "appearance_extractor.pth": 107, "motion_extractor.pth": 212, "warp_network.pth": 97,
        "decoder.pth": 182, "stitch_network.pth": 8, "lmdm_v0.4_hubert.pth": 249}
    assert sum(k.endswith("rotary.freqs") for k in KEYS["lmdm_v0.4_hubert.pth"]) == 11
    assert sum(k.endswith("weight_orig") for k in KEYS["decoder.pth"]) == 2 * 8 + 2


def test_parameter_counts(full_meta):
    assert full_meta.parameter_counts() == PARAMS


@pytest.mark.parametrize("name", list(FILE_BYTES))
def test_fp32_payload_explains_the_public_file_size(name):
    """The released file = its tensors' bytes plus torch.save's few hundred bytes of zip/pickle per key."""
    ref = KEYS[FILES[name]]
    payload = sum(math.prod(shape) * (8 if dtype == "int64" else 4) for shape, dtype in ref.values())
    per_key = (FILE_BYTES[name] - payload) / len(ref)
    assert 200 < per_key < 400, per_key


def test_tiny_preset_keeps_the_interfaces():
    models = DittoModels.from_preset("tiny", seed=0)
    with torch.no_grad():
        crop = torch.rand(1, 3, 256, 256)
        f_s = models.appearance(crop)
        pitch, yaw, roll, t, exp, scale, kp = models.motion(crop)
        assert pitch.shape == (1, 66) and exp.shape == kp.shape == (1, 63) and scale.shape == (1, 1)
        x_s = kp.view(1, 21, 3)
        x_d = models.stitch(x_s, x_s + 0.01)
        frame = models.decoder(models.warp(f_s, x_s, x_d))
        assert frame.shape == (1, 3, 512, 512)
        motion = models.dit.guided(torch.randn(1, 80, 265), torch.randn(1, 265), torch.randn(1, 80, 1103),
                                   torch.tensor([999]))
        assert motion.shape == (1, 80, 265)


def test_from_preset_is_seeded_and_leaves_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = DittoModels.from_preset("tiny", seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    b = DittoModels.from_preset("tiny", seed=5)
    c = DittoModels.from_preset("tiny", seed=6)
    assert torch.equal(a.dit.final_layer.weight, b.dit.final_layer.weight)
    assert not torch.equal(a.dit.final_layer.weight, c.dit.final_layer.weight)
    with pytest.raises(ValueError, match="unknown Ditto preset"):
        DittoModels.from_preset("huge")


def test_to_dtype():
    models = DittoModels.from_preset("tiny").to("cpu", torch.float64)
    assert {p.dtype for p in models.parameters()} == {torch.float64}
    x = torch.randn(1, 80, 265, dtype=torch.float64)
    with torch.no_grad():
        out = models.dit(x, x[:, 0], torch.randn(1, 80, 1103, dtype=torch.float64), torch.tensor([5]))
    assert out.dtype == torch.float64
