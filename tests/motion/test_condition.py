"""Condition vector and motion layout against Ditto's condition_handler.py / audio2motion.py (fixture)."""

import math

import numpy as np
import pytest

from avatar_cli.errors import InputError
from avatar_cli.motion.condition import (
    COND_SLICES,
    AudioConditions,
    emotion_vector,
    motion_to_vector,
    parse_emotion,
    vector_to_motion,
)
from tests.motion.ditto_fakes import EYE_BALL, EYE_OPEN, feats, load_fixture, source_info

FX = load_fixture()


@pytest.mark.parametrize(
    "name, emo",
    [("neutral", 4), ("neutral", "neutral"), ("mix", [3, 6]), ("mix", "happy+surprise"), ("mix", "mix:happy+surprise"),
     ("perframe", [[4], [3, 4], [6]]), ("perframe", [["neutral"], ["happy", "neutral"], ["surprise"]])],
)
def test_condition_matches_ditto(name, emo):
    src = source_info()
    cb = AudioConditions(emo, EYE_OPEN, EYE_BALL, src["kp"])
    got = cb(feats(7, 1), -2)  # negative start: indices clamp to 0 as in the streaming prefill
    assert got.shape == (7, 1103) and got.dtype == np.float32
    np.testing.assert_allclose(got, FX[f"cond_{name}"], rtol=0, atol=1e-6)


def test_condition_80_frames_and_layout():
    src = source_info()
    got = AudioConditions([[4], [3, 4], [6]], EYE_OPEN, EYE_BALL, src["kp"])(feats(80, 1), 0)
    np.testing.assert_allclose(got[:, 1024:], FX["cond_perframe_80"], atol=1e-6)
    np.testing.assert_array_equal(got[:, COND_SLICES["sc"]], np.repeat(src["kp"], 80, 0))
    np.testing.assert_array_equal(got[:, COND_SLICES["eye_open"]], np.repeat(EYE_OPEN[None], 80, 0))


def test_emotion_values_by_hand():
    e8 = math.exp(8)
    neutral = emotion_vector("neutral")
    assert neutral[4] == pytest.approx(e8 / (e8 + 7), abs=1e-6)  # 0.99766
    assert neutral[0] == pytest.approx(1 / (e8 + 7), abs=1e-7)  # 0.000335
    mix = emotion_vector(["happy", "surprise"])
    assert mix[3] == pytest.approx(e8 / (2 * e8 + 6), abs=1e-6) and mix[6] == mix[3]  # 0.4995
    table = np.random.default_rng(0).random((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(parse_emotion(table), table)


def test_emotion_changes_only_the_emotion_entries():
    src = source_info()
    a = feats(5, 3)
    base = AudioConditions("neutral", EYE_OPEN, EYE_BALL, src["kp"])(a, 0)
    happy = AudioConditions("happy", EYE_OPEN, EYE_BALL, src["kp"])(a, 0)
    np.testing.assert_array_equal(np.nonzero((base != happy).any(0))[0], [1027, 1028])  # happy up, neutral down
    mix = AudioConditions("happy+surprise", EYE_OPEN, EYE_BALL, src["kp"])(a, 0)
    np.testing.assert_array_equal(np.nonzero((base != mix).any(0))[0], np.arange(1024, 1032))


def test_per_frame_emotion_cycles_and_video_eyes_mirror():
    src = source_info()
    cb = AudioConditions([[0], [1], [2]], np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros((3, 6)), src["kp"])
    c = cb(feats(7, 2), 0)
    np.testing.assert_array_equal(c[:, COND_SLICES["emotion"]].argmax(1), [0, 1, 2, 0, 1, 2, 0])
    # mirror order over 3 frames: 0 1 2 2 1 0 0
    np.testing.assert_array_equal(c[:, 1032], [0, 2, 4, 4, 2, 0, 0])


@pytest.mark.parametrize("bad", ["angry-ish", 8, -1, [], np.zeros((2, 7)), 1.5])
def test_bad_emotion_is_an_input_error(bad):
    with pytest.raises(InputError):
        parse_emotion(bad)


def test_motion_vector_layout_matches_ditto():
    src = source_info()
    v = motion_to_vector(src)
    np.testing.assert_array_equal(v, FX["kp_source"])
    assert v[0] == pytest.approx(float(src["scale"][0, 0]) - 1)
    d = vector_to_motion(v)
    assert sorted(d) == ["exp", "pitch", "roll", "scale", "t", "yaw"]
    for k, arr in d.items():
        np.testing.assert_allclose(arr, src[k], atol=1e-7)
        assert arr.shape == src[k].shape
