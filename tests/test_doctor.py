"""`avatar doctor`: its JSON against facts read another way (importlib.metadata, os, runtime, the
emulated hub's files), and its exit code: 0 when the default render can run, 1 naming the fix when it
cannot (offline with nothing installed, a required package missing, too little disk)."""

from __future__ import annotations

import json
import os
from importlib.metadata import version

import pytest

from avatar_cli.cli import main
from avatar_cli.models import catalog
from avatar_cli.compiling import compiler_available
from avatar_cli.runtime import cpu_native_bf16
from tests.hub import FakeHub, serving

REPO = "digital-avatar/ditto-talkinghead"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
FILES = {"ditto_pytorch/models/lmdm_v0.4_hubert.pth": b"x" * 1000, "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl": b"y" * 24}


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A manifest with one entry, ditto (two small files, sha256 unknown: recorded on first use), served
    on 127.0.0.1; caches and homes in tmp_path."""
    lines = ["[ditto]", 'description = "Ditto, small stand-in"', f'repo_id = "{REPO}"', 'revision = "main"',
             'revision_note = "test"', 'licence = "Apache-2.0"', 'used_by = ["ditto"]', "available = true",
             "files = ["] + [f'  {{ path = "{p}", size = {len(d)} }},' for p, d in FILES.items()] + ["]", ""]
    (tmp_path / "manifest.toml").write_text("\n".join(lines))
    fake = FakeHub()
    fake.add(REPO, COMMIT, FILES)
    with serving(fake, monkeypatch, tmp_path, manifest=tmp_path / "manifest.toml"):
        yield tmp_path


def _doctor(capsys, *args):
    code = main(["doctor", "--json", *args])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err.strip().splitlines()


def test_a_fresh_install_reports_the_machine_and_the_first_download(hub, capsys):
    code, facts, err = _doctor(capsys)
    assert code == 0 and err == []
    assert facts["ok"] and facts["problem"] is None
    assert facts["python"]["version"].startswith("3.")
    import torch

    assert facts["torch"]["version"] == torch.__version__
    assert facts["torch"]["build"] == (f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu")
    if facts["device"]["type"] == "cpu":
        assert facts["device"]["cores"] == len(os.sched_getaffinity(0))
        assert facts["device"]["native_bf16"] == cpu_native_bf16()
        assert facts["device"]["compiler"] == compiler_available()
    assert facts["ffmpeg"]["found"] and facts["ffmpeg"]["version"]
    assert set(facts["packages"]) == {"onnxruntime", "mediapipe", "insightface", "facenet_pytorch", "matplotlib",
                                      "audio_separator"}
    ort = facts["packages"]["onnxruntime"]
    assert ort["installed"] and ort["version"] == version("onnxruntime")
    assert [(w["name"], w["status"], w["size_bytes"]) for w in facts["weights"]] == [("ditto", "absent", 1024)]
    cache = facts["cache"]
    assert cache["hub_cache"] == str(hub / "hf" / "hub") and cache["avatar_home"] == str(hub / "home")
    assert cache["default_download"] == "ditto" and cache["default_download_bytes"] == 1024
    assert cache["free_bytes"] > 1024 and cache["enough_space"] is True
    auto = facts["auto"]
    assert auto["model"] == "ditto" and not auto["installed"] and auto["action"].startswith("download ditto")
    assert not (hub / "hf").exists()  # the doctor downloads nothing


def test_installed_then_verified(hub, capsys):
    assert main(["weights", "download", "ditto", "--quiet"]) == 0
    capsys.readouterr()
    code, facts, _ = _doctor(capsys)
    (ditto,) = facts["weights"]
    assert code == 0 and ditto["status"] == "installed" and ditto["path"].startswith(str(hub / "hf"))
    assert facts["auto"]["installed"] and facts["auto"]["weights"] == ditto["path"]
    assert facts["auto"]["action"] == f"render with ditto from {ditto['path']}"
    code, facts, _ = _doctor(capsys, "--verify")
    assert code == 0 and facts["weights"][0]["status"] == "verified"
    blob = hub.joinpath(ditto["path"], "ditto_cfg", "v0.4_hubert_cfg_pytorch.pkl").resolve()
    blob.write_bytes(b"z" * 24)  # same size, other bytes: only the hash tells
    assert _doctor(capsys)[1]["weights"][0]["status"] == "installed"
    assert _doctor(capsys, "--verify")[1]["weights"][0]["status"] == "mismatch"


def test_offline_with_nothing_installed_exits_1_naming_the_download(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, facts, err = _doctor(capsys)
    assert code == 1 and not facts["ok"] and not facts["auto"]["can_run"]
    assert len(err) == 1 and err[0] == ("avatar: error: no model is installed and HF_HUB_OFFLINE is set; run "
                                        "'avatar weights download ditto' (0.0 GB) where the hub can be reached")
    assert main(["doctor"]) == 1  # the table, then the same line
    out = capsys.readouterr()
    assert "cannot run" in out.out and out.err.strip().splitlines() == err


def test_a_missing_required_package_exits_1_naming_the_install(hub, monkeypatch, capsys):
    real = catalog.importable
    monkeypatch.setattr(catalog, "importable", lambda module: module != "onnxruntime" and real(module))
    code, facts, err = _doctor(capsys)
    assert code == 1 and facts["packages"]["onnxruntime"] == {**facts["packages"]["onnxruntime"], "installed": False}
    assert len(err) == 1 and "--model ditto needs onnxruntime, which is not installed; pip install " \
                             "'onnxruntime>=1.16'" in err[0]


def test_too_little_disk_for_the_first_download_exits_1(hub, monkeypatch, capsys):
    import avatar_cli.doctor as doctor

    monkeypatch.setattr(doctor, "_free_bytes", lambda folder: 1000)  # 24 bytes short of the 1024 needed
    code, facts, err = _doctor(capsys)
    assert code == 1 and facts["cache"]["enough_space"] is False
    assert len(err) == 1 and "has 0.0 GB free, less than ditto's 0.0 GB" in err[0] and "HF_HOME" in err[0]
