"""Face and lip boxes from MediaPipe's face mesh (the optional ``face`` extra), and the lip box
guessed from a face box when no landmarks are known. Used by the Hallo family's face conditioning
(:func:`avatar_cli.media.face.face_conditions`) and EchoMimic's fallback detector.
"""

from __future__ import annotations

import numpy as np

from .face_types import Box


def detect_face(image: np.ndarray) -> tuple[Box, Box] | None:
    """Face and lip boxes of the largest face with MediaPipe's face mesh (the ``face`` extra).

    Args:
        image: (S, S, 3) uint8 RGB.

    Returns:
        (face box, lip box) in pixels, or None when no face is found.

    Raises:
        ImportError: MediaPipe (with its packaged face-mesh model) is not installed.
    """
    import mediapipe as mp  # optional: pip install 'avatar-cli[face]'

    mesh = mp.solutions.face_mesh
    with mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as model:
        result = model.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    points = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])
    lips = sorted({i for pair in mesh.FACEMESH_LIPS for i in pair})

    def bounds(p: np.ndarray) -> Box:
        x0, y0 = p.min(axis=0)
        x1, y1 = p.max(axis=0)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    return bounds(points), bounds(points[lips])


def lip_box_from_face(face_box: Box) -> Box:
    """Where the lips sit in a frontal face box when no landmarks are known: the middle half of
    the width, 65-85 % of the height (typical portrait proportions)."""
    x, y, w, h = face_box
    return x + 0.25 * w, y + 0.65 * h, 0.5 * w, 0.2 * h
