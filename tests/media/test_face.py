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
    _normalise_u8,
    _resize_linear_u8,
    face_conditions,
    face_mask_image,
    hallo_mask_images,
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
    # the locator image is the face box enlarged 1.2x in Hallo's whole pixels: centre 32, half side
    # 38.4 // 2 = 19 -> rows and columns 13..50
    assert cond.mask_image.shape == (3, 64, 64)
    assert cond.mask_image[0, 32, 32] == 1 and cond.mask_image[0, 5, 5] == 0 and cond.mask_image[0, 13, 32] == 1
    assert cond.mask_image[0, 12, 32] == 0 and cond.mask_image[0, 32, 51] == 0 and cond.mask_image[0, 32, 50] == 1
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


# --------------------------------------------------------------- exact at the edges (issue 27)
def _one_rounding_normalise(low: int, high: int, values: np.ndarray) -> np.ndarray:
    """cv2.normalize(NORM_MINMAX) of 8-bit ``values`` whose min and max are ``low`` and ``high``, in
    exact integer arithmetic: OpenCV's float32 scale 255 * (1 / (high - low)) and shift -low * scale,
    the exact value v * scale + shift rounded once to float32 (24 significant bits, half to even),
    then to an integer (half to even). Units of 2^-40 (float32 scale >= 1 and |shift| >= 1 or 0 have
    no bits below 2^-23)."""
    scale = 255.0 * (1.0 / (high - low)) if high > low else 0.0
    a, b = np.float32(scale), np.float32(0.0 - low * scale)

    def units(x: np.float32) -> int:
        num, den = float(x).as_integer_ratio()
        assert (1 << 40) % den == 0
        return num * ((1 << 40) // den)

    exact = values.astype(np.int64) * units(a) + units(b)
    sign, mag = np.sign(exact), np.abs(exact)
    bits = np.searchsorted(1 << np.arange(63, dtype=np.int64), mag, side="right")  # bit length

    def round_even(m: np.ndarray, drop: np.ndarray) -> np.ndarray:
        drop = np.maximum(drop, 0)
        q, rem = m >> drop, m & ((np.int64(1) << drop) - 1)
        half = np.where(drop > 0, np.int64(1) << np.maximum(drop - 1, 0), 1)
        up = (drop > 0) & ((rem > half) | ((rem == half) & (q & 1 == 1)))
        return q + up

    f32 = round_even(mag, bits - 24) << np.maximum(bits - 24, 0)        # the FMA's float32 result
    integer = round_even(f32, np.full_like(f32, 40)) * sign               # cvRound
    return np.clip(integer, 0, 255).astype(np.uint8)


def test_normalise_equals_opencvs_one_rounding_minmax_for_every_8bit_input():
    values = np.arange(256, dtype=np.uint8)
    two_roundings = 0
    for low in range(256):
        for high in range(low, 256):
            image = values[low:high + 1]
            expected = _one_rounding_normalise(low, high, image)
            assert np.array_equal(_normalise_u8(image), expected), (low, high)
            if high > low:  # the former float32 multiply-then-add
                scale = 255.0 / (high - low)
                two = np.rint(image.astype(np.float32) * np.float32(scale) + np.float32(-low * scale))
                two = np.clip(two, 0, 255).astype(np.uint8)
                two_roundings += int((two != expected).sum())
    assert two_roundings == 6498   # the count of exact .5 ties the two-rounding code missed
    for value in (0, 1, 128, 255):  # a constant image (a vanished lip box, a whole-frame face): all 0
        assert not _normalise_u8(np.full((64, 64), value, np.uint8)).any()


def test_mask_steps_equal_opencv_where_installed():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (the project does not depend on it)")
    values = np.arange(256, dtype=np.uint8)
    for low in range(256):
        for high in range(low, 256):
            image = values[low:high + 1][None]
            assert np.array_equal(_normalise_u8(image), cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX))
    rng = np.random.default_rng(5)
    for h, w in [(512, 512), (128, 128), (300, 300), (720, 1280), (48, 48), (33, 47), (2, 5), (1024, 1024)]:
        for _ in range(10):
            hard = np.zeros((h, w), np.uint8)
            (x0, x1), (y0, y1) = np.sort(rng.integers(0, w + 1, 2)), np.sort(rng.integers(0, h + 1, 2))
            hard[y0:y1, x0:x1] = 255
            small = cv2.resize(hard, (64, 64))
            assert np.array_equal(_resize_linear_u8(hard, 64), small), (h, w)
            assert np.array_equal(_gaussian_blur_u8(small, 31), cv2.GaussianBlur(small, (31, 31), 0))


@pytest.fixture(scope="module")
def hallo_edges(test_data):
    data = np.load(test_data / "hallo_mask_edges.npz")
    return [{k.split(".", 1)[1]: data[k] for k in data.files if k.startswith(f"c{i}.")}
            for i in range(len([k for k in data.files if k.endswith(".meta")]))]


def _case(case):
    width, height, side, ratio, *edges = case["meta"].tolist()
    fx0, fy0, fx1, fy1, lx0, ly0, lx1, ly1 = edges
    return ((fx0, fy0, fx1 - fx0, fy1 - fy0), (lx0, ly0, lx1 - lx0, ly1 - ly0), int(width), int(height), int(side),
            ratio)


def test_masks_and_locator_image_equal_hallos_at_the_edges(hallo_edges):
    """tests/data/hallo_mask_edges.npz (tests/media/record_hallo_mask_edges.py: Hallo's get_mask and
    ImageProcessor.preprocess): faces at every border, tiny and huge faces, a lip box that vanishes
    in the 64x64 resize, portraits of 48-1280 px and non-square ones, face_expand_ratio 1.0-1.5,
    large faces whose normalisation hits a .5 tie."""
    assert len(hallo_edges) >= 20
    for i, case in enumerate(hallo_edges):
        face_box, lip_box, width, height, side, ratio = _case(case)
        images = hallo_mask_images(face_box, lip_box, width, height, ratio)
        for region in ("full", "face", "lip"):
            assert np.array_equal(images[region], case[f"sep_{region}"]), (i, region)
        levels = region_masks(face_box, lip_box, side, side // 8, (width, height), ratio)
        for region in ("full", "face", "lip"):
            for k, level in enumerate(levels[region]):
                expected = torch.from_numpy(case[f"level_{region}_{k}"]).float() / 255
                torch.testing.assert_close(level, expected, rtol=0, atol=1e-6)
        locator = face_mask_image(face_box, side, (width, height), ratio)
        assert locator.shape == (3, side, side) and torch.equal(locator[0], locator[2])
        assert np.array_equal((locator[0] * 255).round().to(torch.uint8).numpy(), case["locator"]), i
    assert any(not c["sep_lip"].any() for c in hallo_edges)  # a lip box that vanished: Hallo's lip mask is empty


def test_render_path_draws_at_the_portraits_side_and_takes_the_lip_box(hallo_edges, monkeypatch):
    # a 1024 px square portrait rendered at 256: the boxes come in frame pixels (a quarter) and are
    # drawn at 1024, as Hallo draws them on the 1024 px source
    case = next(c for c in hallo_edges if c["meta"][:3].tolist() == [1024, 1024, 256])
    face_box, lip_box, width, _, side, ratio = _case(case)
    quarter = [tuple(v * side / width for v in box) for box in (face_box, lip_box)]
    monkeypatch.setattr(face_mod, "detect_face", lambda image: None)
    cond = face_conditions(np.zeros((side, side, 3), np.uint8), side // 8, quarter[0], "none", lip_box=quarter[1],
                           side=width, face_expand_ratio=ratio)
    assert np.array_equal((cond.mask_image[0] * 255).round().to(torch.uint8).numpy(), case["locator"])
    for region in ("full", "face", "lip"):
        expected = torch.from_numpy(case[f"level_{region}_0"]).float() / 255
        torch.testing.assert_close(cond.region_masks[region][0], expected, rtol=0, atol=1e-6)
    assert cond.lip_box == quarter[1]
    # no --lip-box: MediaPipe's lips when it finds a face, also with --face-box
    monkeypatch.setattr(face_mod, "detect_face", lambda image: ((0.0, 0.0, 10.0, 10.0), (20.0, 30.0, 12.0, 6.0)))
    cond = face_conditions(np.zeros((64, 64, 3), np.uint8), 8, (16.0, 8.0, 32.0, 40.0), "none")
    assert cond.face_box == (16.0, 8.0, 32.0, 40.0) and cond.lip_box == (20.0, 30.0, 12.0, 6.0)
