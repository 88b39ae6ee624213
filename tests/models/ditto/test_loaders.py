"""DittoModels.from_files reads the released file layouts strictly and refuses anything else in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from avatar_cli.errors import WeightsError
from avatar_cli.models.ditto import FILES, DittoModels


def write_release(models: DittoModels, folder: Path) -> None:
    """The six files as Ditto's HF folder lays them out (stitch: DDP-prefixed keys beside the unused
    retargeting nets; LMDM: a training checkpoint dict)."""
    folder.mkdir(exist_ok=True)
    for name, filename in FILES.items():
        sd = getattr(models, name).state_dict()
        if name == "stitch":
            obj = {"retarget_shoulder": {f"module.{k}": v for k, v in sd.items()},
                   "retarget_mouth": {"module.mlp.0.weight": torch.zeros(2, 2)},
                   "retarget_eye": {"module.mlp.0.weight": torch.zeros(2, 2)}}
        elif name == "dit":
            obj = {"model_state_dict": sd}
        else:
            obj = sd
        torch.save(obj, folder / filename)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    models = DittoModels.from_preset("tiny", seed=3)
    folder = tmp_path_factory.mktemp("ditto") / "models"
    write_release(models, folder)
    return models, folder


def test_loads_every_file_strictly(release):
    models, folder = release
    loaded = DittoModels.from_files(folder, preset="tiny")
    ref = models.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(ref)
    for key, value in ref.items():
        assert got[key].device.type == "cpu" and torch.equal(got[key], value), key
    assert not loaded.training
    with torch.no_grad():  # the spectral-norm weights are recomputed from the loaded u, v, weight_orig
        feature = torch.randn(1, 16, 8, 8)
        torch.testing.assert_close(loaded.decoder(feature), models.decoder(feature))


def _rewrite(folder: Path, tmp_path: Path, filename: str, edit) -> Path:
    out = tmp_path / "models"
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    obj = torch.load(out / filename, weights_only=True)
    torch.save(edit(obj), out / filename)
    return out


def _drop(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("filename, edit, message", [
    ("warp_network.pth", lambda sd: _drop(sd, "fourth.bias"),
     "warp_network.pth: missing key 'fourth.bias'; expected the layout of Ditto's warping network"),
    ("decoder.pth", lambda sd: {**sd, "fc.extra": torch.zeros(1)},
     "decoder.pth: unexpected key 'fc.extra'; expected the layout of Ditto's SPADE decoder"),
    ("appearance_extractor.pth", lambda sd: {**sd, "second.weight": torch.zeros(16, 16, 3, 3)},
     "appearance_extractor.pth: key 'second.weight' has shape (16, 16, 3, 3), expected (16, 16, 1, 1)"),
    ("lmdm_v0.4_hubert.pth", lambda obj: {"model_state_dict": _drop(obj["model_state_dict"],
                                                                  "seqTransDecoder.stack.1.rotary.freqs")},
     "lmdm_v0.4_hubert.pth: missing key 'seqTransDecoder.stack.1.rotary.freqs'"),
    ("lmdm_v0.4_hubert.pth", lambda obj: obj["model_state_dict"],
     "lmdm_v0.4_hubert.pth: no 'model_state_dict' entry"),
    ("stitch_network.pth", lambda obj: {"retarget_eye": obj["retarget_eye"]},
     "stitch_network.pth: no 'retarget_shoulder' entry"),
])
def test_refuses_a_wrong_layout_in_one_line(release, tmp_path, filename, edit, message):
    _, folder = release
    bad = _rewrite(folder, tmp_path, filename, edit)
    with pytest.raises(WeightsError) as info:
        DittoModels.from_files(bad, preset="tiny")
    text = str(info.value)
    assert "\n" not in text and message in text and str(bad / filename) in text


def test_refuses_a_missing_file(release, tmp_path):
    _, folder = release
    bad = _rewrite(folder, tmp_path, "motion_extractor.pth", lambda sd: sd)
    (bad / "motion_extractor.pth").unlink()
    with pytest.raises(WeightsError, match=r"motion_extractor.pth not found: .*ditto_pytorch/models/"):
        DittoModels.from_files(bad, preset="tiny")


class _NotATensor:
    pass


def test_never_unpickles_code(release, tmp_path):
    _, folder = release
    bad = _rewrite(folder, tmp_path, "motion_extractor.pth", lambda sd: sd)
    with open(bad / "motion_extractor.pth", "wb") as f:
        pickle.dump({"x": _NotATensor()}, f, protocol=2)
    with pytest.raises(WeightsError, match="motion_extractor.pth: cannot be read as a torch checkpoint") as info:
        DittoModels.from_files(bad, preset="tiny")
    assert "\n" not in str(info.value)
