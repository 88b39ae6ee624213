"""``avatar render --dry-run``: a look before a long render.

Everything a render checks before its first frame is checked (the inputs and options by
``prepare_job``, the weights installed or downloadable, the packages the model needs), then the
portrait is drawn as a PNG with what the render would use: the face box (``--face-box`` or the
detector the family runs: Ditto's face-crop ONNX models, MediaPipe for Hallo, MTCNN/MediaPipe for
EchoMimic), the crop the networks see (Ditto's 512 crop, rotated with the face; the U-Net family's
square frame) and the model, method, size and steps. The expected time comes from a calibration
that ``--preview`` kept for the same settings on this device (``preview.py``); without one it says
so. No network is built and nothing is rendered: it takes the seconds of reading the inputs and,
where the face is detected, one detector pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .options import RenderJob, RenderOptions

Box = tuple[float, float, float, float]

FACE_COLOUR = (255, 64, 64)  # the face box
CROP_COLOUR = (64, 200, 255)  # the crop the networks see


@dataclass
class DryRun:
    """What ``--dry-run`` found.

    Attributes:
        image: the PNG written (the portrait at its own size, annotated).
        model, method, size, steps, nfe: what would render (``size``: the frame side; Ditto: the
            portrait's own size, "WxH").
        frames, duration_s: the video's frames and seconds.
        face_box: (x, y, w, h) in the portrait's pixels, or None (the whole frame); face_source: where
            it came from ("--face-box", "face-crop models", "mediapipe", "centred (random weights)",
            "none").
        crop: the corners of the crop in the portrait's pixels, [(x, y)] x 4 (clockwise from top left).
        weights: where the weights come from ("random:<arch>", a folder, or "download: <command>").
        expected_wall_s: the expected render seconds here, or None; expected: the same in words.
        notes: one line each, what the render would warn about.
    """

    image: str
    model: str
    method: str
    size: str
    steps: int
    nfe: int
    frames: int
    duration_s: float
    face_box: Box | None
    face_source: str
    crop: list[tuple[float, float]]
    weights: str
    expected_wall_s: float | None
    expected: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"dry_run": True, "image": self.image, "model": self.model, "method": self.method, "size": self.size,
                "num_inference_steps": self.steps, "nfe": self.nfe, "frames": self.frames,
                "duration_s": round(self.duration_s, 4),
                "face_box": None if self.face_box is None else [round(v, 2) for v in self.face_box],
                "face_source": self.face_source, "crop": [[round(x, 2), round(y, 2)] for x, y in self.crop],
                "weights": self.weights,
                "expected_wall_s": None if self.expected_wall_s is None else round(self.expected_wall_s, 2),
                "expected": self.expected, "notes": self.notes}


def default_image_path(output: str | Path) -> Path:
    """``<output stem>.dry-run.png`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}.dry-run.png")


def ditto_face(job: RenderJob, folder: Path | None, notes: list[str]) -> tuple[Box | None, str, np.ndarray]:
    """Ditto's face box and crop of ``job.image`` (H, W, 3): (box in image pixels, where it came
    from, the crop->image matrix (3, 3)) as ``DittoPipeline.source_state`` would find them, without
    its networks (``media/face_crop.py``'s ``crop_source``; random weights without --face-box: a
    centred box).

    Raises:
        WeightsError / InputError: as ``crop_source`` (no crop models and no box, no face found).
    """
    from .media.face_crop import crop_source
    from .pipelines.ditto import DittoPipeline

    aux = None if folder is None else DittoPipeline.aux_folder(folder)
    config = DittoPipeline.config_of(folder)
    box, source, warn = job.face_box, "--face-box", notes.append
    if box is None and aux is None:
        h, w = job.image.shape[:2]
        side = 0.5 * min(h, w)
        box, source = ((w - side) / 2, (h - side) / 2, side, side), "centred (random weights)"
        notes.append("note: random weights without --face-box: a centred face box is assumed")
        warn = lambda message: None  # noqa: E731  (the crop's own note would name --face-box)
    crop = crop_source(job.image, aux, box, warn=warn, crop_scale=config.crop_scale,
                       crop_vx=config.crop_vx_ratio, crop_vy=config.crop_vy_ratio)
    if box is None and crop.landmarks is not None:
        (x0, y0), (x1, y1) = crop.landmarks.min(axis=0), crop.landmarks.max(axis=0)
        box, source = (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), "face-crop models"
    return box, source, np.asarray(crop.M_c2o, np.float64)


def unet_face(job: RenderJob, options: RenderOptions, notes: list[str]) -> tuple[Box | None, str]:
    """The U-Net family's face box in frame pixels: ``--face-box``, else the family's detector
    (Hallo: MediaPipe; EchoMimic: MTCNN, else MediaPipe); None for the models that use no face."""
    family = options.sampling.family
    if job.face_box is not None:
        return tuple(float(v) for v in job.face_box), "--face-box"
    if family not in ("hallo", "echomimic"):
        return None, "none (this model uses the whole frame)"
    from .media.face import detect_face, detect_face_mtcnn

    if family == "echomimic":
        try:
            box = detect_face_mtcnn(job.image)
            return (box, "mtcnn") if box is not None else (None, "none found")
        except ImportError:
            pass
    try:
        found = detect_face(job.image)
    except ImportError:
        notes.append("no face detector installed (pip install 'avatar-cli[face]'), or pass --face-box x,y,w,h")
        return None, "none (no detector installed)"
    return (tuple(float(v) for v in found[0]), "mediapipe") if found else (None, "none found")


def draw(image_path: str | Path, out: str | Path, face_box: Box | None, crop: list[tuple[float, float]],
         lines: list[str]) -> Path:
    """The portrait (as read from ``image_path``, its own size, EXIF-rotated) with the face box
    (red, 3 px), the crop (blue polygon) and ``lines`` of text (top left, on a dark band), written as
    PNG to ``out`` through a temporary file (nothing half-written).

    Returns:
        ``out`` as a Path.
    """
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(image_path) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 170))
    if crop:
        pen.line([*crop, crop[0]], fill=CROP_COLOUR, width=width)
    if face_box is not None:
        x, y, w, h = face_box
        pen.rectangle([x, y, x + w, y + h], outline=FACE_COLOUR, width=width)
    if lines:
        text = "\n".join(lines)
        left, top, right, bottom = pen.multiline_textbbox((4, 4), text)
        pen.rectangle([0, 0, right + 4, bottom + 4], fill=(0, 0, 0))
        pen.multiline_text((4, 4), text, fill=(255, 255, 255))
    out = Path(out)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial.png")
    try:
        picture.save(partial, format="PNG")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
