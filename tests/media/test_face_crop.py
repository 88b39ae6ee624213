"""Ditto's source-image face crop against Ditto's own code (tests/data/ditto_crop_fixture.npz,
recorded by running antgroup/ditto-talkinghead @ e9191cf with OpenCV 4.14; see tests/data/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar_cli.errors import InputError, WeightsError
from avatar_cli.media import face_crop as fc

from .. import onnx_tiny

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "ditto_crop_fixture.npz"
# det_10g's real names (InsightFace buffalo_l): input "input.1", outputs scores/boxes/kps per stride
DET_OUTPUTS = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def ort():
    """onnxruntime (the ``ditto`` and ``test`` extras)."""
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def astronaut(test_data):
    """tests/data/astronaut.png brought to 512 px as the fixture was recorded (tests/data/README.md)."""
    image = Image.open(test_data / "astronaut.png").convert("RGB")
    return np.asarray(image.resize((512, 512), Image.Resampling.BICUBIC))


# ------------------------------------------------------------------ image primitives vs OpenCV
def test_warp_affine_is_opencv_bit_exact(fx):
    for m, ref in zip(fx["warp_M"], fx["warp_u8"]):
        np.testing.assert_array_equal(fc.warp_affine(fx["warp_src"], m, (56, 40)), ref)
    for m, ref in zip(fx["warp_M"][:3], fx["warp_f32"]):
        out = fc.warp_affine(fx["warp_srcf"], m, (28, 20))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_resize_linear_and_area_match_opencv(fx):
    for i, (w, h) in enumerate(fx["resize_sizes"]):
        out = fc.resize_linear(fx["warp_src"], (int(w), int(h)))
        diff = np.abs(out.astype(int) - fx[f"resize_lin_{i}"])
        assert diff.max() <= 1
        # exact except OpenCV's scalar tail on a 7-px-wide result
        assert (diff > 0).mean() < (0.01 if w == 7 else 1e-9)
    np.testing.assert_array_equal(fc.downscale_half(fx["warp_src"]), fx["area_half"])


def test_source_size_is_dittos_rule(fx):
    got = [fc.source_size(h, w) for h, w in fx["check_resize_in"]]
    np.testing.assert_array_equal(np.array(got), fx["check_resize_out"])
    odd = np.zeros((77, 101, 3), np.uint8)
    assert fc.fit_source_size(odd).shape == (76, 100, 3)
    even = np.zeros((40, 60, 3), np.uint8)
    assert fc.fit_source_size(even) is even
    # longer side capped: 300x200 at max 100 -> 100 x round(66.7) = 67 -> floored to 66
    tall = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fc.fit_source_size(tall, 100), fc.resize_linear(tall, (66, 100)))


# ------------------------------------------------------------------ crop rule and decoders
def test_crop_matrix_matches_ditto(fx):
    for pts, ref, (scale, vx, vy, rot) in zip(fx["rule_pts"], fx["rule_o2c"], fx["rule_kw"]):
        m = fc.crop_matrix(pts, 512, scale, vx, vy, rotate=bool(rot))
        assert m.shape == (3, 3) and m.dtype == np.float32
        np.testing.assert_allclose(m[:2], ref, atol=1e-4, rtol=0)


def test_scrfd_decode_and_nms_match_ditto(fx):
    outs = [fx[f"rand_out{i}"] for i in range(9)]
    h, w = fx["rand_img_hw"]
    new_h = 128 if h / w > 1 else int(128 * h / w)
    dets, kps = fc.scrfd_decode(outs, new_h / h, size=128)
    assert len(dets) == len(fx["rand_det"]) > 10
    np.testing.assert_allclose(dets, fx["rand_det"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(kps, fx["rand_kps"], rtol=0, atol=1e-4)
    # a leading batch axis (other SCRFD exports) decodes the same
    batched, _ = fc.scrfd_decode([o[None] for o in outs], new_h / h, size=128)
    np.testing.assert_array_equal(batched, dets)


def test_nms_plus_one_convention():
    # 10x10 boxes shifted by 4.5 px: IoU with the +1 convention 6.5*11 / (2*121 - 6.5*11) = 0.419
    # (> 0.4: dropped); without it 5.5/14.5 = 0.379 (it would be kept). Shifted by 6: 5/17 = 0.29, kept.
    dets = np.array([[0, 0, 10, 10, 0.9], [4.5, 0, 14.5, 10, 0.8], [6, 0, 16, 10, 0.7]], np.float32)
    assert fc.nms(dets[:2]) == [0]
    assert fc.nms(dets[[0, 2]]) == [0, 1]
    assert fc.nms(dets[[2, 0]]) == [1, 0]  # best score first


# ------------------------------------------------------------------ the ONNX path end to end
class Recorder:
    """An onnxruntime session that keeps what it was fed."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        self.feeds.append({k: v.copy() for k, v in feeds.items()})
        return self.session.run(names, feeds)


def write_aux(folder: Path, fx, case: str, no_face: bool = False) -> Path:
    """The three aux models as tiny constant ONNX files in the real names and shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    det = {name: fx[f"{case}_det_out{i}"] for i, name in enumerate(DET_OUTPUTS)}
    if no_face:
        for name in DET_OUTPUTS[:3]:
            det[name] = np.zeros_like(det[name])
    onnx_tiny.write(folder / "det_10g.onnx", "input.1", (1, 3, 512, 512), det)
    onnx_tiny.write(folder / "2d106det.onnx", "data", (1, 3, 192, 192), {"fc1": fx[f"{case}_fc1"]})
    onnx_tiny.write(folder / "landmark203.onnx", "input", (1, 3, 224, 224),
                    {"out_0": np.full((1, 3), 7.0, np.float32), "out_1": np.zeros((1, 2), np.float32),
                     "out_2": fx[f"{case}_lmk203_out"]})
    return folder


def case_image(astronaut, fx, case):
    y0, y1, x0, x1 = fx[f"{case}_image_region"]
    return np.ascontiguousarray(astronaut[y0:y1, x0:x1])


@pytest.mark.parametrize("case", ["a", "b"])
def test_face_cropper_matches_ditto(tmp_path, fx, astronaut, case, ort):
    image = case_image(astronaut, fx, case)
    cropper = fc.FaceCropper.from_dir(write_aux(tmp_path, fx, case), device="cpu")
    cropper.det, cropper.lmk106, cropper.lmk203 = (Recorder(s) for s in (cropper.det, cropper.lmk106,
                                                                          cropper.lmk203))
    dets = cropper.detect(image)
    np.testing.assert_allclose(dets, fx[f"{case}_dets"], atol=1e-3, rtol=0)
    result = cropper.crop(image)

    # what each network was fed (Ditto's blobs, subsampled)
    det_in = cropper.det.feeds[-1]["input.1"]
    assert det_in.shape == (1, 3, 512, 512)
    diff = np.abs(np.round(det_in[0, :, ::8, ::8] * 128 + 127.5) - fx[f"{case}_det_blob_sub"])
    # case a needs no resize (exact); case b's letterbox upscale is off by 1 level on 0.19 %
    assert diff.max() <= (0 if case == "a" else 1) and (diff > 0).mean() < 0.005
    l106_in = cropper.lmk106.feeds[-1]["data"]
    np.testing.assert_array_equal(l106_in[0, :, ::3, ::3], fx[f"{case}_l106_blob_sub"])
    l203_in = cropper.lmk203.feeds[-1]["input"]
    np.testing.assert_array_equal(np.round(l203_in[0, :, ::4, ::4] * 255), fx[f"{case}_l203_blob_sub"])

    # geometry: points and matrices
    lmk106 = cropper.landmarks106(image, fx[f"{case}_box"])
    np.testing.assert_allclose(lmk106, fx[f"{case}_lmk106"], atol=1e-3)
    assert result.landmarks.shape == (203, 2)
    np.testing.assert_allclose(result.landmarks, fx[f"{case}_lmk203"], atol=1e-3)
    assert result.M_c2o.shape == (3, 3) and result.M_c2o.dtype == np.float32
    np.testing.assert_allclose(result.M_c2o, fx[f"{case}_M_c2o"], atol=1e-4, rtol=0)

    # pixels: the 512 crop. Measured identical to Ditto's (same float32 matrix steps, bit-exact
    # warp); the bound leaves room for a sample crossing a 1/32-px step under another BLAS.
    assert result.img_crop.shape == (512, 512, 3) and result.img_crop.dtype == np.uint8
    sub = result.img_crop[::6, ::6].astype(int)
    assert np.abs(sub - fx[f"{case}_crop_sub"]).mean() <= 0.25
    sums = np.array([result.img_crop.astype(np.int64).sum(), (result.img_crop.astype(np.int64) ** 2).sum()])
    np.testing.assert_allclose(sums, fx[f"{case}_crop_sum"], rtol=1e-6)
    assert result.rgb_256.shape == (1, 3, 256, 256) and result.rgb_256.dtype == np.float32
    rgb = np.round(result.rgb_256[0, :, ::4, ::4] * 255)
    assert np.abs(rgb - fx[f"{case}_rgb256_sub"]).mean() <= 0.25


def test_crop_source_prefers_the_landmark_path(tmp_path, fx, astronaut, ort):
    notes = []
    result = fc.crop_source(astronaut, aux_dir=write_aux(tmp_path, fx, "a"), warn=notes.append, device="cpu")
    assert notes == [] and result.landmarks is not None
    np.testing.assert_allclose(result.M_c2o, fx["a_M_c2o"], atol=1e-4, rtol=0)


def test_face_box_replaces_detection(tmp_path, fx, astronaut, ort):
    cropper = fc.FaceCropper.from_dir(write_aux(tmp_path, fx, "a"), device="cpu")

    class NoDetector:
        def get_inputs(self):
            raise AssertionError("the detector must not run with a face box")

        run = get_inputs

    cropper.det = NoDetector()
    x1, y1, x2, y2 = fx["a_box"][:4]
    result = cropper.crop(astronaut, face_box=(x1, y1, x2 - x1, y2 - y1))
    np.testing.assert_allclose(result.M_c2o, fx["a_M_c2o"], atol=1e-4, rtol=0)


def test_no_face_is_one_line_input_error(tmp_path, fx, astronaut, ort):
    cropper = fc.FaceCropper.from_dir(write_aux(tmp_path, fx, "a", no_face=True), device="cpu")
    with pytest.raises(InputError) as err:
        cropper.crop(astronaut, name="me.png")
    assert str(err.value) == "no face found in me.png; pass --face-box x,y,w,h"


@pytest.mark.parametrize("missing", fc.AUX_FILES)
def test_missing_model_names_the_file(tmp_path, fx, missing):
    folder = write_aux(tmp_path, fx, "a")
    (folder / missing).unlink()
    with pytest.raises(WeightsError) as err:
        fc.FaceCropper.from_dir(folder)
    message = str(err.value)
    assert missing in message and "avatar weights download ditto" in message and "\n" not in message


def test_onnxruntime_missing_is_one_line(tmp_path, fx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InputError) as err:
        fc.FaceCropper.from_dir(write_aux(tmp_path, fx, "a"))
    assert "pip install onnxruntime" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ the no-ONNX box crop
def test_box_crop_geometry_by_hand(astronaut):
    # box 128 px at (150, 70): side 2.0 * 128 = 256 -> crop scale 2; centre (214, 134 - 32) = (214, 102);
    # crop pixel (0, 0) sits at image (214 - 128, 102 - 128) = (86, -26), so even crop pixels are
    # image pixels: crop[2j, 2i] = image[-26 + j, 86 + i] (0 above the top edge).
    result = fc.box_crop(astronaut, (150, 70, 128, 128))
    np.testing.assert_allclose(result.M_c2o @ [256, 256, 1], [214, 102, 1], atol=1e-4)
    expected = np.zeros((256, 256, 3), np.uint8)
    expected[26:] = astronaut[0:230, 86:342]
    np.testing.assert_array_equal(result.img_crop[::2, ::2], expected)
    assert result.landmarks is None
    # rgb_256 is the 2x2 box mean of the crop
    box = result.img_crop.reshape(256, 2, 256, 2, 3).astype(int).sum((1, 3))
    np.testing.assert_array_equal(np.round(result.rgb_256[0].transpose(1, 2, 0) * 255), (box + 2) // 4)


def test_crop_source_falls_back_to_the_box(tmp_path, astronaut):
    notes = []
    result = fc.crop_source(astronaut, aux_dir=tmp_path, face_box=(150, 70, 128, 128), warn=notes.append)
    assert len(notes) == 1 and "--face-box" in notes[0]
    np.testing.assert_array_equal(result.img_crop, fc.box_crop(astronaut, (150, 70, 128, 128)).img_crop)
    with pytest.raises(WeightsError, match="det_10g.onnx"):
        fc.crop_source(astronaut, aux_dir=tmp_path)
    with pytest.raises(WeightsError, match="avatar weights download ditto"):
        fc.crop_source(astronaut)


def test_parse_face_box():
    assert fc.parse_face_box("10,20.5,30,40") == (10.0, 20.5, 30.0, 40.0)
    for bad in ("1,2,3", "a,b,c,d", "1,2,0,4"):
        with pytest.raises(InputError):
            fc.parse_face_box(bad)


# ------------------------------------------------------------------ eye state
def test_eye_state_matches_ditto(fx):
    for lmk, ref_open, ref_ball in zip(fx["eye_lmk"], fx["eye_open"], fx["eye_ball"]):
        eye_open, eye_ball = fc.eye_state(lmk)
        assert eye_open.shape == (2,) and eye_ball.shape == (6,)
        np.testing.assert_allclose(eye_open, ref_open, rtol=1e-5)
        np.testing.assert_allclose(eye_ball, ref_ball, rtol=1e-5, atol=1e-7)


def test_eye_state_by_hand():
    p = np.zeros((478, 3))
    # left eye: corners 33 (outer) at x=0 and 133 (inner) at x=4; lids 1, 2, 1 apart -> open 4/4 = 1
    p[33], p[133] = (0, 0, 0), (4, 0, 0)
    for (a, b), h in zip(((145, 159), (144, 160), (153, 158)), (1, 2, 1)):
        p[a], p[b] = (2, h / 2, 0), (2, -h / 2, 0)
    # iris 468 one unit above the centre (2, 0): dir(iris, c) = (0, 1, 0), dir(33, 133) = (-1, 0, 0)
    p[468] = (2, 1, 0)
    # right eye: width 2, lids 0.5 each -> 0.75; iris at the centre -> no move
    p[263], p[362] = (10, 0, 0), (12, 0, 0)
    for a, b in ((374, 386), (373, 387), (380, 385)):
        p[a], p[b] = (11, 0.25, 0), (11, -0.25, 0)
    p[473] = (11, 0, 0)
    eye_open, eye_ball = fc.eye_state(p)
    np.testing.assert_allclose(eye_open, [1.0, 0.75], rtol=1e-6)
    # move_L = ((0,1,0) - (-1,0,0)) * 1 = (1, 1, 0); layout [Lx, Rx, Ly, Ry, Lz, Rz]
    np.testing.assert_allclose(eye_ball, [1, 0, 1, 0, 0, 0], atol=1e-6)


def test_detect_eye_state_without_mediapipe_is_neutral(tmp_path):
    notes = []
    eye_open, eye_ball = fc.detect_eye_state(np.zeros((512, 512, 3), np.uint8), None, warn=notes.append)
    np.testing.assert_array_equal(eye_open, fc.NEUTRAL_EYE_OPEN)
    np.testing.assert_array_equal(eye_ball, np.zeros(6))
    assert len(notes) == 1 and "neutral" in notes[0] and "\n" not in notes[0]
    eye_open, _ = fc.detect_eye_state(np.zeros((512, 512, 3), np.uint8), tmp_path / "none.task",
                                      warn=notes.append)
    assert len(notes) == 2 and "none.task" in notes[1]
