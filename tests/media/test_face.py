"""Face conditioning for the Hallo family: boxes, region masks, embeddings, fallbacks."""

import sys
import types

import numpy as np
import pytest
import torch

from avatar_cli.errors import InputError
from avatar_cli.media import face as face_mod
from avatar_cli.media.face import expand, face_conditions, gaussian_blur, region_masks


def test_gaussian_blur_matches_opencv_kernel_sigma():
    impulse = torch.zeros(64, 64)
    impulse[32, 32] = 1.0
    out = gaussian_blur(impulse, 51)
    sigma = 0.3 * ((51 - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for ksize 51: 8.0
    x = torch.arange(-25, 26, dtype=torch.float64)
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    expected = torch.outer(g, g).float()
    torch.testing.assert_close(out[7:58, 7:58], expected, rtol=1e-5, atol=1e-7)
    assert abs(out.sum().item() - 1.0) < 1e-5


def test_region_masks_follow_hallos_recipe():
    face_box, lip_box = (16.0, 8.0, 32.0, 40.0), (26.0, 36.0, 12.0, 6.0)
    masks = region_masks(face_box, lip_box, size=64, latent=64)
    assert set(masks) == {"full", "face", "lip"} and all(m.shape == (64, 64) for m in masks.values())
    assert masks["lip"].max() == 1.0 and masks["lip"][39, 32] > 0.9 and masks["lip"][5, 5] < 0.01
    torch.testing.assert_close(masks["full"][10, 32] + masks["face"][10, 32] + 0 * masks["lip"][10, 32],
                               torch.tensor(1.0), rtol=0, atol=1e-6)  # above the lips: face + background = 1
    assert masks["full"][0, 0] > 0.9 and masks["full"][28, 32] < 0.1   # background outside, not inside
    assert (masks["face"] >= 0).all() and masks["face"][39, 32] < 0.1   # the face branch leaves the lips out
    assert expand((10, 10, 10, 10), 2.0, 64) == (5.0, 5.0, 20.0, 20.0)


def test_face_box_sets_the_locator_image_and_embedding_options(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    cond = face_conditions(image, latent=8, face_box=(16, 16, 32, 32), embedding="none")
    assert cond.source == "face-box option" and cond.embedding is None
    # the locator image is the face box enlarged 1.2x: (12.8, 12.8) .. (51.2, 51.2)
    assert cond.mask_image.shape == (3, 64, 64)
    assert cond.mask_image[0, 32, 32] == 1 and cond.mask_image[0, 5, 5] == 0 and cond.mask_image[0, 12, 32] == 1
    assert cond.region_masks["full"].shape == (8, 8)
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
