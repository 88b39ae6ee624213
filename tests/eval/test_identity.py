"""Identity similarity: the face alignment (Umeyama similarity against a known transform), the
ArcFace input rule, and the whole onnxruntime path with tiny ONNX models written here (a SCRFD
stand-in with one fixed face, a random linear "ArcFace")."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_cli.errors import InputError, WeightsError
from avatar_cli.eval import identity
from avatar_cli.media import face_crop
from tests import onnx_tiny

pytest.importorskip("onnxruntime")

FEATURES = 16


def scrfd_outputs(box_xyxy, kps) -> dict[str, np.ndarray]:
    """SCRFD's nine outputs at 640 with one face: the stride-32 anchor nearest the box centre scores
    0.9, its distances and keypoint offsets encode ``box_xyxy`` / ``kps`` (letterbox pixels)."""
    outs = {}
    for i, stride in enumerate(face_crop.DET_STRIDES):
        n = (identity.DET_SIZE // stride) ** 2 * face_crop.DET_ANCHORS
        outs[f"score_{stride}"] = np.zeros((n, 1), np.float32)
        outs[f"bbox_{stride}"] = np.ones((n, 4), np.float32)
        outs[f"kps_{stride}"] = np.zeros((n, 10), np.float32)
    stride = 32
    cx, cy = (box_xyxy[0] + box_xyxy[2]) / 2, (box_xyxy[1] + box_xyxy[3]) / 2
    side = identity.DET_SIZE // stride
    gx, gy = int(cx // stride), int(cy // stride)
    row = (gy * side + gx) * face_crop.DET_ANCHORS
    ax, ay = gx * stride, gy * stride
    outs["score_32"][row] = 0.9
    outs["bbox_32"][row] = np.array([ax - box_xyxy[0], ay - box_xyxy[1], box_xyxy[2] - ax, box_xyxy[3] - ay]) / stride
    outs["kps_32"][row] = (np.asarray(kps, np.float32) - [ax, ay]).reshape(-1) / stride
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in face_crop.DET_STRIDES]
    return {k: outs[k] for k in order}


# a face in a 160x160 frame: letterboxed to 640 (scale 4)
FACE_BOX = np.array([40.0, 40.0, 120.0, 130.0])
FACE_KPS = np.array([[62, 72], [98, 72], [80, 92], [66, 112], [94, 112]], np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face") / "hallo-face-analysis" / "face_analysis" / "models"
    folder.mkdir(parents=True)
    onnx_tiny.write(folder / identity.DET_FILE, "input.1", (1, 3, 640, 640), scrfd_outputs(FACE_BOX * 4, FACE_KPS * 4))
    weight = np.random.default_rng(0).normal(size=(3 * 112 * 112, FEATURES)).astype(np.float32)
    (folder / identity.REC_FILE).write_bytes(onnx_tiny.linear_model("input.1", (1, 3, 112, 112), "683", weight))
    return folder.parent.parent.parent, weight


def test_umeyama_recovers_a_known_similarity():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = identity.ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ (scale * rot).T + shift
    m = identity.umeyama_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-10)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_align_face_puts_the_keypoints_on_the_template():
    # a frame with a bright dot at each keypoint: after alignment the dots sit at the template
    frame = np.zeros((160, 160, 3), np.uint8)
    for x, y in FACE_KPS.astype(int):
        frame[y - 1:y + 2, x - 1:x + 2] = 255
    crop = identity.align_face(frame, FACE_KPS)
    assert crop.shape == (112, 112, 3)
    for x, y in identity.ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 100


def test_arcface_input_rule_reads_node_names(tmp_path):
    w = np.zeros((3 * 112 * 112, 2), np.float32)
    plain, mxnet = tmp_path / "plain.onnx", tmp_path / "mxnet.onnx"
    plain.write_bytes(onnx_tiny.linear_model("data", (1, 3, 112, 112), "fc1", w))
    mxnet.write_bytes(onnx_tiny.linear_model("data", (1, 3, 112, 112), "fc1", w, ("_minus0", "_mul0")))
    assert identity.onnx_first_node_names(plain) == ["flatten", "matmul"]
    assert identity.arcface_input_norm(plain) == (127.5, 127.5)
    assert identity.arcface_input_norm(mxnet) == (0.0, 1.0)


def test_identity_of_a_frame_with_itself_is_one(models):
    weights_dir, weight = models
    rng = np.random.default_rng(1)
    portrait = rng.integers(0, 256, size=(160, 160, 3), dtype=np.uint8)
    other = rng.integers(0, 256, size=(160, 160, 3), dtype=np.uint8)
    result = identity.identity_similarity(np.stack([portrait, other, portrait]), portrait, weights_dir)
    assert result["frames"] == 3 and result["frames_with_face"] == 3
    assert result["per_frame"][0] == pytest.approx(1.0, abs=1e-6)
    assert result["per_frame"][2] == pytest.approx(1.0, abs=1e-6)
    # the other frame: the cosine of the two linear embeddings, by hand from the aligned crops
    def emb(img):
        crop = identity.align_face(img, FACE_KPS).astype(np.float32)
        return ((crop - 127.5) / 127.5).transpose(2, 0, 1).reshape(-1) @ weight
    a, b = emb(portrait), emb(other)
    expected = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert result["per_frame"][1] == pytest.approx(expected, abs=1e-5)
    assert expected < 0.99
    assert result["min"] == pytest.approx(expected, abs=1e-5)
    assert result["mean"] == pytest.approx((2 + expected) / 3, abs=1e-5)
    assert result["frame_indices"] == [0, 1, 2]
    sampled = identity.identity_similarity([portrait, other, portrait], portrait, weights_dir, every=2)
    assert sampled["frame_indices"] == [0, 2] and sampled["per_frame"] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_missing_models_name_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(WeightsError, match="avatar weights download hallo-face-analysis"):
        identity.identity_similarity([frame], frame, tmp_path)
    with pytest.raises(InputError, match="portrait must be uint8"):
        identity.identity_similarity([frame], frame.astype(np.float32), embedder=object())


def test_no_face_in_the_portrait(tmp_path, models):
    weights_dir, _ = models
    folder = tmp_path / "face_analysis" / "models"
    folder.mkdir(parents=True)
    src = weights_dir / "hallo-face-analysis" / "face_analysis" / "models"
    (folder / identity.REC_FILE).write_bytes((src / identity.REC_FILE).read_bytes())
    empty = {k: np.zeros_like(v) for k, v in scrfd_outputs(FACE_BOX * 4, FACE_KPS * 4).items()}
    onnx_tiny.write(folder / identity.DET_FILE, "input.1", (1, 3, 640, 640), empty)
    embedder = identity.FaceEmbedder.from_dir(folder)
    frame = np.zeros((160, 160, 3), np.uint8)
    assert embedder.embed(frame) is None
    with pytest.raises(InputError, match="no face found in the portrait"):
        identity.identity_similarity([frame], frame, tmp_path)
