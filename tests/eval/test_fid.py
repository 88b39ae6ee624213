"""FID: the Fréchet distance against closed forms and three reference codes, the Inception network
and FID against torchmetrics 1.9 on the same random weights (tests/data/eval_reference.npz), and
the behaviour FID must have (0 for a set against itself, growing with noise)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from avatar_cli.errors import InputError, WeightsError
from avatar_cli.eval import fid
from tests.eval.random_weights import seeded_state, shapes_of


@pytest.fixture(scope="module")
def reference(test_data):
    return dict(np.load(test_data / "eval_reference.npz"))


@pytest.fixture(scope="module")
def inception():
    model = fid.FIDInceptionV3()
    model.load_state_dict(seeded_state(shapes_of(model), seed=0), strict=True)
    return model


@pytest.fixture(scope="module")
def small_inception(inception):
    """The same network and weights at a 75 px input (16x cheaper) for the behaviour tests."""
    model = fid.FIDInceptionV3(input_size=75)
    model.load_state_dict(inception.state_dict(), strict=True)
    return model


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_diagonal_gaussians_closed_form():
    # commuting (diagonal) covariances: d = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0 + (0.5 - 1) ** 2
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_frechet_2x2_non_commuting_closed_form():
    # for 2x2 M with positive eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-12)


def test_frechet_equals_reference_codes(reference):
    # clean-fid's frechet_distance, StyleGAN-V's (fvd-comparison our_fvd.compute_fvd) and
    # torchmetrics' _compute_fid on the same two feature sets
    value = fid.frechet_distance_of_features(reference["frechet_x"], reference["frechet_y"])
    for name in ("frechet_cleanfid", "frechet_stylegan_v", "frechet_torchmetrics"):
        assert value == pytest.approx(float(reference[name]), rel=1e-9), name


def test_statistics_are_numpy_mean_and_unbiased_cov():
    x = np.random.default_rng(1).normal(size=(7, 3))
    mu, sigma = fid.feature_statistics(x)
    np.testing.assert_allclose(mu.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x, rowvar=False), rtol=1e-12)
    with pytest.raises(InputError):
        fid.feature_statistics(x[:1])


# ----------------------------------------------------------------------------- Inception and FID
def test_features_and_fid_equal_torchmetrics(reference, inception):
    value = fid.fid_between(reference["fid_frames_a"], list(reference["fid_frames_b"]), model=inception)
    assert value == pytest.approx(float(reference["fid_antialias"]), rel=1e-4)
    feats = fid.inception_features(reference["fid_frames_a"][:2], inception)
    np.testing.assert_allclose(feats.numpy(), reference["features_a_antialias"][:2], rtol=1e-4, atol=1e-4)


def test_tf1_resize_features_equal_torch_fidelity(reference, inception):
    # torchmetrics with antialias=False runs torch-fidelity's TensorFlow-1.x bilinear resize
    inception.resize = "tf1"
    try:
        feats = fid.inception_features(reference["fid_frames_a"][:3], inception)
    finally:
        inception.resize = "antialias"
    np.testing.assert_allclose(feats.numpy(), reference["features_a_tf1"][:3], rtol=1e-4, atol=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(small_inception):
    inception = small_inception
    rng = np.random.default_rng(5)
    base = np.clip(rng.normal(128, 40, size=(8, 24, 24, 3)), 0, 255)
    frames = base.astype(np.uint8)
    noise = rng.normal(size=base.shape)
    feats = fid.inception_features(frames, inception)
    scale = float(feats.var(0).sum())
    assert abs(fid.frechet_distance_of_features(feats, feats)) < 1e-6 * scale
    values = [fid.frechet_distance_of_features(
        feats, fid.inception_features(np.clip(base + s * noise, 0, 255).astype(np.uint8), inception))
        for s in (8, 24, 64)]
    assert 0 < values[0] < values[1] < values[2]


def test_frames_input_forms(small_inception):
    inception = small_inception
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 20, 28, 3), dtype=np.uint8)
    whole = fid.inception_features(frames, inception)
    listed = fid.inception_features([frames[0], frames[1:]], inception, batch_size=1)
    torch.testing.assert_close(whole, listed, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError):
        fid.inception_features(frames.astype(np.float32), inception)


# ----------------------------------------------------------------------------- weights
def test_missing_weights_name_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="avatar weights download fid-inception"):
        fid.fid_between(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8), weights_dir=tmp_path)


def test_weights_load_strictly_and_safely(tmp_path, inception):
    folder = tmp_path / "fid-inception"
    folder.mkdir()
    torch.save(inception.state_dict(), folder / fid.WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="sha256 does not start with 6726825d"):
        fid.load_inception(tmp_path)
    model = fid.load_inception(tmp_path, check_hash=False)
    for k, v in inception.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    bad = {k: v for k, v in inception.state_dict().items() if k.startswith("fc.")}
    bad.pop("fc.bias")
    torch.save(bad, folder / fid.WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="does not fit"):
        fid.load_inception(tmp_path, check_hash=False)
    (folder / fid.WEIGHTS_FILE).write_bytes(pickle.dumps(print))  # a global: refused, never called
    with pytest.raises(WeightsError, match="cannot read"):
        fid.load_inception(tmp_path, check_hash=False)


@pytest.mark.parametrize("n", [5, 20, 40])
def test_low_rank_path_equals_covariance_path(n):
    # n = 5: singular covariances (n < D = 24), the SVD path; n = 20: full rank, still the SVD path;
    # n = 40: the D x D path (n^3 > 2 D^3)
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 24)), rng.normal(size=(n + 3, 24)) * 1.5 + 0.2
    direct = fid.frechet_distance(*fid.feature_statistics(x), *fid.feature_statistics(y))
    assert fid.frechet_distance_of_features(x, y) == pytest.approx(direct, rel=1e-6)
    xa = torch.as_tensor(x) - torch.as_tensor(x).mean(0)
    xb = torch.as_tensor(y) - torch.as_tensor(y).mean(0)
    nuclear = torch.linalg.svdvals(xa @ xb.T / np.sqrt((len(x) - 1) * (len(y) - 1))).sum()
    assert float(nuclear) == pytest.approx(float(fid.trace_sqrt_product(*(fid.feature_statistics(v)[1] for v in (x, y)))),
                                           rel=1e-6)
