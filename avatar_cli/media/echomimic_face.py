"""EchoMimic's face rule: MTCNN's largest face (facenet-pytorch, the optional ``mtcnn`` extra, with
MediaPipe as the fallback), the dilated face-locator mask and the face crop of the portrait.

Restated from antgroup/echomimic ``infer_audio2vid.py`` / ``infer_audio2vid_acc.py`` (select_face, the
face-mask and face-crop block) and ``src/utils/util.py`` crop_and_pad.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .face_mesh import detect_face
from .face_types import Box, FaceConditions

ECHO_MASK_DILATION = 0.1   # --facemusk_dilation_ratio
ECHO_CROP_DILATION = 0.5   # --facecrop_dilation_ratio


def _resize_u8(image: np.ndarray, side: int) -> np.ndarray:
    """(h, w[, c]) uint8 -> (side, side[, c]) uint8, bilinear without antialiasing (half-pixel
    centres, OpenCV's INTER_LINEAR rule; its fixed-point rounding may differ by one level)."""
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image)).float()
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False, antialias=False)
    out = out[0].round().clamp(0, 255).to(torch.uint8)
    return (out[0] if image.ndim == 2 else out.permute(1, 2, 0)).numpy()


def detect_face_mtcnn(image: np.ndarray) -> Box | None:
    """EchoMimic's face detector: facenet-pytorch's MTCNN with the inference script's settings
    (``infer_audio2vid*.py``: image_size 320, min_face_size 20, thresholds 0.6/0.7/0.7, factor 0.709),
    then ``select_face``: the largest box with probability > 0.8.

    Upstream hands MTCNN the image as OpenCV reads it (BGR); so do we, so that the boxes agree.

    Args:
        image: (S, S, 3) uint8 RGB.

    Returns:
        (x, y, w, h) in pixels, or None.

    Raises:
        ImportError: facenet-pytorch is not installed (the ``mtcnn`` extra).
    """
    from facenet_pytorch import MTCNN  # optional: pip install 'avatar-cli[mtcnn]'

    detector = MTCNN(image_size=320, margin=0, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709,
                     post_process=True, device="cpu")
    boxes, probs = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))
    if boxes is None or probs is None:
        return None
    kept = [b for b, p in zip(boxes, probs) if p is not None and p > 0.8]
    if not kept:
        return None
    x0, y0, x1, y1 = (float(v) for v in max(kept, key=lambda b: (b[3] - b[1]) * (b[2] - b[0]))[:4])
    return x0, y0, x1 - x0, y1 - y0


def echomimic_face(image: np.ndarray, face_box: Box | None = None, warn=print, found: bool | None = None
                   ) -> FaceConditions:
    """EchoMimic's face conditioning of a portrait: the crop and the 1-channel face-locator mask.

    As EchoMimic's inference script: the largest face's box (x0, y0, x1, y1 rounded to pixels);
    the mask is 1 inside the box dilated by 0.1 of its height (rows) and width (columns) on each
    side, 0 elsewhere; the image and the mask are cut to the box dilated by 0.5 (clipped to the
    image), reduced to the centred square of its shorter side (``crop_and_pad``), and resized to
    the frame size (bilinear; the mask's 8-bit values divided by 255). Without a face: no crop and
    a mask of ones ("so anime and pets run").

    The face: ``face_box`` (``--face-box``), else EchoMimic's MTCNN (:func:`detect_face_mtcnn`, the
    ``mtcnn`` extra), else MediaPipe (:func:`detect_face`, the ``face`` extra), else none.

    Differences from upstream: without the ``mtcnn`` extra the box is MediaPipe's, not MTCNN's; the
    crop is cut from the frame at render size, not from the input file at its own resolution; a
    dilated box that crosses the top or left edge is clipped (upstream's negative slice start leaves
    the mask empty).

    Args:
        image: (S, S, 3) uint8 RGB frame.
        face_box: (x, y, w, h) frame pixels, e.g. from ``--face-box``; None = detect (unless
            ``found`` is False: treat as no face).
        warn: where the no-face warning goes.

    Returns:
        :class:`FaceConditions` with ``mask_image`` (1, S, S) in [0, 1], ``image`` the cropped
        portrait (S, S, 3) uint8, no embedding and no region masks.
    """
    size = image.shape[0]
    source = "face-box option"
    if face_box is None and found is not False:
        why = "no face found"
        try:
            face_box, source = detect_face_mtcnn(image), "mtcnn"
        except ImportError:
            try:
                detected = detect_face(image)
                face_box, source = (detected[0] if detected else None), "mediapipe"
            except ImportError:
                why = "no face detector installed: pip install 'avatar-cli[mtcnn]' (EchoMimic's MTCNN) or '[face]'"
        if face_box is None:
            warn(f"warning: {why}; the whole frame is the face mask and the portrait is not cropped "
                 f"(pass --face-box x,y,w,h to set it)")
    if face_box is None:
        mask = torch.ones(1, size, size)
        return FaceConditions(None, mask, None, (0.0, 0.0, float(size), float(size)), None, "whole frame", image)
    height, width = image.shape[:2]
    x, y, w, h = face_box
    cb, rb, ce, re = (int(v) for v in np.round([x, y, x + w, y + h]))
    mask = np.zeros((height, width), np.uint8)
    r_pad, c_pad = int((re - rb) * ECHO_MASK_DILATION), int((ce - cb) * ECHO_MASK_DILATION)
    mask[max(rb - r_pad, 0):max(re + r_pad, 0), max(cb - c_pad, 0):max(ce + c_pad, 0)] = 255
    r_pad, c_pad = int((re - rb) * ECHO_CROP_DILATION), int((ce - cb) * ECHO_CROP_DILATION)
    x0, y0 = max(0, cb - c_pad), max(0, rb - r_pad)
    x1, y1 = min(ce + c_pad, width), min(re + r_pad, height)
    side = min(x1 - x0, y1 - y0)  # crop_and_pad: the centred square of the shorter side
    nx0, ny0 = max(0, (x0 + x1) // 2 - side // 2), max(0, (y0 + y1) // 2 - side // 2)
    nx1, ny1 = min(width, nx0 + side), min(height, ny0 + side)
    side = min(nx1 - nx0, ny1 - ny0)
    if side <= 0:
        raise InputError(f"the face box {face_box} leaves nothing to crop in the {width}x{height} frame")
    crop = _resize_u8(image[ny0:ny0 + side, nx0:nx0 + side], size)
    mask = torch.from_numpy(_resize_u8(mask[ny0:ny0 + side, nx0:nx0 + side], size).astype(np.float32) / 255)[None]
    return FaceConditions(None, mask, None, tuple(float(v) for v in face_box), None, source, crop)
