"""Ditto's MotionStitch: generated motion -> driving keypoint parameters, with blinks and user controls.

Re-implemented from Ditto's ``core/atomic_components/motion_stitch.py`` (``MotionStitch.setup`` /
``__call__``, ``_mix_s_d_info``, ``_set_eye_blink_idx``, ``_fix_exp_for_x_d_info_v2``, ``ctrl_vad``,
``ctrl_motion``, ``fade``, ``_fix_gaze``) and the fade ramps of ``stream_pipeline_offline.py:setup_Nd``
(antgroup/ditto-talkinghead @ e9191cf). Steps 1-6 of the DITTO notes, section 8; the keypoint transform and
the stitching network (steps 7-8) are the caller's (``transform_keypoint`` callable).

Motion dicts ("infos") hold float32 arrays: ``scale`` (1, 1), ``pitch``/``yaw``/``roll`` (1, 66) logits
(or (1,) degrees once a control turned them into degrees), ``t`` (1, 3), ``exp`` (1, 63) and, for the source,
``kp`` (1, 63).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: LivePortrait keypoint indices driven by the generated lips and eyes (Ditto's ``_lip`` / ``_eye``).
LIP_KP = (6, 12, 14, 17, 19, 20)
EYE_KP = (11, 13, 15, 16, 18)
ANGLE_KEYS = ("pitch", "yaw", "roll")
BLINK_OPEN_MIN = 60
BLINK_OPEN_MAX = 100
#: Gaze fix of Ditto's ``_fix_gaze``: exp offsets per degree of head yaw/pitch change.
GAZE_X_RATIO = 0.26
GAZE_Y_RATIO = 0.28


def _bins_to_degrees(angle: np.ndarray) -> np.ndarray:
    """66 bin logits (1, 66) -> degrees (1,): ``sum(softmax(l) * arange(66)) * 3 - 97.5``; degrees pass through.

    Private copy (LivePortrait's head-pose decoding, as in Ditto's ``bin66_to_degree``) so that the controls
    need nothing from the networks package.
    """
    a = np.asarray(angle)
    if a.ndim > 1 and a.shape[1] == 66:
        a = a.astype(np.float32)
        e = np.exp(a - a.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return (p * np.arange(66, dtype=np.float32)).sum(axis=1) * 3 - 97.5
    return a


def _kp_mask(indices: Sequence[int]) -> np.ndarray:
    m = np.zeros((21, 3), dtype=np.float32)
    m[list(indices)] = 1
    return m.reshape(1, 63)


def blink_schedule(
    num_frames: int,
    blink_len: int = 15,
    open_n: int | Sequence[int] = 0,
    rng: random.Random | None = None,
) -> list[int]:
    """Per-frame row of the blink template, Ditto's ``_set_eye_blink_idx`` (row 0 outside blinks: it is still
    applied, so a template's row 0 is its open-eye offset).

    A blink plays template rows 0..blink_len-1 over consecutive frames. The first blink starts after the
    first gap; gaps are: ``open_n = 0`` random 60-100 frames (``rng.randint``, drawn as Ditto draws from
    Python's ``random``: first gap, last gap, then one per blink), ``-1`` no blink, ``n > 0`` fixed n, a list
    cycles (first gap = list[0]). No blink starts at or after ``num_frames - max(last gap, blink_len)``.

    Returns:
        list of ``num_frames`` ints in 0..blink_len-1.
    """
    rng = rng if rng is not None else random.Random()
    idx = [0] * num_frames
    if isinstance(open_n, (int, np.integer)):
        if open_n < 0:
            return idx
        gaps = [int(open_n)] if open_n > 0 else []
    elif isinstance(open_n, (list, tuple)) and len(open_n) > 0:
        gaps = [int(g) for g in open_n]
    else:
        raise ValueError(f"delta_eye_open_n must be an int or a non-empty list, got {open_n!r}")
    start = gaps[0] if gaps else rng.randint(BLINK_OPEN_MIN, BLINK_OPEN_MAX)
    last_gap = gaps[-1] if gaps else rng.randint(BLINK_OPEN_MIN, BLINK_OPEN_MAX)
    stop = num_frames - max(last_gap, blink_len)
    cur, k = start, 1
    while cur < stop:
        idx[cur : cur + blink_len] = range(blink_len)  # cur + blink_len <= stop + blink_len <= num_frames
        if gaps:
            gap = gaps[k % len(gaps)]
            k += 1
        else:
            gap = rng.randint(BLINK_OPEN_MIN, BLINK_OPEN_MAX)
        cur += blink_len + gap
    return idx


def fade_schedule(num_frames: int, fade_in: int = -1, fade_out: int = -1,
                  ctrl_info: dict[int, dict] | None = None) -> dict[int, dict]:
    """Per-frame ``fade_alpha`` controls of Ditto's ``setup_Nd``, merged into ``ctrl_info`` (a new dict).

    Fade-in: frame i < fade_in gets ``i / fade_in``. Fade-out: frames ``num_frames - fade_out - 1 ..
    num_frames - 1`` get ``max((e - i) / (e - s), 0)`` with s = num_frames - fade_out - 1, e = num_frames - 1
    (the last frame 0). Alpha 1 = generated motion, 0 = the fade target (see :class:`MotionStitch`).
    """
    out = {k: dict(v) for k, v in (ctrl_info or {}).items()}
    if fade_in > 0:
        for i in range(fade_in):
            out.setdefault(i, {})["fade_alpha"] = i / fade_in
    if fade_out > 0:
        s, e = num_frames - fade_out - 1, num_frames - 1
        for i in range(s, num_frames):
            out.setdefault(i, {})["fade_alpha"] = max((e - i) / (e - s), 0)
    return out


def _copy_info(info: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in info.items()}


class MotionStitch:
    """Relative motion, region masks, blinks, VAD, controls, fades and gaze fix (Ditto's ``MotionStitch``).

    Args:
        source: the source's motion info (:mod:`module docstring <avatar_cli.motion.stitch>` shapes, with
            ``kp``), angles as (1, 66) logits.
        num_frames: frames to be generated (sets the blink schedule so the clip ends with open eyes); -1 for
            a stream (a 3000-frame schedule, cycled).
        use_d_keys: keys taken from the generated motion: a tuple (default (exp, pitch, yaw, roll, t) for an
            image, (exp,) for a video) or a dict key -> gain (relative motion times the gain; for angles a
            gain on the 66 logits, so not linear in degrees).
        relative: motion relative to ``d0`` (the first generated frame unless set): ``x_s + (d - d0) * gain``.
        drive_eye: eyes from the generated motion (or the blink template); default True for an image.
        delta_eye_arr: (15, 63) blink template (exp offsets against the source), or None (eyes from the
            generated motion).
        delta_eye_open_n: blink gaps (:func:`blink_schedule`): 0 random 60-100, -1 none, n fixed, list cycles.
        fade_out_keys: keys blended toward the fade target by ``fade_alpha``.
        fade_type: "" (no fades), "d0" (target = first output frame after controls) or "s" (the source).
        is_image: the source is one image (video sources: per-frame source infos are passed per call).
        overall_ctrl: controls for every frame; per-frame controls passed to :meth:`__call__` win.
        d0: the relative-motion anchor, a motion dict or a (265,) vector (see :attr:`d0`).
        seed: seeds the blink RNG (``random.Random(seed)``); None draws from system entropy.
        transform_keypoint: optional ``info -> (1, 21, 3)`` keypoint transform, used by :meth:`keypoints`.

    Raises:
        ValueError: a bad ``delta_eye_open_n`` or ``fade_type``.
    """

    def __init__(
        self,
        source: Mapping[str, np.ndarray],
        *,
        num_frames: int = -1,
        use_d_keys: Sequence[str] | Mapping[str, float] | None = None,
        relative: bool = True,
        drive_eye: bool | None = None,
        delta_eye_arr: np.ndarray | None = None,
        delta_eye_open_n: int | Sequence[int] = -1,
        fade_out_keys: Sequence[str] = ("exp",),
        fade_type: str = "",
        is_image: bool = True,
        overall_ctrl: Mapping | None = None,
        d0: Mapping[str, np.ndarray] | None = None,
        seed: int | None = None,
        transform_keypoint: Callable[[dict], np.ndarray] | None = None,
    ):
        if fade_type not in ("", "d0", "s"):
            raise ValueError(f"fade_type must be '', 'd0' or 's', got {fade_type!r}")
        self.source = _copy_info(source)
        self.is_image = is_image
        if use_d_keys is None:
            use_d_keys = ("exp", "pitch", "yaw", "roll", "t") if is_image else ("exp",)
        self.use_d_keys = dict(use_d_keys) if isinstance(use_d_keys, Mapping) else tuple(use_d_keys)
        self.drive_eye = is_image if drive_eye is None else bool(drive_eye)
        self.relative = relative
        self.delta_eye_arr = None if delta_eye_arr is None else np.asarray(delta_eye_arr, dtype=np.float32)
        self.delta_eye_open_n = delta_eye_open_n
        self.fade_out_keys = tuple(fade_out_keys)
        self.fade_type = fade_type
        self.overall_ctrl = dict(overall_ctrl or {})
        self.transform_keypoint = transform_keypoint
        self.rng = random.Random(seed)

        # exp = exp_d * a1 + exp_s * a2 + delta_eye * a3 (Ditto's fix_exp_a1..a3)
        a1 = _kp_mask(LIP_KP)
        a2: np.ndarray | float = 0.0
        if self.drive_eye:
            if self.delta_eye_arr is None:
                a1 = a1 + _kp_mask(EYE_KP)
            else:
                a2 = _kp_mask(EYE_KP)
        self.exp_a1 = a1 * (1 - a2)
        self.exp_a2 = (1 - a1) + a1 * a2
        self.exp_a3 = a2

        self.num_frames = None
        self.blink_idx: list[int] | None = None
        self.set_num_frames(num_frames)

        src_deg = {k: float(_bins_to_degrees(self.source[k]).reshape(-1)[0]) for k in ("yaw", "pitch")}
        self.pose_s = (src_deg["yaw"], src_deg["pitch"])
        self.fade_dst = _copy_info(self.source) if fade_type == "s" else None
        self.d0 = d0
        self.idx = 0

    @property
    def d0(self) -> dict[str, np.ndarray] | None:
        """The relative-motion anchor (a motion dict); settable with a dict or a (265,) motion vector (e.g.
        :attr:`avatar_cli.motion.windows.OnlineMotion.d0` in streaming mode). None: taken from the first frame."""
        return self._d0

    @d0.setter
    def d0(self, value) -> None:
        if value is None:
            self._d0 = None
        elif isinstance(value, Mapping):
            self._d0 = _copy_info(value)
        else:
            from avatar_cli.motion.condition import vector_to_motion

            self._d0 = vector_to_motion(np.asarray(value))

    def set_num_frames(self, num_frames: int) -> None:
        """(Re)compute the blink schedule for ``num_frames`` frames (-1: 3000, cycled); Ditto's ``set_Nd``."""
        if num_frames == self.num_frames:
            return
        self.num_frames = num_frames
        if self.drive_eye and self.delta_eye_arr is not None:
            n = 3000 if num_frames == -1 else num_frames
            self.blink_idx = blink_schedule(n, len(self.delta_eye_arr), self.delta_eye_open_n, self.rng)

    def _mix(self, d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s, keys = self.source, self.use_d_keys
        if self.d0 is not None:
            gains = keys if isinstance(keys, dict) else {}
            d = {k: s[k] + (v - self.d0[k]) * gains.get(k, 1) for k, v in d.items()}
        for k, v in s.items():
            if k not in d or k not in keys:
                d[k] = np.array(v, copy=True)
        if isinstance(keys, dict) and self.d0 is None:
            for k, gain in keys.items():
                d[k] = d[k] * gain
        return d

    def __call__(self, motion: Mapping[str, np.ndarray], **ctrl) -> dict[str, np.ndarray]:
        """One output frame's driving motion info (steps 1-6), in order.

        Args:
            motion: the generated frame (:func:`~avatar_cli.motion.condition.vector_to_motion`).
            **ctrl: per-frame controls (override ``overall_ctrl``): ``delta_pitch``/``delta_yaw``/``delta_roll``
                (degrees, added), ``alpha_pitch``/``alpha_yaw``/``alpha_roll`` (multiply the logits, or the
                degrees when a delta turned the angle into degrees), ``delta_exp`` (63 values, added),
                ``vad_alpha`` (< 1 blends all of exp toward the source), ``fade_alpha`` (1 = motion, 0 = fade
                target) and ``fade_out_keys``.

        Returns:
            dict with ``scale`` (1, 1), ``pitch``/``yaw``/``roll`` (1,) degrees, ``t`` (1, 3), ``exp`` (1, 63),
            ``kp`` (1, 63), float32: the input of LivePortrait's keypoint transform.
        """
        kw = {**self.overall_ctrl, **ctrl}
        d = _copy_info(motion)
        if self.relative and self.d0 is None:
            self.d0 = _copy_info(d)
        d = self._mix(d)

        delta_eye: np.ndarray | float = 0.0
        if self.drive_eye and self.delta_eye_arr is not None:
            delta_eye = self.delta_eye_arr[self.blink_idx[self.idx % len(self.blink_idx)]][None]
        d["exp"] = d["exp"] * self.exp_a1 + self.source["exp"] * self.exp_a2 + delta_eye * self.exp_a3

        vad = kw.get("vad_alpha", 1)
        if vad < 1:
            d["exp"] = d["exp"] * vad + self.source["exp"] * (1 - vad)

        for k in ANGLE_KEYS:  # controls (Ditto's ctrl_motion)
            if f"delta_{k}" in kw:
                d[k] = _bins_to_degrees(d[k]) + np.float32(kw[f"delta_{k}"])
        for k in ANGLE_KEYS:
            if f"alpha_{k}" in kw:
                d[k] = d[k] * np.float32(kw[f"alpha_{k}"])
        if "delta_exp" in kw:
            d["exp"] = d["exp"] + np.asarray(kw["delta_exp"], dtype=np.float32).reshape(1, -1)

        if self.fade_type == "d0" and self.fade_dst is None:
            self.fade_dst = _copy_info(d)
        if "fade_alpha" in kw and self.fade_type in ("d0", "s"):
            a = kw["fade_alpha"]
            for k in kw.get("fade_out_keys", self.fade_out_keys):
                if k != "kp":
                    d[k] = d[k] * a + self.fade_dst[k] * (1 - a)

        if self.drive_eye:  # gaze fix: keep the eyes on the camera when the head turns
            dx = (float(_bins_to_degrees(d["yaw"]).reshape(-1)[0]) - self.pose_s[0]) * GAZE_X_RATIO
            dy = (float(_bins_to_degrees(d["pitch"]).reshape(-1)[0]) - self.pose_s[1]) * GAZE_Y_RATIO
            exp = np.array(d["exp"], dtype=np.float32, copy=True)
            if dx > 0:
                exp[0, 33] += dx * 0.0007
                exp[0, 45] += dx * 0.001
            else:
                exp[0, 33] += dx * 0.001
                exp[0, 45] += dx * 0.0007
            exp[0, 34] += dy * -0.001
            exp[0, 46] += dy * -0.001
            d["exp"] = exp

        self.idx += 1
        out = {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}
        for k in ANGLE_KEYS:
            out[k] = np.asarray(_bins_to_degrees(out[k]), dtype=np.float32).reshape(1)
        return out

    def source_info(self) -> dict[str, np.ndarray]:
        """The source info with angles in degrees (1,), the same form :meth:`__call__` returns."""
        out = _copy_info(self.source)
        for k in ANGLE_KEYS:
            out[k] = np.asarray(_bins_to_degrees(out[k]), dtype=np.float32).reshape(1)
        return out

    def keypoints(self, motion: Mapping[str, np.ndarray], **ctrl) -> tuple[np.ndarray, np.ndarray]:
        """``(x_s, x_d)`` keypoints (1, 21, 3) through the ``transform_keypoint`` callable given at init.

        Raises:
            RuntimeError: no ``transform_keypoint`` was given.
        """
        if self.transform_keypoint is None:
            raise RuntimeError("MotionStitch.keypoints needs transform_keypoint=... at construction")
        d = self(motion, **ctrl)
        return self.transform_keypoint(self.source_info()), self.transform_keypoint(d)
