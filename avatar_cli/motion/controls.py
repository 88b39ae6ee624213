"""The command line's Ditto controls -> the values Ditto's motion path takes.

``--emotion``, ``--blink`` and ``--controls`` are parsed here (no torch, so bad values fail before a model
loads); :meth:`avatar_cli.pipelines.ditto.DittoPipeline.controls` turns the parsed values into
:class:`~avatar_cli.motion.condition.AudioConditions`, :class:`~avatar_cli.motion.stitch.MotionStitch` and
window settings. The targets are Ditto's own knobs (``condition_handler.py`` ``emo``,
``motion_stitch.py`` ``delta_eye_open_n`` / ``use_d_keys`` / ``overall_ctrl_info`` / ``ctrl_info``,
antgroup/ditto-talkinghead @ e9191cf; DITTO notes sections 6 and 8).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from avatar_cli.errors import InputError
from avatar_cli.motion.condition import EMOTION_LABELS, emotion_vector

#: Per-frame keys a ``--controls`` file may set (MotionStitch's per-frame controls).
CONTROL_KEYS = ("delta_pitch", "delta_yaw", "delta_roll", "alpha_pitch", "alpha_yaw", "alpha_roll", "delta_exp",
                "vad_alpha")


def _mix(text: str) -> np.ndarray:
    """``NAME`` or ``NAME:w,NAME:w`` (or Ditto's ``a+b``) -> (8,) scores."""
    text = text.strip()
    if text.lower().startswith("mix:"):
        text = text[4:]
    if "+" in text or ("," not in text and ":" not in text):
        return emotion_vector(text)  # one label, or Ditto's equal mix (softmax over the labels)
    rows, weights = [], []
    for part in text.split(","):
        name, _, w = part.partition(":")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise InputError(f"--emotion weight {w!r} is not a number (use NAME:w,NAME:w such as happy:0.7,sad:0.3)") from None
        if weight < 0:
            raise InputError(f"--emotion weights must be >= 0 (got {weight:g} for {name})")
        rows.append(emotion_vector(name))
        weights.append(weight)
    total = sum(weights)
    if total <= 0:
        raise InputError("--emotion weights must not all be 0")
    return (np.asarray(weights, np.float32)[:, None] * np.stack(rows)).sum(0) / np.float32(total)


def _timeline(path: Path) -> np.ndarray:
    """A per-frame emotion file -> (m, 8): rows ``frame, emotion`` (CSV with a header ``frame,emotion``, or
    JSON: a list of ``{"frame": i, "emotion": "happy"}`` or JSON lines of the same); each label holds from its
    frame to the next row's, the last one to the end."""
    text = path.read_text()
    rows: list[tuple[int, str]] = []
    try:
        if path.suffix.lower() == ".csv":
            for rec in csv.DictReader(text.splitlines()):
                if rec.get(None):
                    raise ValueError("a mix with commas must be quoted, e.g. 10,\"sad:1,angry:1\"")
                rows.append((int(rec["frame"]), str(rec["emotion"])))
        else:
            stripped = text.strip()
            items = json.loads(stripped) if stripped.startswith("[") else [json.loads(l) for l in stripped.splitlines() if l.strip()]
            rows = [(int(r["frame"]), str(r["emotion"])) for r in items]
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"--emotion file {path}: rows need 'frame' (int) and 'emotion' ({type(e).__name__}: {e})") from None
    if not rows:
        raise InputError(f"--emotion file {path} has no rows")
    rows.sort()
    if rows[0][0] != 0 or any(f < 0 for f, _ in rows):
        raise InputError(f"--emotion file {path}: the first row must be frame 0")
    last = rows[-1][0]
    table = np.zeros((last + 1, 8), np.float32)
    for (f, label), nxt in zip(rows, [r[0] for r in rows[1:]] + [last + 1]):
        table[f:nxt] = _mix(label)
    return table


def parse_emotion_option(text: str | None) -> np.ndarray | None:
    """``--emotion`` -> an (m, 8) float32 table of emotion scores (rows per frame; m = 1 for one setting).

    Forms: ``NAME`` (one of :data:`EMOTION_LABELS`: Ditto's softmax(8 at the label)); ``NAME:w,NAME:w`` a
    weighted mix: the weights normalised to sum 1, times each label's one-label row, summed (a convex mix of
    one-label rows); ``a+b`` Ditto's equal mix; or a FILE (.csv / .json / .jsonl) of per-frame labels (see
    :func:`_timeline`; a frame past the file's last row keeps its last label).

    Raises:
        InputError: an unknown name, a bad weight or file.
    """
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() in (".csv", ".json", ".jsonl") or path.is_file():
        if not path.is_file():
            raise InputError(f"--emotion file not found: {path}")
        return _timeline(path)
    try:
        return _mix(text).reshape(1, 8)
    except InputError as e:
        raise InputError(f"--emotion {text!r}: {e} (names: {', '.join(EMOTION_LABELS)})") from None


def parse_blink(text: str | None) -> int | None:
    """``--blink auto|never|N`` -> Ditto's ``delta_eye_open_n``: 0 (random 60-100 frame gaps), -1 (none),
    N >= 1 (a blink every N frames); None keeps the cfg's.

    Raises:
        InputError: anything else.
    """
    if text is None:
        return None
    value = str(text).strip().lower()
    if value == "auto":
        return 0
    if value in ("never", "off"):
        return -1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"--blink must be auto, never or a number of frames >= 1 between blinks (got {text!r})")
    return n


def read_controls(path: str | Path | None) -> dict[int, dict]:
    """A ``--controls`` file, JSON lines ``{"frame": i, "delta_yaw": 10, ...}`` -> ``{frame: {key: value}}``.

    Keys: :data:`CONTROL_KEYS` (degrees for ``delta_*``, gains for ``alpha_*`` and ``vad_alpha``, 63 values for
    ``delta_exp``). A frame's values apply to that frame only and win over the overall controls
    (``--pose-offset`` and the cfg's correction) for the keys they name, as Ditto's ``ctrl_info`` does.

    Raises:
        InputError: an unreadable file, a line without an int ``frame``, an unknown key or a bad value.
    """
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--controls file not found: {p}")
    out: dict[int, dict] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            frame = rec.pop("frame")
            if not isinstance(frame, int) or frame < 0:
                raise ValueError("'frame' must be an int >= 0")
        except (ValueError, KeyError, AttributeError) as e:
            raise InputError(f"--controls {p} line {n}: a JSON object with an int 'frame' is needed ({e})") from None
        unknown = sorted(set(rec) - set(CONTROL_KEYS))
        if unknown:
            raise InputError(f"--controls {p} line {n}: unknown key {unknown[0]!r} (use {', '.join(CONTROL_KEYS)})")
        for k, v in rec.items():
            ok = (isinstance(v, list) and len(v) == 63) if k == "delta_exp" else isinstance(v, (int, float))
            if not ok:
                raise InputError(f"--controls {p} line {n}: {k} must be "
                                 f"{'63 numbers' if k == 'delta_exp' else 'a number'}")
        out.setdefault(frame, {}).update(rec)
    return out
