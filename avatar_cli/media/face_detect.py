"""SCRFD face detection as Ditto runs InsightFace's ``det_10g.onnx`` (``core/aux_models/modules/
retinaface.py``): letterbox, blob, anchor decode, NMS, the largest face; and the onnxruntime session
helpers the face models share. Re-implemented from the reading of antgroup/ditto-talkinghead @ e9191cf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .resize import resize_linear

# --- SCRFD (retinaface.py)
DET_SIZE = 512
DET_THRESH = 0.5
NMS_THRESH = 0.4
DET_STRIDES = (8, 16, 32)
DET_ANCHORS = 2
DET_MEAN, DET_STD = 127.5, 128.0


def letterbox(image: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Scale the long side to ``size`` (short side truncated with ``int``), pad right/bottom with 0.

    Returns:
        ((size, size, 3) uint8, det_scale = new height / old height).
    """
    h, w = image.shape[:2]
    if h / w > 1.0:
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:new_h, :new_w] = resize_linear(image, (new_w, new_h))
    return out, new_h / h


def det_blob(det_image: np.ndarray) -> np.ndarray:
    """(1, 3, S, S) float32 ``(x - 127.5) / 128`` with the channels reversed (blobFromImage with
    swapRB; Ditto passes RGB, so the network sees BGR as InsightFace trained it)."""
    x = (det_image[:, :, ::-1].astype(np.float32) - DET_MEAN) / DET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _anchor_centres(size: int, stride: int) -> np.ndarray:
    n = size // stride
    ys, xs = np.mgrid[:n, :n]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, DET_ANCHORS, axis=0)


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> list[int]:
    """Greedy non-maximum suppression with InsightFace's +1 area convention.

    Args:
        dets: (N, 5) x1, y1, x2, y2, score.
        thresh: a box is dropped when its IoU with a kept higher-scored box exceeds this.

    Returns:
        Row indices kept, best score first.
    """
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= thresh]
    return keep


def scrfd_decode(outputs: Sequence[np.ndarray], det_scale: float, size: int = DET_SIZE,
                 threshold: float = DET_THRESH,
                 nms_thresh: float = NMS_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """Decode SCRFD's nine outputs into faces in image pixels (InsightFace ``scrfd.py`` rules).

    Args:
        outputs: scores (A_s, 1) x 3, box distances (A_s, 4) x 3, keypoint offsets (A_s, 10) x 3
            for strides 8, 16, 32 in that order, A_s = (size / s)^2 * 2 anchors (a leading batch
            axis of 1 is accepted). Distances are in stride units.
        det_scale: letterbox scale (:func:`letterbox`); boxes are divided by it.
        size: the network input side.
        threshold: minimum score kept (>=).
        nms_thresh: NMS IoU threshold (:func:`nms`).

    Returns:
        (dets (N, 5) float32 x1, y1, x2, y2, score; kps (N, 5, 2) float32), best score first.
    """
    outs = [o[0] if o.ndim == 3 else o for o in outputs]
    scores_l, boxes_l, kps_l = [], [], []
    for idx, stride in enumerate(DET_STRIDES):
        centres = _anchor_centres(size, stride)
        scores = outs[idx].reshape(-1)
        dist = outs[idx + 3].reshape(-1, 4) * stride
        kdist = outs[idx + 6].reshape(-1, 10) * stride
        keep = np.where(scores >= threshold)[0]
        boxes = np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1)
        kps = np.tile(centres, (1, 5)) + kdist
        scores_l.append(scores[keep, None])
        boxes_l.append(boxes[keep])
        kps_l.append(kps[keep].reshape(-1, 5, 2))
    scores = np.vstack(scores_l)
    order = scores.ravel().argsort()[::-1]
    boxes = np.vstack(boxes_l) / det_scale
    kps = np.vstack(kps_l) / det_scale
    pre = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order]
    keep = nms(pre, nms_thresh)
    return pre[keep], kps[order][keep].astype(np.float32)


def largest_box(dets: np.ndarray) -> np.ndarray | None:
    """The (x1, y1, x2, y2) row of ``dets`` with the largest area (Ditto's choice), or None."""
    if len(dets) == 0:
        return None
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    return dets[np.argsort(-area)[0], :4]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("Ditto's face crop needs onnxruntime: pip install onnxruntime "
                         "(a dependency of avatar-cli), or pass --face-box x,y,w,h") from None
    return onnxruntime


def _providers(ort, device: str) -> list[str]:
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
