"""Ditto's source-image face crop: SCRFD box -> 106 points -> 203 points -> LivePortrait's 512 crop.

Re-implemented from the reading of antgroup/ditto-talkinghead @ e9191cf (no code copied); one module
per step, all names re-exported here (the old import path):

- ``core/atomic_components/loader.py:check_resize``  -> ``media/resize.py`` :func:`fit_source_size`
  (and OpenCV's INTER_LINEAR / INTER_AREA resizes)
- ``core/aux_models/modules/retinaface.py`` (SCRFD) -> ``media/face_detect.py`` :func:`letterbox`,
  :func:`scrfd_decode`, :func:`nms`
- ``core/aux_models/modules/landmark106.py``         -> ``media/face_landmarks.py`` :func:`lmk106_matrix`,
  :func:`decode_lmk106`
- ``core/aux_models/modules/landmark203.py``         -> :meth:`FaceCropper.landmarks203` (here)
- ``core/utils/crop.py`` (LivePortrait's crop rule)  -> ``media/crop_geometry.py`` :func:`crop_matrix`,
  :func:`crop_from_points`, :func:`box_crop`
- ``core/atomic_components/source2info.py:_crop``    -> :meth:`FaceCropper.crop` (here)
- ``core/utils/eye_info.py``                         -> ``media/eye_state.py`` :func:`eye_state`

OpenCV is not a dependency. The crop's warp is ``media/warp.py``'s ``cv2.warpAffine`` re-implementation
(OpenCV's fixed-point arithmetic, bit for bit on the recorded uint8 fixture).

The three ONNX files are InsightFace's ``det_10g.onnx`` and ``2d106det.onnx`` (non-commercial
licence) and LivePortrait's landmark model (``landmark203.onnx``), from the HF repo
``digital-avatar/ditto-talkinghead``, folder ``ditto_pytorch/aux_models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, WeightsError
from .crop_geometry import (BOX_CROP_SCALE, BOX_CROP_VY, CROP_SCALE, CROP_SIZE, CROP_VX, CROP_VY, Box,  # noqa: F401
                            SourceCrop, _eye_lip_points, box_crop, crop_from_points, crop_matrix, parse_face_box,
                            similarity_matrix, to_rgb_256, transform_points)
from .eye_state import NEUTRAL_EYE_BALL, NEUTRAL_EYE_OPEN, detect_eye_state, eye_state  # noqa: F401
from .face_detect import (DET_ANCHORS, DET_MEAN, DET_SIZE, DET_STD, DET_STRIDES, DET_THRESH,  # noqa: F401
                          NMS_THRESH, _anchor_centres, _onnxruntime, _providers, det_blob, largest_box, letterbox,
                          nms, scrfd_decode)
from .face_landmarks import (LMK106_BOX_SCALE, LMK106_SIZE, LMK203_CROP_SCALE, LMK203_CROP_VY,  # noqa: F401
                             LMK203_OUTPUT_INDEX, LMK203_SIZE, decode_lmk106, lmk106_matrix)
from .resize import MAX_SIDE, _linear_axis, downscale_half, fit_source_size, resize_linear, source_size  # noqa: F401
from .warp import invert_affine, warp_affine  # noqa: F401

AUX_FILES = ("det_10g.onnx", "2d106det.onnx", "landmark203.onnx")


class FaceCropper:
    """Ditto's face crop with the three auxiliary ONNX models (det_10g, 2d106det, landmark203).

    ``crop`` = SCRFD's largest face (or the user's box) -> 106 points -> 224 crop -> 203 points ->
    512 crop (M: ``core/atomic_components/source2info.py:_crop``).
    """

    def __init__(self, det, lmk106, lmk203, crop_scale: float = CROP_SCALE, crop_vx: float = CROP_VX,
                 crop_vy: float = CROP_VY):
        """Sessions are onnxruntime ``InferenceSession``s (or anything with ``run``/``get_inputs``).
        crop_scale / crop_vx / crop_vy: the 512 crop rule (Ditto's cfg ``crop_scale``,
        ``crop_vx_ratio``, ``crop_vy_ratio``)."""
        self.det, self.lmk106, self.lmk203 = det, lmk106, lmk203
        self.crop_scale, self.crop_vx, self.crop_vy = crop_scale, crop_vx, crop_vy

    @classmethod
    def from_dir(cls, aux_dir: str | Path, device: str = "auto", **crop) -> "FaceCropper":
        """Load ``det_10g.onnx``, ``2d106det.onnx`` and ``landmark203.onnx`` from ``aux_dir``.

        Args:
            aux_dir: folder holding the three files (Ditto's ``ditto_pytorch/aux_models``).
            device: "cpu" forces the CPU provider; otherwise CUDA when onnxruntime offers it.
            crop: crop_scale / crop_vx / crop_vy overrides.

        Raises:
            WeightsError: a file is missing (named, with the download command).
            InputError: onnxruntime is not installed.
        """
        aux_dir = Path(aux_dir)
        for name in AUX_FILES:
            if not (aux_dir / name).is_file():
                raise WeightsError(f"Ditto face-crop model {aux_dir / name} is missing; run "
                                   "'avatar weights download ditto' or pass --face-box x,y,w,h")
        ort = _onnxruntime()
        providers = _providers(ort, device)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sessions = [ort.InferenceSession(str(aux_dir / n), sess_options=options, providers=providers)
                    for n in AUX_FILES]
        return cls(*sessions, **crop)

    # ---- stages
    def detect(self, image: np.ndarray) -> np.ndarray:
        """SCRFD faces, (N, 5) float32 x1, y1, x2, y2, score in ``image`` pixels, best first."""
        det_image, det_scale = letterbox(image)
        name = self.det.get_inputs()[0].name
        outputs = self.det.run(None, {name: det_blob(det_image)})
        dets, _ = scrfd_decode(outputs, det_scale)
        return dets

    def landmarks106(self, image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
        """(106, 2) float32 landmarks in ``image`` pixels from 2d106det on the box's 192 crop."""
        m = lmk106_matrix(box_xyxy)
        crop = warp_affine(image, m, (LMK106_SIZE, LMK106_SIZE))
        blob = np.ascontiguousarray(crop[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)[None])
        name = self.lmk106.get_inputs()[0].name
        fc1 = self.lmk106.run(None, {name: blob})[0][0]
        return decode_lmk106(fc1, m)

    def landmarks203(self, image: np.ndarray, points106: np.ndarray) -> np.ndarray:
        """(203, 2) float32 landmarks in ``image`` pixels: landmark203 (input ``input``
        (1, 3, 224, 224) RGB / 255; output index 2, (1, 406) in crop units) on the 224 crop."""
        crop, _, m_c2o = crop_from_points(image, points106, LMK203_SIZE, LMK203_CROP_SCALE, 0.0,
                                          LMK203_CROP_VY)
        blob = np.ascontiguousarray((crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        name = self.lmk203.get_inputs()[0].name
        out = self.lmk203.run(None, {name: blob})[LMK203_OUTPUT_INDEX]
        pts = out[0].reshape(-1, 2).astype(np.float32) * np.float32(LMK203_SIZE)
        return transform_points(pts, m_c2o).astype(np.float32)  # float32 throughout, as Ditto

    def crop(self, image: np.ndarray, face_box: Box | None = None, name: str = "the image") -> SourceCrop:
        """The 512 crop of the portrait.

        Args:
            image: (H, W, 3) uint8 RGB, already through :func:`fit_source_size`.
            face_box: (x, y, w, h) in ``image`` pixels: replaces the SCRFD box (detection skipped).
            name: the image's name for the error message.

        Returns:
            :class:`SourceCrop` with 203 landmarks.

        Raises:
            InputError: no face found ("no face found in IMAGE; pass --face-box x,y,w,h").
        """
        if face_box is not None:
            x, y, w, h = (float(v) for v in face_box)
            box = np.array([x, y, x + w, y + h])
        else:
            box = largest_box(self.detect(image))
            if box is None:
                raise InputError(f"no face found in {name}; pass --face-box x,y,w,h")
        pts106 = self.landmarks106(image, box)
        pts203 = self.landmarks203(image, pts106)
        img_crop, _, m_c2o = crop_from_points(image, pts203, CROP_SIZE, self.crop_scale, self.crop_vx,
                                              self.crop_vy)
        return SourceCrop(img_crop, m_c2o, to_rgb_256(img_crop), pts203)


def crop_source(image: np.ndarray, aux_dir: str | Path | None = None, face_box: Box | None = None,
                name: str = "the image", warn: Callable[[str], None] = print, **crop) -> SourceCrop:
    """The crop a ``--model ditto`` render uses: the landmark path when the three ONNX files are in
    ``aux_dir``; otherwise, when a ``face_box`` is given, :func:`box_crop` with a one-line note.

    Raises:
        WeightsError: no usable aux models and no ``face_box`` (names the missing file).
        InputError: onnxruntime missing without a box; no face found.
    """
    if aux_dir is not None and all((Path(aux_dir) / n).is_file() for n in AUX_FILES):
        try:
            cropper = FaceCropper.from_dir(aux_dir, **crop)
        except InputError:
            if face_box is None:
                raise
            warn("note: onnxruntime is not installed; cropping from --face-box without landmarks")
            return box_crop(image, face_box)
        return cropper.crop(image, face_box, name)
    if face_box is not None:
        warn("note: Ditto's face-crop models are not installed; cropping from --face-box without "
             "landmarks (no roll correction)")
        return box_crop(image, face_box)
    if aux_dir is not None:
        FaceCropper.from_dir(aux_dir)  # raises WeightsError naming the first missing file
    raise WeightsError(f"Ditto's face-crop models ({', '.join(AUX_FILES)}) are not installed; run "
                       "'avatar weights download ditto' or pass --face-box x,y,w,h")
