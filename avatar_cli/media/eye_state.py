"""Ditto's eye state (openness and iris offset, ``core/utils/eye_info.py``) from MediaPipe's face
landmarker on the 512 crop, with neutral constants where MediaPipe or its model is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

# --- eye state without MediaPipe. eye_open is Ditto's ratio (3 lid distances over the eye width)
# computed on MediaPipe's canonical face mesh (mediapipe/modules/face_geometry/data/
# canonical_face_model.obj, neutral face, eyes open): 0.7173 for both eyes. eye_ball zeros = iris at
# the eye centre. Not yet checked against medians of the real landmarker on portraits (DITTO.md 4).
NEUTRAL_EYE_OPEN = np.array([0.7173, 0.7173], dtype=np.float32)
NEUTRAL_EYE_BALL = np.zeros(6, dtype=np.float32)


def eye_state(landmarks478: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ditto's eye openness and iris offset from MediaPipe's 478 face-landmarker points.

    M: ``core/utils/eye_info.py:EyeAttrUtilsByMP``. With d the 3-D distance and
    ``dir(a, b) = (a - b) / (|a - b| + 1e-8)``:

    - ``open_L = (d(145,159) + d(144,160) + d(153,158)) / (d(33,133) + 1e-8)``; right eye with
      374/386, 373/387, 380/385 over 263/362.
    - ``move_L = (dir(p468, c_L) - dir(p33, p133)) * |p468 - c_L|``, c_L the midpoint of 33/133;
      right eye with 473, 263/362.

    Args:
        landmarks478: (478, 3) normalised (x, y, z) landmarks (or (478, 2)).

    Returns:
        (eye_open (2,) float32 [L, R], eye_ball (6,) float32 [Lx, Rx, Ly, Ry, Lz, Rz]; for 2-D
        input the z entries are 0).
    """
    p = np.asarray(landmarks478, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 478 or p.shape[1] not in (2, 3):
        raise ValueError(f"eye_state takes (478, 3) landmarks, got {p.shape}")
    if p.shape[1] == 2:
        p = np.hstack([p, np.zeros((478, 1))])

    def dist(a, b):
        return float(np.linalg.norm(p[a] - p[b]))

    def direction(a, b):
        v = a - b
        return v / (np.linalg.norm(v) + 1e-8)

    def eye(outer, inner, lids, iris):
        width = dist(outer, inner)
        openness = sum(dist(a, b) for a, b in lids) / (width + 1e-8)
        centre = (p[outer] + p[inner]) / 2
        move = (direction(p[iris], centre) - direction(p[outer], p[inner])) * np.linalg.norm(p[iris] - centre)
        return openness, move

    open_l, move_l = eye(33, 133, ((145, 159), (144, 160), (153, 158)), 468)
    open_r, move_r = eye(263, 362, ((374, 386), (373, 387), (380, 385)), 473)
    eye_open = np.array([open_l, open_r], dtype=np.float32)
    eye_ball = np.stack([move_l, move_r], axis=-1).reshape(-1).astype(np.float32)  # (3, 2) -> 6
    return eye_open, eye_ball


def detect_eye_state(img_crop: np.ndarray, task_path: str | Path | None = None,
                     warn: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
    """Eye state of the 512 crop with MediaPipe's FaceLandmarker (``face_landmarker.task``).

    Runs only when ``mediapipe`` is importable and ``task_path`` names an existing file; otherwise
    (or when the landmarker finds no face) returns :data:`NEUTRAL_EYE_OPEN` /
    :data:`NEUTRAL_EYE_BALL` and sends a one-line note to ``warn``.

    Args:
        img_crop: (512, 512, 3) uint8 RGB (M: ``source2info.py:_get_eye_info`` runs on the crop).
        task_path: MediaPipe Tasks model file.

    Returns:
        (eye_open (2,) float32, eye_ball (6,) float32), see :func:`eye_state`.
    """
    reason = None
    if task_path is None or not Path(task_path).is_file():
        reason = "no face_landmarker.task" if task_path is None else f"{task_path} is missing"
    else:
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError:
            reason = "mediapipe is not installed"
    if reason is None:
        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task_path)),
                                               num_faces=1)
        with vision.FaceLandmarker.create_from_options(options) as landmarker:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(img_crop)))
        if result.face_landmarks:
            points = np.array([[q.x, q.y, q.z] for q in result.face_landmarks[0]], dtype=np.float32)
            return eye_state(points)
        reason = "MediaPipe found no face in the crop"
    warn(f"note: eye state uses neutral constants ({reason}): eye_open "
         f"{NEUTRAL_EYE_OPEN[0]:.4f}, gaze centred")
    return NEUTRAL_EYE_OPEN.copy(), NEUTRAL_EYE_BALL.copy()
