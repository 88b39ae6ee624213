"""``--model ditto`` controls: each option's effect on the motion path, with fixed random tiny weights.

The generated motion is a fixed random sequence around the source's (no DiT needed) except where the
test is about the DiT's input (emotion) or its windows (overlap). References are computed another way:
rotation matrices in numpy, Ditto's emotion rows from ``emotion_vector``, the window count in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar_cli.errors import InputError
from avatar_cli.media.image import load_source
from avatar_cli.models.liveportrait.keypoints import transform_keypoint
from avatar_cli.motion.condition import COND_SLICES, emotion_vector, motion_to_vector, vector_to_motion
from avatar_cli.motion.stitch import EYE_KP, LIP_KP, _bins_to_degrees
from avatar_cli.options import RenderOptions
from avatar_cli.pipelines.base import RenderStats
from avatar_cli.pipelines.ditto import DittoPipeline
from avatar_cli.render_options import build

FRAMES = 40


@pytest.fixture(scope="module")
def ditto(tmp_path_factory):
    from avatar_cli.bench import synthetic_portrait

    pipe = DittoPipeline.from_preset("tiny", device="cpu", seed=0)
    pipe.warn = lambda message: None
    image = load_source(synthetic_portrait(tmp_path_factory.mktemp("ctl") / "p.png", 256))
    source = pipe.source_state(image, (64, 64, 128, 128))
    rng = np.random.default_rng(1)
    base = motion_to_vector(source.motion)
    motion = (base[None] + 0.5 * rng.standard_normal((FRAMES, base.size))).astype(np.float32)
    return pipe, source, motion


def _stitch(pipe, source, motion, **options):
    opts = RenderOptions(model="ditto", **options)
    opts.validate()
    stitcher = pipe.stitcher(source, len(motion), opts)
    return [stitcher(vector_to_motion(m)) for m in motion]


def _kp(info) -> np.ndarray:
    return transform_keypoint({k: torch.from_numpy(v.reshape(1, -1)) for k, v in info.items()})[0].numpy()


def _rot(pitch, yaw, roll) -> np.ndarray:
    """(Rz Ry Rx)^T from degrees, written out again here."""
    x, y, z = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return (rz @ ry @ rx).T


def test_pose_offset_rotates_the_keypoints_by_exactly_that_yaw(ditto):
    pipe, source, motion = ditto
    src = {k: float(_bins_to_degrees(source.motion[k])[0]) for k in ("pitch", "yaw", "roll")}
    # pose gain 0: the angles are the source's, so the offset frame must be the source's pose + 10 degrees yaw
    infos = _stitch(pipe, source, motion, pose_gain=(0, 0, 0), pose_offset=(0, 10, 0))
    plain = _stitch(pipe, source, motion, pose_gain=(0, 0, 0))
    for info, ref in zip(infos, plain):
        assert info["yaw"][0] == pytest.approx(src["yaw"] + 10, abs=1e-4)
        assert info["pitch"][0] == pytest.approx(src["pitch"], abs=1e-4) and ref["yaw"][0] == pytest.approx(src["yaw"], abs=1e-4)
        expected = _kp({**info, "yaw": np.float32([src["yaw"] + 10]), "pitch": np.float32([src["pitch"]]),
                        "roll": np.float32([src["roll"]])})
        np.testing.assert_allclose(_kp(info), expected, atol=1e-5)
        kp = source.motion["kp"].reshape(21, 3).astype(np.float64)
        closed = (kp @ _rot(src["pitch"], src["yaw"] + 10, src["roll"]) + info["exp"].reshape(21, 3)) * info["scale"][0, 0]
        closed[:, :2] += info["t"][0, :2]
        np.testing.assert_allclose(_kp(info), closed, atol=1e-4)
        # only the gaze fix (exp dims 33, 34, 45, 46) follows the turned head
        moved = np.flatnonzero(np.abs(info["exp"] - ref["exp"])[0] > 1e-7)
        assert set(moved) <= {33, 34, 45, 46} and 33 in moved


def test_pose_gain_zero_freezes_that_component_at_the_source(ditto):
    pipe, source, motion = ditto
    src = {k: float(_bins_to_degrees(source.motion[k])[0]) for k in ("pitch", "yaw", "roll")}
    infos = _stitch(pipe, source, motion, pose_gain=(1, 0, 1))
    yaws = np.array([i["yaw"][0] for i in infos])
    pitches = np.array([i["pitch"][0] for i in infos])
    np.testing.assert_allclose(yaws, src["yaw"], atol=1e-4)
    assert np.ptp(pitches) > 0.5  # the other components still move
    half = _stitch(pipe, source, motion, pose_gain=(1, 0.5, 1))
    assert np.ptp([i["yaw"][0] for i in half]) > 0.1


def test_mouth_gain_scales_the_lips_relative_motion(ditto):
    pipe, source, motion = ditto
    one = _stitch(pipe, source, motion, pose_gain=(0, 0, 0))
    two = _stitch(pipe, source, motion, pose_gain=(0, 0, 0), mouth_gain=2)
    lips = np.zeros((21, 3), bool)
    lips[list(LIP_KP)] = True
    lips = lips.reshape(63)
    s = source.motion["exp"][0]
    for a, b in zip(one[1:], two[1:]):
        np.testing.assert_allclose(b["exp"][0, lips] - s[lips], 2 * (a["exp"][0, lips] - s[lips]), atol=1e-5)
        np.testing.assert_allclose(b["exp"][0, ~lips], a["exp"][0, ~lips], atol=1e-7)
    assert np.abs(one[5]["exp"][0, lips] - s[lips]).max() > 1e-3


def test_blink_never_keeps_the_eyes_at_the_source(ditto):
    pipe, source, motion = ditto
    template = np.random.default_rng(2).standard_normal((15, 63)).astype(np.float32) * 0.05
    template[0] = 0  # the template's open-eye row (applied outside blinks)
    eyes = np.zeros((21, 3), bool)
    eyes[list(EYE_KP)] = True
    eyes = eyes.reshape(63)
    s = source.motion["exp"][0]
    pipe.config.delta_eye_arr = template
    try:
        never = _stitch(pipe, source, motion, blink="never", pose_gain=(0, 0, 0))
        every = _stitch(pipe, source, motion, blink="10", pose_gain=(0, 0, 0))
        free = pipe.controls(RenderOptions(model="ditto", blink="never"))
    finally:
        pipe.config.delta_eye_arr = None
    assert free.delta_eye_open_n == -1
    for info in never:
        np.testing.assert_allclose(info["exp"][0, eyes], s[eyes], atol=1e-7)
    # with a blink every 10 frames: frames 10..24 play template rows 0..14 on the eyes
    for i, info in enumerate(every):
        row = i - 10 if 10 <= i < 25 else 0
        np.testing.assert_allclose(info["exp"][0, eyes], s[eyes] + template[row, eyes], atol=1e-6)


def test_blink_without_template_says_so(ditto):
    pipe, _, _ = ditto
    notes = []
    pipe.warn = notes.append
    try:
        ctl = pipe.controls(RenderOptions(model="ditto", blink="auto"))
    finally:
        pipe.warn = lambda message: None
    assert ctl.delta_eye_open_n == -1 and any("blink template" in n for n in notes)


def _conditions(pipe, source, features, **options):
    seen = []
    dit = pipe.models.dit
    guided = dit.guided

    def spy(x, frame, cond, t, scale):
        seen.append(cond[0].numpy().copy())
        return guided(x, frame, cond, t, scale)

    dit.guided = spy
    stats = RenderStats.of(pipe)
    try:
        pipe.motion(features, source, RenderOptions(model="ditto", num_inference_steps=1, **options), stats)
    finally:
        del dit.guided
    return seen, stats


def test_emotion_changes_exactly_the_eight_emotion_entries(ditto):
    pipe, source, _ = ditto
    features = np.random.default_rng(3).standard_normal((30, 1024)).astype(np.float32)
    base, _ = _conditions(pipe, source, features)
    happy, _ = _conditions(pipe, source, features, emotion="happy")
    mix, _ = _conditions(pipe, source, features, emotion="happy:0.75,sad:0.25")
    emo = COND_SLICES["emotion"]
    others = np.ones(base[0].shape[-1], bool)
    others[emo] = False
    for b, h, m in zip(base, happy, mix):
        np.testing.assert_array_equal(h[:, others], b[:, others])
        np.testing.assert_allclose(h[:, emo], np.broadcast_to(emotion_vector("happy"), (len(h), 8)), atol=1e-7)
        mixed = 0.75 * emotion_vector("happy") + 0.25 * emotion_vector("sad")
        np.testing.assert_allclose(m[:, emo], np.broadcast_to(mixed, (len(m), 8)), atol=1e-6)
        assert np.abs(h[:, emo] - b[:, emo]).max() > 0.5  # neutral -> happy


def test_emotion_timeline_file(ditto, tmp_path):
    pipe, source, _ = ditto
    path = tmp_path / "emo.csv"
    path.write_text('frame,emotion\n0,happy\n10,"sad:1,angry:1"\n')
    features = np.random.default_rng(3).standard_normal((30, 1024)).astype(np.float32)
    (cond, *_), _ = _conditions(pipe, source, features, emotion=str(path))
    emo = cond[:, COND_SLICES["emotion"]]
    np.testing.assert_allclose(emo[:10], np.broadcast_to(emotion_vector("happy"), (10, 8)), atol=1e-7)
    mixed = 0.5 * emotion_vector("sad") + 0.5 * emotion_vector("angry")
    np.testing.assert_allclose(emo[10:30], np.broadcast_to(mixed, (20, 8)), atol=1e-6)  # held past the last row


@pytest.mark.parametrize("overlap", [10, 60])
def test_motion_overlap_sets_the_number_of_dit_windows(ditto, overlap):
    pipe, source, _ = ditto
    frames = 100
    features = np.random.default_rng(4).standard_normal((frames, 1024)).astype(np.float32)
    calls, stats = _conditions(pipe, source, features, motion_overlap=overlap)
    windows = math.ceil(frames / (80 - overlap))  # window starts 0, valid, 2 valid, ... below 100
    assert stats.evaluations == 2 * windows  # 1 step, CFG: two evaluations (one batched call)
    assert len(calls) == windows


def test_per_frame_controls_reach_the_stitcher(ditto, tmp_path):
    pipe, source, motion = ditto
    path = tmp_path / "ctl.jsonl"
    path.write_text('{"frame": 3, "delta_yaw": 10}\n{"frame": 5, "alpha_roll": 0}\n')
    opts = RenderOptions(model="ditto", controls=str(path))
    opts.validate()
    ctl = pipe.controls(opts)
    stitcher = pipe.stitcher(source, FRAMES, opts, ctl)
    plain = _stitch(pipe, source, motion)
    infos = [stitcher(vector_to_motion(m), **ctl.per_frame.get(i, {})) for i, m in enumerate(motion)]
    assert infos[3]["yaw"][0] == pytest.approx(plain[3]["yaw"][0] + 10, abs=1e-4)
    assert infos[5]["roll"][0] == pytest.approx(0, abs=1e-4)  # logits * 0: uniform bins, 32.5 * 3 - 97.5 degrees
    for i in (0, 1, 2, 4, 6):
        np.testing.assert_allclose(infos[i]["yaw"], plain[i]["yaw"], atol=1e-6)


@pytest.mark.parametrize("values, message", [
    ({"emotion": "joyful"}, "unknown emotion"),
    ({"emotion": "happy:x"}, "not a number"),
    ({"blink": "sometimes"}, "--blink must be"),
    ({"motion_overlap": 80}, "--motion-overlap must be 1..79"),
    ({"pose_gain": (1, 1)}, "--pose-gain"),
    ({"controls": "/nonexistent.jsonl"}, "--controls file not found"),
])
def test_bad_controls_fail_in_one_line(values, message):
    with pytest.raises(InputError, match=message) as err:
        RenderOptions(model="ditto", **values).validate()
    assert "\n" not in str(err.value)


def test_ditto_options_refused_for_unet_models_and_built_from_the_command_line():
    with pytest.raises(InputError, match="--mouth-gain applies to --model ditto"):
        RenderOptions(model="osa-lcm", mouth_gain=2).validate()
    values = {"model": "ditto", "pose_offset": "0,10,-5", "pose_gain": "1,0.5,1", "blink": "never",
              "motion_overlap": 70, "mouth_gain": 1.5}
    opts = build(values)
    assert opts.pose_offset == (0.0, 10.0, -5.0) and opts.pose_gain == (1.0, 0.5, 1.0)
    assert (opts.blink, opts.motion_overlap, opts.mouth_gain) == ("never", 70, 1.5)
