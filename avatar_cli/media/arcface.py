"""The face embedding of the Hallo family: InsightFace's ArcFace (512-d, the optional ``arcface``
extra, as Hallo's ``face_analysis``), or one saved with numpy (``--face-embedding FILE.npy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


def arcface_embedding(image: np.ndarray, model_root: str | Path) -> torch.Tensor | None:
    """InsightFace's ArcFace embedding (512-d, unnormalised, as Hallo uses) of the largest face.

    Args:
        image: (S, S, 3) uint8 RGB.
        model_root: a folder with ``models/`` holding InsightFace's detection and recognition ONNX
            files (Hallo's ``face_analysis``).

    Returns:
        (512,) float32, or None when no face is found.

    Raises:
        ImportError: insightface / onnxruntime not installed (the ``arcface`` extra).
    """
    from insightface.app import FaceAnalysis  # optional: pip install 'avatar-cli[arcface]'

    app = FaceAnalysis(name="", root=str(model_root), providers=["CPUExecutionProvider"],
                       allowed_modules=["detection", "recognition"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))  # InsightFace takes BGR
    if not faces:
        return None
    largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return torch.from_numpy(np.asarray(largest.embedding, dtype=np.float32))


def load_embedding(path: str | Path) -> torch.Tensor:
    """A face embedding saved with numpy (.npy, 512 floats). Raises InputError if unreadable."""
    try:
        values = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read face embedding {path}: {err}; give a .npy file of 512 floats") from None
    if values.shape != (512,):
        raise InputError(f"face embedding {path} has {values.size} values; it needs 512 (ArcFace)")
    return torch.from_numpy(values)
