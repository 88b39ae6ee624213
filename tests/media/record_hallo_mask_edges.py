"""Record tests/data/hallo_mask_edges.npz from Hallo's own mask code (run once, by hand).

Runs fudan-generative-vision/hallo @ 8fd7c57 (``hallo/utils/util.py`` get_mask and
``hallo/datasets/image_processor.py`` ImageProcessor.preprocess) in a throwaway environment, never in
the test suite and never part of this repo:

    python3.11 -m venv venv && venv/bin/pip install torch==2.13.0 opencv-python-headless==4.9.0.80 \
        pillow==10.3.0 numpy==1.26.4 && venv/bin/pip install --no-deps torchvision==0.28.0
    git clone https://github.com/fudan-generative-vision/hallo && git -C hallo checkout 8fd7c57
    venv/bin/python tests/media/record_hallo_mask_edges.py hallo OUT.npz

MediaPipe, InsightFace, av, moviepy, einops and torchvision's compiled-op registrations are stubbed
(the mask path does not use them):
``get_landmark`` returns landmarks whose silhouette and lip extremes are each case's boxes, and
InsightFace finds no face. For each case a blank portrait of the case's size is written as a PNG
and ``ImageProcessor((S, S), ...).preprocess(png, cache, face_expand_ratio)`` runs as
``scripts/inference.py`` calls it. Stored per case ``cN.``: ``meta`` = (width, height, S, ratio,
face x0, y0, x1, y1, lip x0, y0, x1, y1) (the landmark extremes), ``sep_<region>`` = Hallo's
64x64 PNGs (``*_sep_background/face/lip.png``; region full/face/lip), ``level_<region>_<k>`` = the
level-k tensor it returns times 255 as uint8 (ToTensor's values are exactly v/255) and
``locator`` = its face-locator tensor (channel 0; all three are equal) times 255 as uint8.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np

# The cases: portrait (width, height), render side S, face_expand_ratio, face and lip extremes
# (x0, y0, x1, y1) in portrait pixels.
CASES = [
    # the face at each border and corner of a 512 px portrait
    ((512, 512), 256, 1.2, (0.0, 0.0, 200.4, 231.0), (62.0, 150.0, 140.0, 190.0)),
    ((512, 512), 256, 1.2, (330.6, 300.2, 512.0, 512.0), (380.0, 430.0, 460.0, 470.0)),
    ((512, 512), 256, 1.2, (0.0, 150.0, 180.0, 400.0), (30.0, 320.0, 120.0, 350.0)),
    ((512, 512), 256, 1.2, (200.0, 0.0, 380.0, 170.0), (250.0, 120.0, 330.0, 150.0)),
    ((512, 512), 256, 1.2, (350.0, 100.0, 511.6, 330.0), (390.0, 250.0, 480.0, 290.0)),
    ((512, 512), 256, 1.2, (120.0, 340.0, 320.0, 512.0), (180.0, 470.0, 260.0, 505.0)),
    ((512, 512), 512, 1.2, (412.3, 0.0, 512.0, 120.7), (440.0, 80.0, 500.0, 110.0)),
    # tiny and huge faces; a lip box that no sample of the 64x64 resize reaches (rows 609-612 of
    # 1024: the samples are rows 16d + 7 and 16d + 8)
    ((1024, 1024), 256, 1.2, (500.0, 500.0, 530.0, 532.0), (510.0, 522.0, 520.0, 527.0)),
    ((1024, 1024), 256, 1.2, (560.0, 540.0, 650.0, 640.0), (600.6, 610.0, 603.4, 612.0)),
    ((512, 512), 256, 1.2, (40.0, 50.0, 460.0, 470.0), (180.0, 330.0, 330.0, 400.0)),
    ((512, 512), 256, 1.2, (3.0, 2.0, 9.0, 8.0), (4.0, 6.0, 7.0, 7.0)),
    # non-512 and non-square portraits (Hallo stretches them to S x S)
    ((1024, 1024), 512, 1.2, (300.2, 250.7, 700.1, 760.3), (420.0, 600.0, 590.0, 680.0)),
    ((300, 300), 256, 1.2, (80.3, 60.5, 220.7, 250.1), (120.0, 190.0, 180.0, 215.0)),
    ((100, 100), 64, 1.2, (20.0, 15.0, 80.0, 90.0), (35.0, 65.0, 65.0, 75.0)),
    ((48, 48), 64, 1.2, (10.0, 8.0, 38.0, 44.0), (18.0, 32.0, 30.0, 38.0)),
    ((640, 480), 256, 1.2, (400.0, 100.0, 640.0, 400.0), (470.0, 300.0, 560.0, 340.0)),
    ((480, 640), 256, 1.2, (0.0, 300.0, 200.0, 640.0), (50.0, 520.0, 140.0, 580.0)),
    ((1280, 720), 128, 1.2, (900.5, 200.5, 1180.5, 600.5), (980.0, 480.0, 1100.0, 540.0)),
    # other face_expand_ratio values
    ((512, 512), 256, 1.0, (180.3, 140.7, 330.2, 360.9), (222.4, 300.2, 290.6, 330.1)),
    ((512, 512), 256, 1.5, (180.3, 140.7, 330.2, 360.9), (222.4, 300.2, 290.6, 330.1)),
]
LARGE_FACES = 4  # random large faces whose min-max normalisation hits an exact .5 tie


def _stub_modules() -> None:
    for name in ("av", "mediapipe", "moviepy", "moviepy.editor", "einops", "insightface", "insightface.app"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["moviepy.editor"].AudioFileClip = sys.modules["moviepy.editor"].VideoClip = object
    sys.modules["einops"].rearrange = None

    class FaceAnalysis:  # InsightFace finding no face: Hallo uses the whole image and a zero embedding
        def __init__(self, **_):
            self.models = {}

        def prepare(self, **_):
            pass

        def get(self, _image):
            return []

    sys.modules["insightface.app"].FaceAnalysis = FaceAnalysis
    # torchvision's compiled ops do not load against the CPU torch; its transforms do not need them
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")


def _two_roundings_differ(blurred: np.ndarray) -> bool:
    """Whether float32 ``v * scale + shift`` with two roundings misses cv2.normalize somewhere."""
    import cv2

    low, high = int(blurred.min()), int(blurred.max())
    if high == low:
        return False
    scale = np.float32(255.0 / (high - low))
    two = np.rint(blurred.astype(np.float32) * scale + np.float32(-low * float(scale)))
    return not np.array_equal(np.clip(two, 0, 255).astype(np.uint8), cv2.normalize(blurred, None, 0, 255,
                                                                                   cv2.NORM_MINMAX))


def main(hallo_root: str, out: str) -> None:
    sys.path.insert(0, hallo_root)
    _stub_modules()
    import cv2
    import torch
    from PIL import Image

    from hallo.datasets import image_processor
    from hallo.utils import util

    def landmarks_for(face, lips) -> np.ndarray:
        points = np.zeros((478, 2))
        points[util.silhouette_ids] = face[:2]
        points[util.silhouette_ids[0]] = face[2:]
        points[util.lip_ids] = lips[:2]
        points[util.lip_ids[0]] = lips[2:]
        return points

    cases = list(CASES)
    rng = np.random.default_rng(27)
    found = 0
    while found < LARGE_FACES:  # realistic large faces where the normalisation's rounding matters
        w, h = rng.uniform(250, 400), rng.uniform(280, 420)
        x0, y0 = rng.uniform(0, 512 - w), rng.uniform(0, 512 - h)
        face = (x0, y0, x0 + w, y0 + h)
        lx, ly = x0 + w * rng.uniform(0.3, 0.4), y0 + h * rng.uniform(0.65, 0.72)
        lips = (lx, ly, lx + w * rng.uniform(0.2, 0.35), ly + h * rng.uniform(0.08, 0.14))
        hard = util.get_face_mask(landmarks_for(face, lips), 512, 512, expand_ratio=1.2)
        if _two_roundings_differ(cv2.GaussianBlur(cv2.resize(hard, (64, 64)), (51, 51), 0)):
            cases.append(((512, 512), 128, 1.2, tuple(round(v, 3) for v in face), tuple(round(v, 3) for v in lips)))
            found += 1

    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, ((width, height), side, ratio, face, lips) in enumerate(cases):
            png = Path(tmp) / f"portrait{i}.png"
            Image.new("RGB", (width, height), (128, 128, 128)).save(png)
            points = landmarks_for(np.array(face), np.array(lips))
            util.get_landmark = lambda _file, p=points, w=width, h=height: (p, h, w)
            processor = image_processor.ImageProcessor((side, side), "unused")
            _, locator, _, full, face_levels, lip_levels = processor.preprocess(str(png), tmp, ratio)
            assert torch.equal(locator[0], locator[1]) and torch.equal(locator[0], locator[2])
            arrays[f"c{i}.meta"] = np.array([width, height, side, ratio, *face, *lips], np.float64)
            arrays[f"c{i}.locator"] = _u8(locator[0])
            for region, name, levels in (("full", "background", full), ("face", "face", face_levels),
                                         ("lip", "lip", lip_levels)):
                arrays[f"c{i}.sep_{region}"] = np.asarray(Image.open(Path(tmp) / f"portrait{i}_sep_{name}.png"))
                for k, level in enumerate(levels):
                    arrays[f"c{i}.level_{region}_{k}"] = _u8(level.view(side // 8 >> k, side // 8 >> k))
    np.savez_compressed(out, **arrays)
    print(f"{len(cases)} cases -> {out}")


def _u8(tensor) -> np.ndarray:
    scaled = tensor.numpy().astype(np.float64) * 255
    assert np.abs(scaled - np.round(scaled)).max() < 1e-3  # ToTensor's v / 255
    return np.round(scaled).astype(np.uint8)


if __name__ == "__main__":
    main(*sys.argv[1:])
