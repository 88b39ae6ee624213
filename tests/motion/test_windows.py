"""Offline and streaming DiT windowing against Ditto's own audio2motion / stream pipelines (fixture)."""

import math

import numpy as np
import pytest

from avatar_cli.motion.condition import AudioConditions
from avatar_cli.motion.windows import OnlineMotion, offline_motion, smooth
from tests.motion.ditto_fakes import EYE_BALL, EYE_OPEN, fake_dit, feats, load_fixture, source_info

FX = load_fixture()


class CountingDit:
    def __init__(self):
        self.calls = 0

    def __call__(self, cond, kp_cond):
        assert cond.shape == (80, 1103) and kp_cond.shape == (265,)
        self.calls += 1
        return fake_dit(cond, kp_cond)


def test_offline_overlap10_short_last_window():
    src = source_info()
    cond = AudioConditions(4, EYE_OPEN, EYE_BALL, src["kp"])(feats(150, 2), 0)
    dit = CountingDit()
    got = offline_motion(cond, FX["kp_source"], dit, overlap=10)
    assert dit.calls == int(FX["offline_a_windows"]) == 3  # starts 0, 70, 140 (last one 10 frames, padded)
    assert got.shape == (150, 265) and got.dtype == np.float32
    np.testing.assert_allclose(got, FX["offline_a"], rtol=0, atol=1e-5)


def test_offline_fix_kp_cond_and_clip():
    src = source_info()
    cond = AudioConditions(4, EYE_OPEN, EYE_BALL, src["kp"])(feats(60, 3), 0)
    vmm = np.stack([np.full(265, -0.8, np.float32), np.full(265, 0.8, np.float32), np.zeros(265), np.zeros(265)])
    dit = CountingDit()
    got = offline_motion(cond, FX["kp_source"], dit, overlap=30, fix_kp_cond=1, fix_kp_cond_dim=(202, 265),
                         v_min_max=vmm)
    assert dit.calls == int(FX["offline_b_windows"]) == 2
    np.testing.assert_allclose(got, FX["offline_b"], rtol=0, atol=1e-5)
    assert got.max() <= 0.8 and got.min() >= -0.8


def test_smooth_by_hand():
    x = np.zeros((5, 265), np.float32)
    x[:, 0] = [0, 3, 6, 0, 9]
    x[:, 202] = 7  # exp dims are never smoothed
    x[2, 202] = 1
    smooth(x, 0, 5, 3)
    np.testing.assert_allclose(x[:, 0], [1.5, 3, 3, 5, 4.5])  # edge windows shrink to 2 frames
    np.testing.assert_array_equal(x[:, 202], [7, 7, 1, 7, 7])


@pytest.mark.parametrize("overlap", [70, 75])
def test_online_matches_ditto(overlap):
    src = source_info()
    cb = AudioConditions([[4], [3], [6, 1]], EYE_OPEN, EYE_BALL, src["kp"])
    om = OnlineMotion(fake_dit, FX["kp_source"], cb, feats(overlap, 99), overlap=overlap)
    f = feats(40, 4)
    outs = [om.push(f[i:i + 5]) for i in range(0, 40, 5)]
    outs.append(om.flush())
    np.testing.assert_array_equal([len(o) for o in outs], FX[f"online{overlap}_counts"])
    np.testing.assert_allclose(np.concatenate(outs), FX[f"online{overlap}"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(om.d0, FX[f"online{overlap}_d0"], atol=1e-6)
    # first-frame latency in 5-frame chunks (DITTO notes 10): first DiT call after ceil(valid/5) chunks,
    # frames only from the second window
    valid = 80 - overlap
    first = next(i for i, o in enumerate(outs) if len(o))
    assert first + 1 == 2 * math.ceil(valid / 5)
    assert all(len(o) in (0, valid) for o in outs[:-1])
    assert len(om.feats) <= 160 and len(om.res) <= 160


def test_online_trims_to_num_frames():
    src = source_info()
    cb = AudioConditions([[4], [3], [6, 1]], EYE_OPEN, EYE_BALL, src["kp"])
    om = OnlineMotion(fake_dit, FX["kp_source"], cb, feats(70, 99), overlap=70, num_frames=40)
    f = feats(40, 4)
    got = np.concatenate([om.push(f[i:i + 5]) for i in range(0, 40, 5)] + [om.flush()])
    assert len(FX["online70"]) == 50  # Ditto emits 10 extra frames at the end of the stream
    np.testing.assert_allclose(got, FX["online70"][:40], atol=1e-5)
    assert len(om.flush()) == 0
