"""FVD: the I3D network (hassony2's layout), reading a TorchScript archive's tensors without running
it, and FVD's behaviour (0 for a set against itself, growing with noise) on a reduced-width I3D of
the same structure."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from avatar_cli.errors import InputError, WeightsError
from avatar_cli.eval import fid, fvd
from tests.eval.random_weights import seeded_state, shapes_of

TINY = fvd.I3DConfig(width=1 / 16, num_classes=24, input_size=32)


@pytest.fixture(scope="module")
def tiny_i3d():
    model = fvd.I3D(TINY)
    model.load_state_dict(seeded_state(shapes_of(model), seed=3), strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory, tiny_i3d):
    """``torch.jit.trace`` + ``save`` of the tiny I3D: a TorchScript archive of the detector's layout,
    made here (the real ``i3d_torchscript.pt`` is also a traced/scripted module's archive)."""
    x = torch.zeros(1, 3, 16, TINY.input_size, TINY.input_size)
    path = tmp_path_factory.mktemp("archive") / "fvd-i3d" / fvd.WEIGHTS_FILE
    path.parent.mkdir()
    torch.jit.trace(tiny_i3d, x, check_trace=False).save(str(path))
    return path


def hassony2_keys() -> set[str]:
    """The state-dict keys of hassony2/kinetics_i3d_pytorch's ``I3D(num_classes=400)``, written out
    from its ``load_tf_weights`` / ``load_conv3d`` / ``load_mixed`` (src/i3dpt.py @ 786fbae)."""
    def unit(name, bn=True, bias=False):
        keys = {f"{name}.conv3d.weight"}
        if bias:
            keys.add(f"{name}.conv3d.bias")
        if bn:
            keys |= {f"{name}.batch3d.{leaf}" for leaf in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
        return keys

    keys = unit("conv3d_1a_7x7") | unit("conv3d_2b_1x1") | unit("conv3d_2c_3x3")
    for block in ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c"):
        for branch in ("branch_0", "branch_1.0", "branch_1.1", "branch_2.0", "branch_2.1", "branch_3.1"):
            keys |= unit(f"mixed_{block}.{branch}")
    return keys | unit("conv3d_0c_1x1", bn=False, bias=True)


def test_full_size_layout_is_hassony2s_and_loads_strictly():
    model = fvd.I3D()
    shapes = shapes_of(model)
    assert set(shapes) == hassony2_keys()
    # shapes the paper's Inception-v1 fixes: first conv 7x7x7 on RGB, Mixed_5c's output 1024, 400 classes
    assert shapes["conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["mixed_4f.branch_1.1.conv3d.weight"] == (320, 160, 3, 3, 3)
    assert shapes["conv3d_0c_1x1.conv3d.weight"] == (400, 1024, 1, 1, 1)
    assert sum(int(np.prod(s)) for k, s in shapes.items() if "num_batches" not in k) == sum(
        p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers() if "num_batches" not in n)
    state = seeded_state(shapes, seed=1)
    fid.load_strict(model, state, "test state")
    assert torch.equal(model.mixed_5c.branch_3[1].batch3d.running_var, state["mixed_5c.branch_3.1.batch3d.running_var"])
    state.pop("mixed_3b.branch_0.conv3d.weight")
    with pytest.raises(WeightsError, match="mixed_3b.branch_0.conv3d.weight"):
        fid.load_strict(fvd.I3D(), state, "test state")


def test_tf_same_padding():
    # TensorFlow SAME: output ceil(n / s); total padding k - s (or k - n % s), smaller half first
    assert fvd.tf_same_pad(224, 7, 2) == (2, 3)
    assert fvd.tf_same_pad(15, 7, 2) == (3, 3)   # 15 % 2 = 1: total 6
    assert fvd.tf_same_pad(16, 3, 1) == (1, 1)
    assert fvd.tf_same_pad(14, 2, 2) == (0, 0)
    x = torch.zeros(1, 1, 16, 224, 224)
    assert fvd.Unit3D(1, 2, (7, 7, 7), (2, 2, 2))(x).shape == (1, 2, 8, 112, 112)
    assert fvd.max_pool_same(torch.zeros(1, 1, 8, 112, 112), (1, 3, 3), (1, 2, 2)).shape == (1, 1, 8, 56, 56)


def test_torchscript_archive_is_read_without_running_it(tiny_archive, tiny_i3d):
    tensors = fvd.read_torchscript_tensors(tiny_archive)
    assert list(tensors) == list(tiny_i3d.state_dict())
    for key, value in tiny_i3d.state_dict().items():
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value), key
    model = fvd.I3D(TINY)
    fid.load_strict(model, dict(tensors), tiny_archive)
    code = fvd.read_torchscript_code(tiny_archive)
    assert any("def forward" in text for text in code.values())


def test_archive_with_code_calling_globals_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(print))  # a global that is not a module record
    with pytest.raises(WeightsError, match="global 'builtins.print' is not allowed"):
        fvd.read_torchscript_tensors(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="TorchScript archive"):
        fvd.read_torchscript_tensors(path)


def test_load_i3d_from_weights_dir_and_missing(tmp_path, monkeypatch, tiny_archive):
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="avatar weights download fvd-i3d"):
        fvd.fvd_between([np.zeros((16, 8, 8, 3), np.uint8)] * 2, [np.zeros((16, 8, 8, 3), np.uint8)] * 2,
                        weights_dir=tmp_path)
    with pytest.raises(WeightsError, match="does not fit I3D"):  # the tiny layout is not the real one
        fvd.load_i3d(tiny_archive.parent.parent)


def test_preprocess_is_resize_then_minus_one_to_one():
    clip = torch.randint(0, 256, (2, 16, 10, 12, 3), dtype=torch.uint8)
    x = fvd.preprocess_clips(clip, 8)
    assert x.shape == (2, 3, 16, 8, 8)
    frame = clip[1, 5].permute(2, 0, 1)[None].float()
    expected = torch.nn.functional.interpolate(frame, size=(8, 8), mode="bilinear", align_corners=False)[0] / 127.5 - 1
    torch.testing.assert_close(x[1, :, 5], expected)
    same = fvd.preprocess_clips(torch.full((1, 16, 8, 8, 3), 255, dtype=torch.uint8), 8, input_range="0,1")
    assert torch.all(same == 1)


def test_clips():
    video = np.zeros((40, 4, 4, 3), np.uint8)
    video[:, 0, 0, 0] = np.arange(40)
    all_clips = fvd.video_clips([video], clips="all")
    assert [int(c[0, 0, 0, 0]) for c in all_clips] == [0, 16]
    assert len(fvd.video_clips([video, video], clips="first")) == 2
    with pytest.raises(InputError, match="FVD clips need 16"):
        fvd.video_clips([video[:10]])


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_noise(tiny_i3d):
    rng = np.random.default_rng(7)
    base = np.clip(rng.normal(128, 40, size=(2, 32, 24, 24, 3)), 0, 255)  # 2 videos x 2 clips
    noise = rng.normal(size=base.shape)
    videos = list(base.astype(np.uint8))
    feats = fvd.i3d_features(fvd.video_clips(videos), tiny_i3d)
    assert feats.shape == (4, TINY.num_classes)
    assert abs(fid.frechet_distance_of_features(feats, feats)) < 1e-9 * float(feats.var(0).sum())
    assert fvd.fvd_between(videos, videos, model=tiny_i3d) == pytest.approx(0.0, abs=1e-9 * float(feats.var(0).sum()))
    values = [fid.frechet_distance_of_features(feats, fvd.i3d_features(
        fvd.video_clips(list(np.clip(base + s * noise, 0, 255).astype(np.uint8))), tiny_i3d)) for s in (12, 64)]
    assert 0 < values[0] < values[1]


def test_full_i3d_equals_hassony2s_network(test_data):
    # hassony2's src/i3dpt.py I3D (the code the detector was scripted from) with the same seeded
    # weights, on the same clip resized to 224 and mapped to [-1, 1]: its logits (tests/data/README.md)
    ref = np.load(test_data / "eval_reference.npz")
    model = fvd.I3D()
    model.load_state_dict(seeded_state(shapes_of(model), seed=11), strict=True)
    feats = fvd.i3d_features([torch.from_numpy(ref["i3d_clip"])], model)
    np.testing.assert_allclose(feats[0].numpy(), ref["i3d_logits"], rtol=1e-4, atol=1e-4 * np.abs(ref["i3d_logits"]).max())


class _ScriptableUnit(torch.nn.Module):
    """A scriptable unit shaped like the detector's (hassony2-style attributes: padding string,
    stride tuple, a ModuleList of pads, conv3d + batch3d) for a ``torch.jit.script`` archive."""

    def __init__(self):
        super().__init__()
        self.padding, self.simplify_pad, self.stride = "SAME", False, (2, 2, 2)
        self.pads = torch.nn.ModuleList([torch.nn.ConstantPad3d((1, 2, 1, 2, 1, 2), 0.0),
                                         torch.nn.ConstantPad3d((0, 1, 0, 1, 0, 1), 0.0)])
        self.conv3d = torch.nn.Conv3d(3, 4, 3, stride=2, bias=False)
        self.batch3d = torch.nn.BatchNorm3d(4, eps=1e-3)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        return torch.relu(self.batch3d(self.conv3d(self.pads[0](x))))


def test_scripted_archive_is_read_too(tmp_path):
    # torch.jit.script archives (the detector was scripted: src.i3dpt_jit) also pickle typed lists
    # through torch.jit._pickle.build_intlist & co., which the reader maps to plain values
    unit = _ScriptableUnit().eval()
    fid.load_strict(unit, seeded_state(shapes_of(unit), seed=2), "seeded")
    path = tmp_path / "scripted.pt"
    torch.jit.script(unit).save(str(path))
    tensors = fvd.read_torchscript_tensors(path)
    assert sorted(tensors) == sorted(unit.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in unit.state_dict().items())
    assert "rescale" in "".join(fvd.read_torchscript_code(path).values())
