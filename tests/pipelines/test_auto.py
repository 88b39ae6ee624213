"""`--model auto`, the default: the first installed model in a documented order, else Ditto's public
weights downloaded on first use (from a hub emulated on 127.0.0.1), and one line naming the command
when nothing can be downloaded."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest

import avatar_cli.pipelines as pipelines
from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.cli import main
from avatar_cli.errors import AvatarError, InputError
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.models.ditto import DittoModels
from tests.conftest import probe
from tests.hub import FakeHub, serving
from tests.models.ditto.test_loaders import write_release
from tests.test_safe_pickle import ditto_cfg

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = "digital-avatar/ditto-talkinghead"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_with_ditto(tmp_path, monkeypatch):
    """A stand-in of Ditto's repo (tiny networks in the released layout, its cfg pickle, the HuBERT
    interface, and an avatar_index.json marking the tiny preset) served on 127.0.0.1, and a
    manifest naming its files; caches and homes in tmp_path."""
    release = tmp_path / "release"
    write_release(DittoModels.from_preset("tiny", seed=2), release)
    files = {f"ditto_pytorch/models/{p.name}": p.read_bytes() for p in release.iterdir()}
    files["ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"] = pickle.dumps(ditto_cfg(), protocol=4)
    files["ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx"] = (DATA / "tiny_hubert_interface.onnx").read_bytes()
    files["avatar_index.json"] = json.dumps({"family": "ditto", "preset": "tiny"}).encode()
    lines = ["[ditto]", 'description = "Ditto, small stand-in"', f'repo_id = "{REPO}"', 'revision = "main"',
             'revision_note = "test"', 'licence = "Apache-2.0"', 'used_by = ["ditto"]', "available = true",
             "files = ["] + [f'  {{ path = "{p}", size = {len(d)} }},' for p, d in files.items()] + ["]", ""]
    (tmp_path / "manifest.toml").write_text("\n".join(lines))
    hub = FakeHub()
    hub.add(REPO, COMMIT, files)
    with serving(hub, monkeypatch, tmp_path, manifest=tmp_path / "manifest.toml"):
        yield tmp_path


def test_nothing_installed_downloads_ditto_then_renders(hub_with_ditto, capsys):
    pytest.importorskip("onnxruntime")
    tmp = hub_with_ditto
    synthetic_portrait(tmp / "face.png", 128)
    synthetic_speech(tmp / "speech.wav", 0.4)
    code = main(["render", str(tmp / "face.png"), str(tmp / "speech.wav"), "--face-box", "32,24,64,80", "--steps",
                 "2", "--device", "cpu", "-o", str(tmp / "out.mp4"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "downloading ditto" in out.err and "GB" in out.err  # the size is announced first
    result = json.loads(out.out)
    assert result["model"] == "ditto" and result["weights"].startswith(str(tmp / "hf"))
    assert probe(tmp / "out.mp4")["frames"] == math.ceil(0.4 * 25)
    # installed now: the next render takes it without asking the hub
    assert main(["render", str(tmp / "face.png"), str(tmp / "speech.wav"), "--face-box", "32,24,64,80", "--steps",
                 "2", "--device", "cpu", "-o", str(tmp / "again.mp4"), "--no-download"]) == 0
    assert "--model auto: ditto (the first installed" in capsys.readouterr().err


def test_offline_or_no_download_fails_in_one_line_naming_the_command(hub_with_ditto, monkeypatch, capsys):
    tmp = hub_with_ditto
    synthetic_portrait(tmp / "face.png", 64)
    synthetic_speech(tmp / "speech.wav", 0.2)
    args = ["render", str(tmp / "face.png"), str(tmp / "speech.wav"), "-o", str(tmp / "x.mp4")]
    assert main([*args, "--no-download"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 'avatar weights download ditto'" in err[0] and "--no-download" in err[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "avatar weights download ditto" in err[0]
    # issue 23: one line of at most 200 characters with one remedy (the README's promise)
    assert len(err[0]) <= 200 and "--random-weights" not in err[0] and "--weights" not in err[0], err[0]
    assert not (tmp / "x.mp4").exists() and not (tmp / "hf").exists()  # nothing downloaded, nothing written


def test_auto_takes_the_first_installed_in_the_documented_order(monkeypatch, tmp_path):
    notes = []
    installed = {"hallo", "ditto"}
    monkeypatch.setattr(pipelines, "_installed", lambda model: tmp_path if model in installed else None)
    assert pipelines.choose_model(note=notes.append) == "ditto"
    installed.add("fada")
    assert pipelines.choose_model(note=notes.append) == "fada"
    installed.add("osa-lcm")
    assert pipelines.choose_model(note=notes.append) == "osa-lcm"
    assert "osa-lcm, fada, ditto, echomimic-acc, hallo, echomimic" in notes[-1]
    assert pipelines.choose_model(random_weights=True) == "osa-lcm"
    installed.clear()
    with pytest.raises(InputError, match="avatar weights download ditto"):
        pipelines.choose_model(download=False)


def test_auto_with_a_weights_folder_takes_the_model_it_holds(tmp_path):
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "student")
    AvatarModels.from_preset("tiny", family="hallo").save_pretrained(tmp_path / "hallo")
    AvatarModels.from_preset("tiny", cfg_tokens=4).save_pretrained(tmp_path / "fada")
    (tmp_path / "ditto").mkdir()
    (tmp_path / "ditto" / "avatar_index.json").write_text(json.dumps({"family": "ditto"}))
    got = {name: pipelines.choose_model(tmp_path / name) for name in ("student", "hallo", "fada", "ditto")}
    assert got == {"student": "osa-lcm", "hallo": "hallo", "fada": "fada", "ditto": "ditto"}


def test_a_missing_package_fails_in_one_line_before_any_download(hub_with_ditto, monkeypatch, capsys):
    """Issue 23: the default model needs onnxruntime (HuBERT, the face crop); a render must say so, with the
    install command, before downloading 2.3 GB, and before any model loads."""
    from avatar_cli.models import catalog

    tmp = hub_with_ditto
    synthetic_portrait(tmp / "face.png", 64)
    synthetic_speech(tmp / "speech.wav", 0.2)
    real = catalog.importable
    monkeypatch.setattr(catalog, "importable", lambda module: module != "onnxruntime" and real(module))
    loads = []
    monkeypatch.setattr(pipelines, "pipeline_class", lambda family: loads.append(family))
    for args in ([], ["--model", "ditto"]):
        code = main(["render", str(tmp / "face.png"), str(tmp / "speech.wav"), "-o", str(tmp / "x.mp4"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, err
        assert "--model ditto needs onnxruntime, which is not installed; install it with: pip install " \
               "'onnxruntime>=1.16'" in err[0]
    assert loads == [] and not (tmp / "x.mp4").exists() and not (tmp / "hf").exists()
    # random weights need none of it (a seeded HuBERT stand-in), and the check is the same for the API
    catalog.check_packages("ditto", random_weights=True)
    with pytest.raises(AvatarError, match="pip install 'onnxruntime>=1.16'"):
        catalog.check_packages("ditto")
