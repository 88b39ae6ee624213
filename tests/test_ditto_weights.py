"""Ditto's weights: the manifest entry, download at a resolved revision, verify, convert --from ditto, and the
80-column `avatar weights list` / `avatar weights show`, against a hub emulated on 127.0.0.1."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_cli import weights as w
from avatar_cli.cli import main
from avatar_cli.errors import WeightsError
from avatar_cli.models.ditto import FILES, DittoModels
from avatar_cli.safe_pickle import DittoConfig
from tests.hub import FakeHub, serving
from tests.models.ditto.test_loaders import write_release
from tests.test_safe_pickle import ditto_cfg

REPO = "digital-avatar/ditto-talkinghead"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
# The PyTorch set as DITTO notes sec. 2 lists it (repo path -> bytes of the real file).
RELEASE = {
    "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl": 31002,
    "ditto_pytorch/models/appearance_extractor.pth": 3387959,
    "ditto_pytorch/models/motion_extractor.pth": 112545506,
    "ditto_pytorch/models/warp_network.pth": 182180086,
    "ditto_pytorch/models/decoder.pth": 221813590,
    "ditto_pytorch/models/stitch_network.pth": 2393098,
    "ditto_pytorch/models/lmdm_v0.4_hubert.pth": 191247715,
    "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx": 1460740880,
    "ditto_pytorch/aux_models/det_10g.onnx": 16923827,
    "ditto_pytorch/aux_models/2d106det.onnx": 5030888,
    "ditto_pytorch/aux_models/landmark203.onnx": 114666491,
    "ditto_pytorch/aux_models/face_landmarker.task": 3758596,
}
AUX = [p for p in RELEASE if "/aux_models/" in p]


def test_shipped_ditto_entry_lists_the_pytorch_set():
    c = w.load_manifest()["ditto"]
    assert c.repo_id == REPO and c.available
    assert {f.path: f.size for f in c.files} == RELEASE
    assert c.size == 2_314_719_638  # the total the sizes' source prints
    assert all(f.sha256 is None for f in c.files) and "trust on first use" in c.sha256_note
    assert c.revision == "main" and not c.pinned and "resolves main to a commit" in c.revision_note
    licences = {Path(f.path).name: f.licence for f in c.files if f.licence}
    assert set(licences) == {"det_10g.onnx", "2d106det.onnx", "landmark203.onnx"}
    assert "non-commercial" in licences["det_10g.onnx"] and "#84" in licences["landmark203.onnx"]
    assert c.licence.startswith("Apache-2.0") and c.short_licence == "Apache-2.0+NC"


def test_a_floating_revision_needs_a_note(tmp_path):
    entry = ('[x]\ndescription = "x"\nrepo_id = "a/b"\nrevision = "main"\nlicence = "MIT"\nused_by = ["x"]\n'
             'available = true\nfiles = [{ path = "f" }]\n')
    (tmp_path / "m.toml").write_text(entry)
    with pytest.raises(WeightsError, match=r"\[x\] has revision 'main', not a 40-hex commit"):
        w.load_manifest(tmp_path / "m.toml")
    (tmp_path / "m.toml").write_text(entry + 'revision_note = "no commit known"\n')
    assert w.load_manifest(tmp_path / "m.toml")["x"].revision == "main"


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture()
def ditto_hub(tmp_path, monkeypatch):
    """The emulated hub serving a small stand-in of the Ditto repo (tiny networks in the released layouts, a cfg
    pickle in Ditto's format, dummy bytes for the ONNX/MediaPipe files), and a manifest of it."""
    models = DittoModels.from_preset("tiny", seed=11)
    release = tmp_path / "release"
    write_release(models, release)
    cfg = ditto_cfg()
    files = {f"ditto_pytorch/models/{p.name}": p.read_bytes() for p in release.iterdir()}
    files["ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"] = pickle.dumps(cfg, protocol=4)
    for i, path in enumerate(AUX):
        files[path] = bytes([i]) * (100 + i) + path.encode()
    assert set(files) == set(RELEASE)
    hub = FakeHub()
    hub.add(REPO, COMMIT, files)
    lines = ["[ditto]", 'description = "Ditto, small stand-in"', f'repo_id = "{REPO}"', 'revision = "main"',
             'revision_note = "no commit known"', 'licence = "Apache-2.0; det_10g.onnx: non-commercial"',
             'licence_short = "Apache-2.0+NC"', 'used_by = ["ditto"]', "available = true",
             'sha256_note = "trust on first use"', "files = ["]
    for path, data in files.items():
        extra = ', licence = "InsightFace, non-commercial research only"' if path.endswith("det_10g.onnx") else ""
        lines.append(f'  {{ path = "{path}", size = {len(data)}{extra} }},')
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("\n".join(lines + ["]", ""]))
    with serving(hub, monkeypatch, tmp_path):
        yield hub, files, models, cfg, manifest, tmp_path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_download_verify_convert_then_load(ditto_hub, capsys):
    hub, files, models, cfg, manifest, tmp = ditto_hub
    code, out, err = _run(capsys, "weights", "download", "ditto", "--manifest", manifest, "--quiet")
    assert code == 0, err
    # "main" was resolved once, printed, and every file fetched at that commit
    assert f"resolved to commit {COMMIT}" in err
    assert re.search(r"ditto: licence: det_10g.onnx: InsightFace, non-commercial research only", err)
    gets = [r[1] for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert len(gets) == len(files) and all(f"/resolve/{COMMIT}/" in g for g in gets)
    record = json.loads((tmp / "home" / "trusted-sha256.json").read_text())
    assert record[f"{REPO}@main"] == COMMIT
    assert sum(k.startswith(f"{REPO}@{COMMIT}:") for k in record) == len(files)  # first-use hashes at the commit

    # a second download stays at the recorded commit: no new resolution, nothing fetched again
    before = len(hub.requests)
    code, out, err = _run(capsys, "weights", "download", "ditto", "--manifest", manifest, "--quiet")
    assert code == 0 and "resolved" not in err
    assert not any("/resolve/main/" in r[1] or r[0] == "GET" and "/resolve/" in r[1] for r in hub.requests[before:])

    code, out, err = _run(capsys, "weights", "verify", "ditto", "--manifest", manifest, "--json")
    assert code == 0, err
    (report,) = json.loads(out)
    assert report["ok"] and [f["status"] for f in report["files"]] == ["ok"] * len(files)
    folder = Path(report["path"])
    assert folder.name == COMMIT

    code, out, err = _run(capsys, "weights", "list", "--manifest", manifest)
    assert out.splitlines()[1].split()[:2] == ["●", "ditto"]  # installed
    code, out, err = _run(capsys, "weights", "show", "ditto", "--manifest", manifest, "--json")
    shown = json.loads(out)
    assert shown["installed"] and shown["effective_revision"] == COMMIT
    assert {f["path"]: f["size_bytes"] for f in shown["files"]} == {p: len(d) for p, d in files.items()}
    assert all(f["sha256_source"] == "recorded on first download" for f in shown["files"])

    code, out, err = _run(capsys, "weights", "convert", "--from", "ditto", "--arch", "tiny", "--manifest", manifest,
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    out_dir = Path(result["output"])
    assert out_dir == tmp / "home" / "converted" / "ditto" and w.converted_dir("ditto") == out_dir
    assert {c["name"].split()[0]: c["loaded"] for c in result["components"]} == \
        {name: len(getattr(models, name).state_dict()) for name in FILES}
    assert all(c["missing"] == 0 and not c["unexpected"] for c in result["components"])
    assert list(result["ignored"].values()) == [2]  # stitch_network.pth: retarget_mouth, retarget_eye
    assert result["notes"]["files"] == {"linked": 11, "copied": 0}
    # the cfg: its values are those written into the pickle, and the saved form reads back the same
    got = DittoConfig.load(out_dir)
    kw = cfg["default_kwargs"]
    np.testing.assert_array_equal(got.delta_eye_arr, kw["delta_eye_arr"])
    np.testing.assert_array_equal(got.v_min_max_for_clip, kw["v_min_max_for_clip"])
    assert got.fix_kp_cond_dim == (0, 202) and got.overall_ctrl_info == {"delta_pitch": 2}
    assert got.audio2motion_cfg == cfg["audio2motion_cfg"] and got.base_cfg == cfg["base_cfg"]
    assert got.to_json() == DittoConfig.from_pickle(folder / "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl").to_json()
    # the networks load strictly, with the tensors that were published
    loaded = DittoModels.from_files(out_dir / "models", preset="tiny")
    ref = models.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items()) and len(loaded.state_dict()) == len(ref)
    for path in AUX:  # the auxiliary files: the same bytes, hard links to the cache's blobs
        target = out_dir / "aux_models" / Path(path).name
        assert target.read_bytes() == files[path]
        assert target.stat().st_ino == (folder / path).resolve().stat().st_ino
    index = json.loads((out_dir / "avatar_index.json").read_text())
    assert index["family"] == "ditto" and index["preset"] == "tiny"
    assert sorted(index["cfg"]) == ["ditto_cfg.json", "ditto_cfg.safetensors"]
    assert all((out_dir / p).is_file() for p in [*index["models"].values(), *index["aux_models"]])
    # a second conversion without --overwrite is refused
    assert _run(capsys, "weights", "convert", "--from", "ditto", "--arch", "tiny", "--manifest", manifest)[0] == 2


def _snapshot_copy(ditto_hub, capsys, tmp_path) -> Path:
    """A plain copy of the downloaded repo folder (as a user's own folder would be)."""
    import shutil

    _, _, _, _, manifest, _ = ditto_hub
    assert _run(capsys, "weights", "download", "ditto", "--manifest", manifest, "--quiet")[0] == 0
    folder = Path(_run(capsys, "weights", "path", "ditto", "--manifest", manifest)[1].strip())
    copy = tmp_path / "snapshot"
    shutil.copytree(folder, copy)
    return copy


def test_convert_refuses_a_malicious_cfg_pickle_and_writes_nothing(ditto_hub, capsys, tmp_path):
    snapshot = _snapshot_copy(ditto_hub, capsys, tmp_path)
    marker = tmp_path / "pwned"
    cfg = ditto_cfg()
    cfg["default_kwargs"]["x"] = _Evil(marker)
    (snapshot / "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl").write_bytes(pickle.dumps(cfg, protocol=4))
    out = tmp_path / "out"
    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", snapshot, "--arch", "tiny", "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "refusing to load" in err and "posix.system" in err
    assert not marker.exists() and not out.exists() and not (tmp_path / ".out.partial").exists()


def test_convert_checks_every_key_before_writing(ditto_hub, capsys, tmp_path):
    snapshot = _snapshot_copy(ditto_hub, capsys, tmp_path)
    path = snapshot / "ditto_pytorch/models/warp_network.pth"
    state = torch.load(path, weights_only=True)
    state.pop("fourth.bias")
    torch.save(state, path)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", snapshot, "--arch", "tiny", "-o", out)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "warp_network.pth: missing key 'fourth.bias'" in err and not out.exists()
    torch.save({**state, "fourth.bias": torch.zeros(5)}, path)  # tiny: (16,)
    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", snapshot, "--arch", "tiny", "-o", out)
    assert code == 1 and "key 'fourth.bias' has shape (5,), expected (16,)" in err and not out.exists()
    # the released (full) architecture does not match these tiny files
    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", snapshot, "-o", out)
    assert code == 1 and "appearance_extractor.pth: missing key" in err and not out.exists()
    (snapshot / "ditto_pytorch/aux_models/det_10g.onnx").unlink()
    code, _, err = _run(capsys, "weights", "convert", "--from", "ditto", snapshot, "--arch", "tiny", "-o", out)
    assert code == 2 and "lacks ditto_pytorch/aux_models/det_10g.onnx" in err


# ------------------------------------------------------------------ list and show at 80 columns
@pytest.fixture()
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    for name in ("HF_HUB_CACHE", "AVATAR_WEIGHTS_DIR", "AVATAR_MANIFEST"):
        monkeypatch.delenv(name, raising=False)


def test_list_fits_80_columns_one_line_per_entry(empty_home, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    manifest = w.load_manifest()
    code, out, _ = _run(capsys, "weights", "list")
    assert code == 0
    lines = out.rstrip("\n").splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = [line for line in lines if len(line.split()) > 1 and line.split()[1] in manifest]
    assert [row.split()[1] for row in rows] == list(manifest)  # each entry once, in manifest order
    assert len(lines) == len(manifest) + 2  # header, rows, legend
    by_name = {row.split()[1]: row.split() for row in rows}
    assert by_name["ditto"][:5] == ["○", "ditto", "2.3", "GB", "Apache-2.0+NC"]
    assert by_name["osa-lcm"][:4] == ["✗", "osa-lcm", "-", "-"]
    assert by_name["hallo-face-analysis"][2:4] == ["?", "non-commercial"]  # no source gives its sizes
    assert by_name["taesd"][2:5] == [">9.8", "MB", "MIT"]  # the config's size is unpublished
    monkeypatch.setenv("COLUMNS", "250")  # the old wide table, for wide terminals
    code, out, _ = _run(capsys, "weights", "list", "--long")
    assert code == 0 and "CreativeML OpenRAIL-M" in out


def test_show_gives_files_sizes_and_the_licence_note(empty_home, capsys, monkeypatch):
    code, out, _ = _run(capsys, "weights", "show", "ditto", "--json")
    assert code == 0
    shown = json.loads(out)
    assert {f["path"]: f["size_bytes"] for f in shown["files"]} == RELEASE
    assert shown["size_bytes"] == sum(RELEASE.values()) and not shown["installed"]
    assert "non-commercial" in shown["licence"] and "non-commercial" in shown["licence_notes"]
    det = next(f for f in shown["files"] if f["path"].endswith("det_10g.onnx"))
    assert det["licence"] == "InsightFace, non-commercial research only" and det["sha256_source"] == "unknown"
    assert shown["revision"] == "main" and shown["revision_note"]
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run(capsys, "weights", "show", "ditto")
    assert code == 0 and "2d106det.onnx" in out and "not resolved yet" in out
    assert _run(capsys, "weights", "show", "nope")[0] == 2


def test_resolving_main_without_a_hub_is_one_line(ditto_hub, capsys, monkeypatch):
    import socket

    _, _, _, _, manifest, tmp = ditto_hub
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = _run(capsys, "weights", "download", "ditto", "--manifest", manifest, "--quiet")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"avatar: error: cannot reach http://127.0.0.1:{port} to resolve {REPO}@main")
    assert not (tmp / "home" / "trusted-sha256.json").exists()  # nothing recorded


def test_key_check_reads_legacy_and_zip_files_without_loading_into_modules(tmp_path):
    """check_ditto_models counts the keys DittoModels.from_files loads, for the zip format (memory-mapped)
    and the pre-1.6 format torch cannot memory-map."""
    from avatar_cli.convert import check_ditto_models

    models = DittoModels.from_preset("tiny", seed=2)
    write_release(models, tmp_path / "models")
    legacy = tmp_path / "models" / "decoder.pth"
    torch.save(models.decoder.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="mmap"):
        torch.load(legacy, weights_only=True, mmap=True)
    reports, ignored = check_ditto_models(tmp_path / "models", "tiny")
    loaded = DittoModels.from_files(tmp_path / "models", preset="tiny")  # the loader it stands for
    assert [r.loaded for r in reports] == [len(getattr(loaded, n).state_dict()) for n in FILES]
    assert ignored == {"stitch_network.pth entries Ditto does not use (retarget_mouth, retarget_eye)": 2}


def test_usb_stick_then_offline_convert(ditto_hub, capsys, monkeypatch):
    """Download to --local-dir on a connected machine; elsewhere, offline and without the first machine's
    records, verify and convert from $AVATAR_WEIGHTS_DIR."""
    _, files, models, _, manifest, tmp = ditto_hub
    stick = tmp / "usb"
    code, out, err = _run(capsys, "weights", "download", "ditto", "--manifest", manifest, "--local-dir", stick,
                          "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["revision"] == COMMIT
    assert all((stick / "ditto" / p).read_bytes() == d for p, d in files.items())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(stick))
    monkeypatch.setenv("HF_HOME", str(tmp / "empty-hf"))
    monkeypatch.setenv("AVATAR_HOME", str(tmp / "other-home"))
    code, out, err = _run(capsys, "weights", "verify", "ditto", "--manifest", manifest)
    assert code == 0 and "trust on first use" in err
    code, out, err = _run(capsys, "weights", "convert", "--from", "ditto", "--arch", "tiny", "--manifest", manifest)
    assert code == 0, err
    out_dir = tmp / "other-home" / "converted" / "ditto"
    loaded = DittoModels.from_files(out_dir / "models", preset="tiny")
    assert torch.equal(loaded.dit.final_layer.weight, models.dit.final_layer.weight)
