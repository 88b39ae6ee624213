"""Face conditioning for the Hallo family: boxes, region masks, embeddings, fallbacks."""

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar_cli.errors import InputError
from avatar_cli.media import face as face_mod
from avatar_cli.media.face import (
    _gaussian_blur_u8,
    _gaussian_kernel_u8,
    _resize_linear_u8,
    expand,
    face_conditions,
    hallo_region,
    region_masks,
)


def _float_gaussian(n: int) -> np.ndarray:
    sigma = 0.3 * ((n - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for ksize n (8.0 for 51)
    x = np.arange(n) - n // 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def test_8bit_gaussian_kernel_is_opencvs_fixed_point_gaussian():
    for n in (51, 31):
        taps = _gaussian_kernel_u8(n)
        assert taps.sum() == 256 and (taps == taps[::-1]).all()
        assert np.abs(taps / 256 - _float_gaussian(n)).max() <= 1 / 256


def test_region_masks_follow_hallos_recipe():
    face_box, lip_box = (16.0, 8.0, 32.0, 40.0), (26.0, 36.0, 12.0, 6.0)
    masks = region_masks(face_box, lip_box, size=64, latent=64)
    assert set(masks) == {"full", "face", "lip"}
    assert all([tuple(m.shape) for m in levels] == [(64, 64), (32, 32), (16, 16), (8, 8)] for levels in masks.values())
    assert [tuple(m.shape) for m in region_masks(face_box, lip_box, 384, 48)["lip"]] == [(48, 48), (24, 24), (12, 12),
                                                                                       (6, 6)]
    for levels in masks.values():  # 8-bit images: multiples of 1/255
        for level in levels:
            assert torch.equal(level * 255, (level * 255).round()) and 0 <= level.min() and level.max() <= 1
    full, face, lip = (masks[r][0] for r in ("full", "face", "lip"))
    assert lip.max() == 1.0 and lip[39, 32] > 0.9 and lip[5, 5] < 0.01
    # above the lips: face + background = 1 (Hallo truncates 255 - face, so up to 1/255 less)
    assert 1 - 1.5 / 255 < (full[10, 32] + face[10, 32]).item() <= 1.0
    assert full[0, 0] > 0.9 and full[28, 32] < 0.1   # background outside, not inside
    assert (face >= 0).all() and face[39, 32] < 0.1   # the face branch leaves the lips out
    # each lower level is resized from the 64x64 image, bilinear with antialiasing: close to, but
    # not, the area average of the level above
    for levels in masks.values():
        area = F.interpolate(levels[0][None, None], size=(8, 8), mode="area")[0, 0]
        assert (area - levels[3]).abs().max() < 0.15
    assert max((F.interpolate(ls[0][None, None], size=(8, 8), mode="area")[0, 0] - ls[3]).abs().max()
               for ls in masks.values()) > 0.01
    assert expand((10, 10, 10, 10), 2.0, 64) == (5.0, 5.0, 20.0, 20.0)


def test_hallo_region_moves_an_enlarged_box_back_into_the_frame():
    # Hallo's expand_region: centre (x0 + x1) // 2, half side (x1 - x0) * ratio // 2, shifted inside
    assert hallo_region((10.0, 20.0, 20.0, 10.0), 2.0, 64) == (0, 40, 15, 35)   # x: 20 -/+ 20 -> 0..40
    assert hallo_region((50.0, 0.0, 10.0, 4.0), 2.0, 64) == (44, 64, 0, 8)     # x: 55 -/+ 10 -> 45..65 -> 44..64
    assert hallo_region((0.0, 0.0, 64.0, 64.0), 1.2, 64) == (0, 64, 0, 64)    # larger than the frame: clipped


def test_mask_images_follow_opencv_resize_and_blur_by_hand():
    hard = np.zeros((512, 512), np.uint8)
    hard[100:300] = 255
    small = _resize_linear_u8(hard, 64)   # 8x smaller: row d samples rows 8d+3 and 8d+4 half and half
    assert (small[13:37] == 255).all() and (small[12] == 128).all() and (small[37] == 128).all()
    assert (small[:12] == 0).all() and (small[38:] == 0).all()
    # the 8-bit blur: within about one level of the float Gaussian with reflected borders
    blurred = _gaussian_blur_u8(small, 51)
    g = _float_gaussian(51)
    padded = np.pad(small.astype(np.float64), 25, mode="reflect")
    rows = np.stack([np.convolve(r, g, mode="valid") for r in padded])
    exact = np.stack([np.convolve(c, g, mode="valid") for c in rows.T]).T
    assert blurred.dtype == np.uint8 and blurred.shape == (64, 64)
    assert np.abs(blurred - exact).max() <= 1.5


def test_face_box_sets_the_locator_image_and_embedding_options(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    cond = face_conditions(image, latent=8, face_box=(16, 16, 32, 32), embedding="none")
    assert cond.source == "face-box option" and cond.embedding is None
    # the locator image is the face box enlarged 1.2x: (12.8, 12.8) .. (51.2, 51.2)
    assert cond.mask_image.shape == (3, 64, 64)
    assert cond.mask_image[0, 32, 32] == 1 and cond.mask_image[0, 5, 5] == 0 and cond.mask_image[0, 12, 32] == 1
    assert [tuple(m.shape) for m in cond.region_masks["full"]] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    np.save(tmp_path / "emb.npy", np.arange(512, dtype=np.float32))
    cond = face_conditions(image, 8, (16, 16, 32, 32), embedding=str(tmp_path / "emb.npy"))
    assert torch.equal(cond.embedding, torch.arange(512, dtype=torch.float32))
    np.save(tmp_path / "bad.npy", np.zeros(10))
    with pytest.raises(InputError, match="needs 512"):
        face_conditions(image, 8, (16, 16, 32, 32), embedding=str(tmp_path / "bad.npy"))
    with pytest.raises(InputError, match="--no-face-embedding"):
        face_conditions(image, 8, (16, 16, 32, 32), embedding="auto", arcface_root=None)


def test_no_face_falls_back_to_the_whole_frame_with_a_warning(monkeypatch):
    warnings = []
    monkeypatch.setattr(face_mod, "detect_face", lambda image: None)
    cond = face_conditions(np.zeros((64, 64, 3), np.uint8), 8, None, "none", warn=warnings.append)
    assert cond.source == "whole frame" and cond.face_box == (0.0, 0.0, 64.0, 64.0)
    assert len(warnings) == 1 and "no face found" in warnings[0] and "--face-box" in warnings[0]

    def missing(image):
        raise ImportError("mediapipe")

    monkeypatch.setattr(face_mod, "detect_face", missing)
    warnings.clear()
    face_conditions(np.zeros((64, 64, 3), np.uint8), 8, None, "none", warn=warnings.append)
    assert "pip install 'avatar-cli[face]'" in warnings[0]


def test_arcface_glue_takes_the_largest_face_in_bgr(monkeypatch, tmp_path):
    seen = {}

    class Face(dict):
        def __init__(self, bbox, value):
            super().__init__()
            self.bbox, self.embedding = np.array(bbox, float), np.full(512, value, np.float32)

    class FaceAnalysis:
        def __init__(self, name, root, providers, allowed_modules):
            seen.update(root=root, modules=allowed_modules)

        def prepare(self, ctx_id, det_size):
            seen["ctx"] = ctx_id

        def get(self, bgr):
            seen["pixel"] = bgr[0, 0].tolist()
            return [Face((0, 0, 10, 10), 1.0), Face((0, 0, 30, 30), 2.0)]

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = FaceAnalysis
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    image = np.zeros((64, 64, 3), np.uint8)
    image[0, 0] = (255, 0, 0)  # red in RGB
    cond = face_conditions(image, 8, (0, 0, 64, 64), "auto", arcface_root=tmp_path)
    assert torch.equal(cond.embedding, torch.full((512,), 2.0))  # the larger face
    assert seen["pixel"] == [0, 0, 255] and seen["root"] == str(tmp_path) and seen["ctx"] == -1


def test_mediapipe_detector_on_the_test_portraits(test_data):
    pytest.importorskip("mediapipe", reason="the face extra (mediapipe) is not installed")
    from avatar_cli.media.image import load_portrait

    found = face_mod.detect_face(load_portrait(test_data / "astronaut.png", 256))
    assert found is not None
    (fx, fy, fw, fh), (lx, ly, lw, lh) = found
    assert fx < lx and lx + lw < fx + fw and fy < ly < fy + fh  # lips inside the face
    assert face_mod.detect_face(load_portrait(test_data / "cat_chelsea.png", 256)) is None
