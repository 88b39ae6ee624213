"""The face track ``avatar eval`` scores (module docstring of :mod:`.run`): SCRFD-10G boxes on every frame,
a given box, or the whole frame; each frame's 224 crop in SyncNet's channel order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, WeightsError
from . import sync as syncmod
from .media import iter_frames

FACE_CHOICES = ("auto", "scrfd", "whole")


class ScrfdDetector:
    """SCRFD-10G face boxes with onnxruntime (the decode of ``media/face_crop.py``, Ditto's detector).

    Args:
        onnx_path: ``det_10g.onnx`` (or ``scrfd_10g_bnkps.onnx``).
        device: "cpu" forces the CPU provider.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu"):
        from ..media.face_crop import _onnxruntime, _providers

        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                            providers=_providers(ort, device))
        self.path = Path(onnx_path)

    def largest(self, frame: np.ndarray) -> np.ndarray | None:
        """(4,) x1, y1, x2, y2 of the largest face in an (H, W, 3) uint8 RGB frame, or None."""
        from ..media.face_crop import det_blob, largest_box, letterbox, scrfd_decode

        det_image, scale = letterbox(frame)
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: det_blob(det_image)})
        dets, _ = scrfd_decode(outputs, scale)
        return largest_box(dets)


def find_detector(weights_dir: str | Path | None = None) -> Path | None:
    """The SCRFD-10G ONNX file, if installed: ``<weights_dir>/aux_models/det_10g.onnx``, Ditto's download
    (``ditto_pytorch/aux_models/det_10g.onnx``), its converted folder (``avatar weights convert --from
    ditto``: ``$AVATAR_HOME/converted/ditto/aux_models``) or Hallo's face analysis (``scrfd_10g_bnkps.onnx``)."""
    from ..weights import converted_dir, find_folder

    for sub, component, inside, name in (("aux_models", "ditto", "ditto_pytorch/aux_models", "det_10g.onnx"),
                                         ("face_analysis/models", "hallo-face-analysis", "face_analysis/models",
                                          "scrfd_10g_bnkps.onnx")):
        try:
            folder = find_folder(weights_dir, sub, component, inside)
        except WeightsError:
            folder = None
        if folder is not None and (folder / name).is_file():
            return folder / name
        if component == "ditto" and (converted_dir("ditto") / sub / name).is_file():
            return converted_dir("ditto") / sub / name
    return None


def face_crops(video: str | Path, face: str = "auto", face_box: Sequence[float] | None = None,
               weights_dir: str | Path | None = None, device: str = "cpu",
               note: Callable[[str], None] = lambda m: None) -> tuple[np.ndarray, str]:
    """The 224x224 BGR face crops SyncNet reads, one per frame at 25 fps.

    Args:
        face: "auto" | "scrfd" | "whole" (module docstring). face_box: (x, y, w, h), overrides ``face``.

    Returns:
        ((T, 224, 224, 3) uint8 BGR crops, how the face was found: "scrfd:<file>", "face-box", "whole-frame").

    Raises:
        InputError: unknown ``face``; no face in any frame; unreadable video.
        WeightsError: ``face="scrfd"`` without its ONNX file.
    """
    from ..media.face_crop import resize_linear

    if face not in FACE_CHOICES:
        raise InputError(f"--face {face!r}: choose from {', '.join(FACE_CHOICES)}")
    size = syncmod.CROP_SIZE
    if face_box is None and face != "whole":
        onnx = find_detector(weights_dir)
        if onnx is None:
            if face == "scrfd":
                raise WeightsError("the SCRFD face detector (det_10g.onnx) is not installed; run 'avatar weights "
                                   "download ditto', or pass --face-box x,y,w,h or --face whole")
            note("note: no face detector installed (det_10g.onnx of 'avatar weights download ditto'); "
                 "SyncNet reads the whole frame")
            face = "whole"
        else:
            try:
                detector = ScrfdDetector(onnx, str(device))
            except InputError:
                if face == "scrfd":
                    raise
                note("note: onnxruntime is not installed; SyncNet reads the whole frame")
                face = "whole"
    if face_box is None and face == "whole":
        crops = [resize_linear(np.ascontiguousarray(f[:, :, ::-1]), (size, size)) for f in iter_frames(video)]
        how = "whole-frame"
    else:
        if face_box is not None:
            x, y, w, h = (float(v) for v in face_box)
            # a fixed box: every frame gets the same window (the 13-frame median of a constant is itself)
            fixed = syncmod.track_crops(np.array([[x, y, x + w, y + h]] * syncmod.SMOOTH_KERNEL))[
                syncmod.SMOOTH_KERNEL // 2]
            crops = [crop_bgr(frame, fixed) for frame in iter_frames(video)]
            how = "face-box"
        else:
            found = [detector.largest(f) for f in iter_frames(video)]
            if not found:
                raise InputError(f"video {video} has no frames")
            if all(b is None for b in found):
                raise InputError(f"no face found in {video}; pass --face-box x,y,w,h or --face whole")
            windows = syncmod.track_crops(syncmod.fill_boxes(
                np.array([[np.nan] * 4 if b is None else b[:4] for b in found], dtype=np.float64)))
            crops = [crop_bgr(frame, windows[min(i, len(windows) - 1)]) for i, frame in enumerate(iter_frames(video))]
            how = f"scrfd:{detector.path.name}"
    if not crops:
        raise InputError(f"video {video} has no frames")
    return np.stack(crops), how


def crop_bgr(frame: np.ndarray, window: np.ndarray) -> np.ndarray:
    """One RGB frame -> its 224 crop in BGR (the channel order SyncNet was trained on, cv2's)."""
    return syncmod.crop_frame(np.ascontiguousarray(frame[:, :, ::-1]), window)
