"""Ditto's per-frame condition vector and its 265-d motion layout.

Re-implemented from Ditto's ``core/atomic_components/condition_handler.py`` (condition assembly, emotion
one-hot softmax, mirror indexing of per-frame eye states) and ``core/atomic_components/audio2motion.py``
(``_cvt_LP_motion_info``: the motion vector layout), antgroup/ditto-talkinghead @ e9191cf. See
docs/DITTO notes, sections 6 and 7.

Per frame the LMDM is conditioned on ``[audio 1024 | emotion 8 | eye_open 2 | eye_ball 6 | source kp 63]``
(1103 dims), and generates a 265-d motion vector ``[scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63]``
(angles as 66-bin logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avatar_cli.errors import InputError

#: Emotion labels in the order of the LMDM's 8 emotion entries (HSEmotion's ``enet_b2_8`` order).
EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")

AUDIO_DIM = 1024
EMOTION_DIM = 8
EYE_OPEN_DIM = 2
EYE_BALL_DIM = 6
KP_DIM = 63
COND_DIM = AUDIO_DIM + EMOTION_DIM + EYE_OPEN_DIM + EYE_BALL_DIM + KP_DIM  # 1103
#: Slices of the 1103-d condition vector.
COND_SLICES = {
    "audio": slice(0, 1024),
    "emotion": slice(1024, 1032),
    "eye_open": slice(1032, 1034),
    "eye_ball": slice(1034, 1040),
    "sc": slice(1040, 1103),
}

#: (key, shape of the dict entry, width in the vector) of the 265-d motion vector, in order.
MOTION_LAYOUT = (
    ("scale", (1, 1), 1),
    ("pitch", (1, 66), 66),
    ("yaw", (1, 66), 66),
    ("roll", (1, 66), 66),
    ("t", (1, 3), 3),
    ("exp", (1, 63), 63),
)
MOTION_DIM = 265
#: Dims of the motion vector that Ditto smooths (scale, angles, translation: everything but exp).
POSE_DIMS = 202


def _label_index(label: int | str) -> int:
    if isinstance(label, (bool, np.bool_)):
        raise InputError(f"emotion label {label!r} is not a name or an index 0-7")
    if isinstance(label, (int, np.integer)):
        if not 0 <= int(label) < 8:
            raise InputError(f"emotion index {label} is out of range 0-7 ({', '.join(EMOTION_LABELS)})")
        return int(label)
    if isinstance(label, str):
        name = label.strip().lower()
        if name in EMOTION_LABELS:
            return EMOTION_LABELS.index(name)
        raise InputError(f"unknown emotion {label!r}: use one of {', '.join(EMOTION_LABELS)}")
    raise InputError(f"emotion label {label!r} is not a name or an index 0-7")


def emotion_vector(labels: int | str | Sequence[int | str]) -> np.ndarray:
    """The emotion entries for one label or a mix of labels: ``softmax(e)`` with e = 8 at the labels, else 0.

    Follows ``_get_emo_avg`` of Ditto's condition_handler.py.

    Args:
        labels: an index 0-7, a name from :data:`EMOTION_LABELS`, a ``"happy+surprise"`` mix, or a sequence
            of indices/names (a mix).

    Returns:
        (8,) float32, sums to 1 (neutral alone: 0.99766 at index 4, 0.000335 elsewhere).

    Raises:
        InputError: an unknown name or an index out of range.
    """
    if isinstance(labels, str) and "+" in labels:
        labels = [p for p in labels.split("+") if p.strip()]
    if isinstance(labels, (str, int, np.integer)):
        labels = [labels]
    e = np.zeros(EMOTION_DIM, dtype=np.float32)
    for lab in labels:
        e[_label_index(lab)] = 8.0
    e = np.exp(e - e.max())
    return (e / e.sum()).astype(np.float32)


def parse_emotion(emo) -> np.ndarray:
    """Normalise the accepted emotion forms to an (m, 8) float32 table (``_parse_emo_seq``).

    Accepted forms:
        - an int 0-7 or a name (``"happy"``), or a mix ``"happy+surprise"`` / ``"mix:happy+surprise"``: m = 1;
        - a list/tuple of ints or names: one mix, m = 1;
        - a list of lists (per-frame labels, each a label or a mix): m = len(list), row i for frame i;
        - an (m, 8) array of emotion scores, used as is (float32).

    Raises:
        InputError: anything else.
    """
    if isinstance(emo, np.ndarray):
        if emo.ndim == 2 and emo.shape[1] == EMOTION_DIM and len(emo) > 0:
            return emo.astype(np.float32, copy=False)
        if emo.ndim == 1 and emo.shape[0] == EMOTION_DIM:
            return emo.astype(np.float32).reshape(1, EMOTION_DIM)
        raise InputError(f"an emotion array must have shape (m, 8), got {emo.shape}")
    if isinstance(emo, str) and emo.lower().startswith("mix:"):
        emo = emo[4:]
    if isinstance(emo, (str, int, np.integer)):
        return emotion_vector(emo).reshape(1, EMOTION_DIM)
    if isinstance(emo, (list, tuple)) and emo:
        if all(isinstance(x, (list, tuple)) for x in emo):
            return np.stack([emotion_vector(list(x)) for x in emo], 0)
        if all(isinstance(x, (str, int, np.integer)) for x in emo):
            if any(isinstance(x, str) and "+" in x for x in emo):  # per-frame strings, some mixes
                return np.stack([emotion_vector(x) for x in emo], 0)
            return emotion_vector(list(emo)).reshape(1, EMOTION_DIM)
    raise InputError(f"unsupported emotion {emo!r}: a name, a mix 'a+b', per-frame label lists or an (m, 8) array")


def mirror_index(index: int, size: int) -> int:
    """Ping-pong index into a sequence of ``size`` (Ditto's ``_mirror_index``): 0..size-1, size-1..0, ..."""
    turn, res = divmod(index, size)
    return res if turn % 2 == 0 else size - res - 1


class AudioConditions:
    """Builds the LMDM condition rows ``[audio | emotion | eye_open | eye_ball | sc]`` (1103 per frame).

    Re-implements Ditto's ``ConditionHandler.setup`` / ``__call__`` (all four extra conditions on, as in the
    released cfg).

    Args:
        emotion: any form accepted by :func:`parse_emotion` (Ditto's default is 4, neutral).
        eye_open: (2,) for an image source, or (k, 2) per source-video frame.
        eye_ball: (6,) or (k, 6), order [Lx, Rx, Ly, Ry, Lz, Rz].
        source_kp: the source canonical keypoints ``kp``, 63 values ((63,), (1, 63) or (21, 3)).
        eye_f0_mode: for a video source, use frame 0's eye state throughout.
        hold_last: per-frame emotions past the table's end keep its last row (``--emotion FILE``) instead
            of Ditto's cycling (``i % m``).
    """

    def __init__(self, emotion, eye_open, eye_ball, source_kp, *, eye_f0_mode: bool = False,
                 hold_last: bool = False):
        self.emotion = parse_emotion(emotion)
        self.hold_last = hold_last
        self.eye_open = np.asarray(eye_open, dtype=np.float32).reshape(-1, EYE_OPEN_DIM)
        self.eye_ball = np.asarray(eye_ball, dtype=np.float32).reshape(-1, EYE_BALL_DIM)
        self.sc = np.asarray(source_kp, dtype=np.float32).reshape(KP_DIM)
        self.eye_f0_mode = eye_f0_mode

    def _eye_rows(self, table: np.ndarray, idx: int, n: int) -> np.ndarray:
        if len(table) == 1 or self.eye_f0_mode:
            return np.repeat(table[:1], n, 0)
        return table[[mirror_index(max(i, 0), len(table)) for i in range(idx, idx + n)]]

    def __call__(self, audio: np.ndarray, start_idx: int = 0) -> np.ndarray:
        """Condition rows for audio frames ``start_idx .. start_idx + n - 1``.

        Args:
            audio: (n, 1024) float32 HuBERT features at 25 fps.
            start_idx: the frame index of ``audio[0]``; negative for the streaming silence prefill (clamped
                to 0 when indexing per-frame emotions and eye states, as Ditto does).

        Returns:
            (n, 1103) float32.
        """
        audio = np.asarray(audio, dtype=np.float32)
        n = audio.shape[0]
        m = len(self.emotion)
        if self.hold_last:
            emo = self.emotion[[min(max(i, 0), m - 1) for i in range(start_idx, start_idx + n)]]
        else:
            emo = self.emotion[[max(i, 0) % m for i in range(start_idx, start_idx + n)]]
        return np.concatenate(
            [
                audio,
                emo,
                self._eye_rows(self.eye_open, start_idx, n),
                self._eye_rows(self.eye_ball, start_idx, n),
                np.repeat(self.sc[None], n, 0),
            ],
            -1,
        ).astype(np.float32, copy=False)


def motion_to_vector(info: dict) -> np.ndarray:
    """Motion dict -> 265-d vector ``[scale-1 | pitch | yaw | roll | t | exp]`` (``_cvt_LP_motion_info`` dic2arr).

    Args:
        info: ``scale`` (1 value), ``pitch``/``yaw``/``roll`` (66 logits each), ``t`` (3), ``exp`` (63); any
            leading shape that flattens to those sizes; ``kp`` and other keys are ignored.

    Returns:
        (265,) float32.
    """
    parts = []
    for key, _, width in MOTION_LAYOUT:
        v = np.asarray(info[key], dtype=np.float32).reshape(width)
        parts.append(v - 1 if key == "scale" else v)
    return np.concatenate(parts, 0)


def vector_to_motion(vec: np.ndarray) -> dict[str, np.ndarray]:
    """265-d motion vector -> dict (``_cvt_LP_motion_info`` arr2dic).

    Returns:
        ``scale`` (1, 1) (= vec[0] + 1), ``pitch``/``yaw``/``roll`` (1, 66) logits, ``t`` (1, 3), ``exp`` (1, 63),
        all float32 copies.
    """
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    if vec.shape[0] < MOTION_DIM:
        raise ValueError(f"a motion vector has {MOTION_DIM} values, got {vec.shape[0]}")
    out, s = {}, 0
    for key, shape, width in MOTION_LAYOUT:
        v = vec[s : s + width].reshape(shape).copy()
        out[key] = v + 1 if key == "scale" else v
        s += width
    return out
