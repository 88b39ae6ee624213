"""MotionStitch against Ditto's motion_stitch.py (fixture), plus effect tests of each control."""

import numpy as np
import pytest

from avatar_cli.motion.condition import vector_to_motion
from avatar_cli.motion.stitch import EYE_KP, LIP_KP, MotionStitch, _bins_to_degrees, blink_schedule, fade_schedule
from tests.motion.ditto_fakes import eye_arr, gen_motion, load_fixture, source_info

FX = load_fixture()


def run(n, *, ctrl_info=None, fade_in=-1, fade_out=-1, **kw):
    """Like Ditto's offline SDK: MotionStitch for a stream, then setup_Nd(n) (blink schedule + fade ramps)."""
    ms = MotionStitch(source_info(), num_frames=-1, **kw)
    ms.set_num_frames(n)
    ctrl = fade_schedule(n, fade_in, fade_out, ctrl_info)
    motion = gen_motion(n)
    rows = []
    for i in range(n):
        d = ms(vector_to_motion(motion[i]), **ctrl.get(i, {}))
        assert d["pitch"].shape == (1,) and d["exp"].shape == (1, 63) and d["kp"].shape == (1, 63)
        rows.append(np.concatenate([d["scale"].reshape(1), d["pitch"], d["yaw"], d["roll"], d["t"].reshape(3),
                                    d["exp"].reshape(63)]))
    return np.stack(rows), ms


def test_random_blinks_fades_and_overall_pitch():
    got, ms = run(230, delta_eye_arr=eye_arr(), delta_eye_open_n=0, fade_type="d0",
                  overall_ctrl={"delta_pitch": 2}, fade_in=10, fade_out=12, seed=1234)
    np.testing.assert_array_equal(ms.blink_idx, FX["stitch_blink_idx"])
    np.testing.assert_allclose(got, FX["stitch_blink"], rtol=0, atol=1e-4)


def test_each_control_matches_ditto():
    ctrl = {3: {"delta_yaw": 10}, 4: {"delta_roll": -5, "alpha_roll": 0.5}, 5: {"alpha_yaw": 0.3},
            6: {"delta_exp": np.arange(63, dtype=np.float32) * 1e-3}, 7: {"vad_alpha": 0.25},
            8: {"delta_pitch": -3, "alpha_pitch": 2.0}, 9: {"fade_alpha": 0.5}}
    got, _ = run(12, fade_type="s", overall_ctrl={"delta_pitch": 2}, ctrl_info=ctrl)
    np.testing.assert_allclose(got, FX["stitch_ctrl"], rtol=0, atol=1e-4)


def test_fixed_gap_list_and_gains():
    got, ms = run(80, delta_eye_arr=eye_arr(), delta_eye_open_n=[10, 30],
                  use_d_keys={"exp": 0.5, "pitch": 0.0, "yaw": 1.5, "t": 1.0})
    np.testing.assert_array_equal(ms.blink_idx, FX["stitch_fixed_idx"])
    np.testing.assert_allclose(got, FX["stitch_fixed"], rtol=0, atol=1e-4)


def test_fixed_gap_absolute_motion():
    got, ms = run(60, delta_eye_arr=eye_arr(), delta_eye_open_n=20, relative=False, use_d_keys={"exp": 1.0, "yaw": 0.5})
    np.testing.assert_array_equal(ms.blink_idx, FX["stitch_n20_idx"])
    np.testing.assert_allclose(got, FX["stitch_n20"], rtol=0, atol=1e-4)


def test_blink_schedule_by_hand():
    assert blink_schedule(50, 15, -1) == [0] * 50
    idx = blink_schedule(80, 15, [10, 30])  # first blink after 10 frames; next start 10+15+30 = 55 >= 80-30
    assert idx == [0] * 10 + list(range(15)) + [0] * 55
    a, b = blink_schedule(400, 15, 0, __import__("random").Random(5)), blink_schedule(400, 15, 0, __import__("random").Random(5))
    assert a == b and max(a) == 14
    starts = [i for i in range(400) if a[i] == 1]
    gaps = np.diff(starts) - 15
    assert len(starts) >= 2 and all(60 <= g <= 100 for g in gaps) and 61 <= starts[0] <= 101


def test_fade_schedule_by_hand():
    c = fade_schedule(10, 2, 3, {0: {"delta_yaw": 1}})
    assert c[0] == {"delta_yaw": 1, "fade_alpha": 0.0} and c[1]["fade_alpha"] == 0.5
    assert [c[i]["fade_alpha"] for i in range(6, 10)] == [1.0, 2 / 3, 1 / 3, 0.0]
    assert 2 not in c and 5 not in c


def _frames(n=6, **kw):
    ms = MotionStitch(source_info(), num_frames=n, **kw)
    m = gen_motion(n)
    return [ms(vector_to_motion(m[i])) for i in range(n)], ms


def test_yaw_offset_adds_exactly_10_degrees():
    base, _ = _frames(overall_ctrl={})
    turned, _ = _frames(overall_ctrl={"delta_yaw": 10})
    for a, b in zip(base, turned):
        assert float(b["yaw"][0] - a["yaw"][0]) == pytest.approx(10, abs=1e-4)
        assert float(b["pitch"][0]) == pytest.approx(float(a["pitch"][0]), abs=1e-5)
        assert float(b["roll"][0]) == pytest.approx(float(a["roll"][0]), abs=1e-5)


def test_gain_zero_freezes_pose_to_source():
    src = source_info()
    frames, _ = _frames(use_d_keys={"exp": 1.0, "pitch": 0.0, "yaw": 1.0, "roll": 0.0, "t": 0.0})
    for d in frames:
        assert float(d["pitch"][0]) == pytest.approx(float(_bins_to_degrees(src["pitch"])[0]), abs=1e-5)
        assert float(d["roll"][0]) == pytest.approx(float(_bins_to_degrees(src["roll"])[0]), abs=1e-5)
        np.testing.assert_allclose(d["t"], src["t"], atol=1e-7)
    assert np.ptp([float(d["yaw"][0]) for d in frames]) > 1  # yaw still moves


def test_blink_never_keeps_eyes_at_source():
    src = source_info()
    arr = eye_arr() + 0.02  # every template row moves every eye coordinate
    ms = MotionStitch(src, num_frames=120, delta_eye_arr=arr, delta_eye_open_n=[5, 20])
    m = gen_motion(120)
    eye = (np.array(EYE_KP)[:, None] * 3 + np.arange(3)).ravel()
    lip = (np.array(LIP_KP)[:, None] * 3 + np.arange(3)).ravel()
    other = np.setdiff1d(np.arange(63), np.concatenate([eye, lip]))
    blinking = 0
    for i in range(120):
        d = ms(vector_to_motion(m[i]))
        assert np.all(d["exp"][0, eye] != src["exp"][0, eye])
        np.testing.assert_array_equal(d["exp"][0, other], src["exp"][0, other])  # only lips and eyes driven
        blinking += ms.blink_idx[i] > 0
    assert blinking >= 2 * 14


def test_keypoints_use_the_given_transform():
    seen = []
    ms = MotionStitch(source_info(), transform_keypoint=lambda info: seen.append(info) or np.zeros((1, 21, 3)))
    x_s, x_d = ms.keypoints(vector_to_motion(gen_motion(1)[0]))
    assert x_s.shape == x_d.shape == (1, 21, 3) and len(seen) == 2 and seen[0]["yaw"].shape == (1,)
    with pytest.raises(RuntimeError):
        MotionStitch(source_info()).keypoints(vector_to_motion(gen_motion(1)[0]))


def test_d0_from_a_motion_vector_equals_d0_from_a_dict():
    m = gen_motion(3)
    a = MotionStitch(source_info(), d0=m[2])
    b = MotionStitch(source_info(), d0=vector_to_motion(m[2]))
    c = MotionStitch(source_info())
    c.d0 = m[2]
    for ms in (a, b, c):
        out = ms(vector_to_motion(m[2]))  # the anchor itself: pose and t back at the source
        np.testing.assert_allclose(out["t"], source_info()["t"], atol=1e-7)
        assert float(out["roll"][0]) == pytest.approx(float(_bins_to_degrees(source_info()["roll"])[0]), abs=1e-5)
