"""Paste-back against Ditto's putback.py / get_mask.py run with OpenCV 4.10 (fixture)."""

import numpy as np

from avatar_cli.media.paste import PasteBack, get_mask, paste_back, warp_affine
from tests.motion.ditto_fakes import load_fixture

FX = load_fixture()


def inputs():
    g = np.random.default_rng(31)
    render = (g.random((512, 512, 3)) * 255).astype(np.float32)
    frame = g.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    return render, frame


def test_mask_matches_ditto_and_hand_values():
    m = get_mask(512, 512, 0.9, 0.9)
    assert m.shape == (512, 512, 1) and m.dtype == np.float32
    m = m[..., 0]
    for name, part in [("tl", m[:40, :40]), ("br", m[-40:, -40:]), ("tr", m[:40, -40:]), ("bl", m[-40:, :40]),
                       ("row", m[256]), ("col", m[:, 256])]:
        np.testing.assert_allclose(part, FX[f"mask_{name}"], atol=1e-7)
    assert float(m.astype(np.float64).sum()) == float(FX["mask_sum"])
    assert m[26:486, 26:486].min() == 1 and m[0, 256] == 0 and m[256, 511] == 0
    np.testing.assert_allclose(m[:26, 256], np.arange(26) / 25, atol=1e-7)  # 26-pixel linear ramp
    assert m[0, 0] == 0 and m[25, 25] == 1  # corners: 1 - distance to the inner corner


def test_warp_matches_opencv_and_paste_matches_ditto():
    render, frame = inputs()
    M = FX["paste_M"]
    mask_w = np.clip(warp_affine(get_mask()[..., 0], M, (120, 100)), 0, 1)
    np.testing.assert_allclose(mask_w, FX["paste_mask_w"], rtol=0, atol=1e-4)
    out = paste_back(frame, render, M)
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - FX["paste_out"].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_warp_closed_forms():
    src = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    np.testing.assert_array_equal(warp_affine(src, np.eye(3), (30, 20)), src)
    shift = np.array([[1, 0, 3], [0, 1, 2]], np.float64)  # dst(x, y) = src(x - 3, y - 2), 0 outside
    out = warp_affine(src, shift, (30, 20))
    np.testing.assert_allclose(out[2:, 3:], src[:-2, :-3], atol=1e-6)
    assert not out[:2].any() and not out[:, :3].any()
    half = np.array([[1, 0, 0.5], [0, 1, 0]], np.float64)  # half-pixel shift: mean of neighbours
    np.testing.assert_allclose(warp_affine(src, half, (30, 20))[:, 1:], (src[:, 1:] + src[:, :-1]) / 2, atol=1e-6)


def test_paste_truncates_and_keeps_the_frame_outside():
    frame = np.full((40, 50, 3), 200, np.uint8)
    render = np.full((512, 512, 3), 100.9, np.float32)
    M = np.array([[0.05, 0, 10], [0, 0.05, 5], [0, 0, 1]], np.float64)  # crop -> 25.6 px square at (10, 5)
    out = paste_back(frame, render, M)
    assert (out[0] == 200).all() and (out[:, -1] == 200).all()
    assert (out[18, 22] == 100).all()  # inside the crop: 100.9 truncated, not rounded


def test_roi_equals_full_warp_and_crop_off_the_frame():
    src = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    M = np.array([[0.9, -0.3, -20.3], [0.3, 0.9, 15.7]], np.float64)
    full = warp_affine(src, M, (70, 50))
    np.testing.assert_array_equal(warp_affine(src, M, (70, 50), roi=(5, 7, 40, 30)), full[7:30, 5:40])
    # a crop hanging off the top-left corner: the frame is kept where the mask is 0, blended elsewhere
    frame = np.random.default_rng(2).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    render = np.random.default_rng(3).random((512, 512, 3)).astype(np.float32) * 255
    Mc = np.array([[0.12, 0, -20], [0, 0.12, -25], [0, 0, 1]])
    out = paste_back(frame, render, Mc)
    mw = np.clip(warp_affine(get_mask()[..., 0], Mc, (80, 60)), 0, 1)[..., None]
    ref = np.clip(mw * warp_affine(render, Mc, (80, 60)) + (1 - mw) * frame.astype(np.float32), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, ref)
    assert (out[40:] == frame[40:]).all()


def test_precomputed_paste_numpy_and_torch_match_the_fixture():
    torch = __import__("pytest").importorskip("torch")
    render, frame = inputs()
    pb = PasteBack(FX["paste_M"], frame.shape[:2])
    ref = paste_back(frame, render, FX["paste_M"])
    np.testing.assert_array_equal(pb(frame, render), ref)
    np.testing.assert_array_equal(pb(frame, render), ref)  # reusable
    out_t = pb(torch.from_numpy(frame), torch.from_numpy(render))
    assert out_t.dtype == torch.uint8
    diff = np.abs(out_t.numpy().astype(int) - FX["paste_out"].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    off = PasteBack(np.array([[0.1, 0, -500], [0, 0.1, -500], [0, 0, 1]]), frame.shape[:2])
    np.testing.assert_array_equal(off(frame, render), frame)  # crop entirely outside the frame
