"""The weights manifest and `avatar weights`, against a hub emulated on 127.0.0.1."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from avatar_cli import weights as w
from avatar_cli.cli import main
from avatar_cli.models.presets import preset
from tests.hub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_built_wheel_ships_the_manifest(tmp_path):
    """avatar_cli/weights.toml is a link to the root manifest in the repository; the wheel a user
    installs must hold the file itself, with the same bytes (built from a copy of the sources)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT / "avatar_cli", src / "avatar_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "weights.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("avatar_cli-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("avatar_cli/weights.toml") == (ROOT / "weights.toml").read_bytes()


def test_shipped_manifest_is_complete_and_honest():
    manifest = w.load_manifest()
    for name in ("sd-vae-ft-mse", "sd15-unet", "wav2vec2-base-960h", "animatediff-mm-sd-v15-v2", "taesd",
                 "hallo", "hallo-face-analysis", "hallo-audio-separator", "ditto", "osa-lcm", "fada"):
        assert name in manifest, name
    for c in manifest.values():
        assert c.licence and c.description and c.used_by
        assert len(c.short_licence) <= 14, (c.name, c.short_licence)  # the 80-column table
        if c.available:
            # pinned; "main" only where no commit is known and a note says so (resolved on first download)
            assert re.fullmatch(r"[0-9a-f]{40}", c.revision) or (c.revision == "main" and c.revision_note), c.name
            assert c.files and c.repo_id
            for f in c.files:
                assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
                if f.sha256 is None:
                    assert c.sha256_note, f"{c.name}/{f.path}: unknown sha256 needs a note"
        else:
            assert c.reason
    assert not manifest["osa-lcm"].available and "published no weights" in manifest["osa-lcm"].reason
    assert manifest["hallo"].repo_id == "fudan-generative-ai/hallo"
    assert {f.path for f in manifest["hallo"].files} >= {"hallo/net.pth", "sd-vae-ft-mse/config.json"}
    # rendering without --weights says what is missing and why
    assert w.missing_for("osa-lcm", manifest) == [f"osa-lcm: {manifest['osa-lcm'].reason}"]
    assert w.missing_for("hallo", manifest, local_dir="/nonexistent") == \
        ["hallo: run 'avatar weights download hallo'", "then 'avatar weights convert --from hallo'"]
    assert not manifest["fada"].available


@pytest.fixture()
def hub_env(tmp_path, monkeypatch):
    """An emulated hub with a tiny VAE in sd-vae-ft-mse's layout, a manifest for it, clean caches."""
    vae_dir = tmp_path / "vae-src"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoencoderKL(**preset("tiny")["vae"]).save_pretrained(vae_dir)
    files = {p.name: p.read_bytes() for p in vae_dir.iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors"}
    extra = {"notes.txt": b"hello " * 1000}
    hub = FakeHub()
    hub.add("stabilityai/sd-vae-ft-mse", COMMIT, files)
    hub.add("someone/extra", COMMIT, extra)

    def entry(name, repo, payload, sha_overrides=None, hide=()):
        lines = [f"[{name}]", f'description = "{name} for tests"', f'repo_id = "{repo}"', f'revision = "{COMMIT}"',
                 'licence = "MIT"', 'used_by = ["vae"]', "available = true", 'sha256_note = "test"', "files = ["]
        for path, data in payload.items():
            sha = (sha_overrides or {}).get(path, hashlib.sha256(data).hexdigest())
            sha_field = "" if path in hide else f', sha256 = "{sha}"'
            lines.append(f'  {{ path = "{path}", size = {len(data)}{sha_field} }},')
        return "\n".join(lines + ["]", ""])

    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        entry("vae", "stabilityai/sd-vae-ft-mse", files)
        + entry("bad", "stabilityai/sd-vae-ft-mse", files, {"config.json": "0" * 64})
        + entry("tofu", "someone/extra", extra, hide={"notes.txt"})
        + '[student]\ndescription = "x"\nlicence = "-"\nused_by = ["denoising_unet"]\navailable = false\n'
          'reason = "its authors published no weights"\n')
    monkeypatch.setenv("HF_ENDPOINT", "")  # no real hub; set to the local one below, once its server runs
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AVATAR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVATAR_MANIFEST", str(manifest))
    with hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub, files, tmp_path


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_download_verify_path_and_cache_hit(hub_env, capsys):
    hub, files, tmp = hub_env
    code, out, err = _run(capsys, "weights", "download", "vae", "--quiet", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [f["status"] for f in result["files"]] == ["ok", "ok"]
    folder = Path(result["path"])
    assert folder.is_relative_to(tmp / "hf" / "hub") and folder.name == COMMIT  # the HF cache, by revision
    assert (folder / "config.json").read_bytes() == files["config.json"]
    assert len(hub.gets("diffusion_pytorch_model.safetensors")) == 1
    # the real loading code reads it
    vae = AutoencoderKL.from_pretrained(folder)
    assert vae.config.block_out_channels == tuple(preset("tiny")["vae"]["block_out_channels"]) or \
        list(vae.config.block_out_channels) == preset("tiny")["vae"]["block_out_channels"]
    # second call: served from the cache, no new transfer
    assert _run(capsys, "weights", "download", "vae", "--quiet")[0] == 0
    assert len(hub.gets("diffusion_pytorch_model.safetensors")) == 1
    code, out, _ = _run(capsys, "weights", "path", "vae")
    assert code == 0 and Path(out.strip()) == folder
    code, out, _ = _run(capsys, "weights", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["vae"]["installed"] and rows["vae"]["path"] == str(folder)
    assert not rows["student"]["available"] and not rows["student"]["installed"]
    assert _run(capsys, "weights", "verify", "vae")[0] == 0


def test_one_byte_corruption_is_caught(hub_env, capsys):
    _run(capsys, "weights", "download", "vae", "--quiet")
    code, out, _ = _run(capsys, "weights", "path", "vae")
    blob = (Path(out.strip()) / "diffusion_pytorch_model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    code, out, err = _run(capsys, "weights", "verify", "vae")
    assert code == 1 and "diffusion_pytorch_model.safetensors: mismatch" in err


def test_resume_after_a_cut_connection(hub_env, capsys, monkeypatch):
    hub, files, _ = hub_env
    # huggingface_hub writes 10 MB chunks; with 64 KB ones the first half of this 0.3 MB file is on
    # disk when the connection drops, as the first gigabytes would be for a real checkpoint
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.cut_once.add("diffusion_pytorch_model.safetensors")
    code, out, err = _run(capsys, "weights", "download", "vae", "--quiet", "--json")
    assert code == 0, err
    gets = hub.gets("diffusion_pytorch_model.safetensors")
    size = len(files["diffusion_pytorch_model.safetensors"])
    assert len(gets) == 2 and gets[0][2] is None
    resumed_from = int(re.match(r"bytes=(\d+)-", gets[1][2]).group(1))
    assert 0 < resumed_from < size  # the second request asked only for the rest
    folder = Path(json.loads(out)["path"])
    assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == files["diffusion_pytorch_model.safetensors"]


def test_sha_mismatch_deletes_the_file(hub_env, capsys):
    _, _, tmp = hub_env
    code, _, err = _run(capsys, "weights", "download", "bad", "--quiet")
    assert code == 1 and "differs" in err and "deleted" in err and len(err.strip().splitlines()) == 1
    leftovers = [p for p in (tmp / "hf").rglob("config.json")]
    assert leftovers == []  # neither the snapshot link nor the blob remains
    assert _run(capsys, "weights", "path", "bad")[0] == 1


def test_trust_on_first_use_is_recorded_then_enforced(hub_env, capsys):
    code, out, err = _run(capsys, "weights", "download", "tofu", "--quiet")
    assert code == 0 and "trust on first use" in err
    record = json.loads((hub_env[2] / "home" / "trusted-sha256.json").read_text())
    assert list(record.values()) == [hashlib.sha256(b"hello " * 1000).hexdigest()]
    assert _run(capsys, "weights", "verify", "tofu")[0] == 0
    folder = Path(_run(capsys, "weights", "path", "tofu")[1].strip())
    (folder / "notes.txt").resolve().write_bytes(b"hellO " + b"hello " * 999)
    assert _run(capsys, "weights", "verify", "tofu")[0] == 1


def test_no_network_is_one_line(hub_env, capsys, monkeypatch):
    import socket
    import time

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's retry back-off
    code, _, err = _run(capsys, "weights", "download", "vae", "--quiet")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"avatar: error: cannot reach http://127.0.0.1:{port}") and "Retrying" not in err


def test_offline_and_unavailable_and_unknown(hub_env, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(capsys, "weights", "download", "vae", "--quiet")
    assert code == 1 and err.startswith("avatar: error: offline") and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    code, _, err = _run(capsys, "weights", "download", "student")
    assert code == 1 and "published no weights" in err
    code, _, err = _run(capsys, "weights", "download", "nope")
    assert code == 2 and "unknown weights nope" in err
    assert _run(capsys, "weights", "download")[0] == 2


def test_local_dir_download_and_lookup(hub_env, capsys, monkeypatch):
    _, files, tmp = hub_env
    stick = tmp / "usb"
    code, out, err = _run(capsys, "weights", "download", "vae", "--local-dir", str(stick), "--quiet", "--json")
    assert code == 0, err
    assert (stick / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        files["diffusion_pytorch_model.safetensors"]
    # offline, elsewhere: the folder is found through AVATAR_WEIGHTS_DIR and verified
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AVATAR_WEIGHTS_DIR", str(stick))
    monkeypatch.setenv("HF_HOME", str(tmp / "empty-hf"))
    assert Path(_run(capsys, "weights", "path", "vae")[1].strip()) == stick / "vae"
    assert _run(capsys, "weights", "verify", "vae")[0] == 0
    assert _run(capsys, "weights", "download", "vae", "--quiet")[0] == 0  # already there: no network needed


def test_nested_layout_hf_hub_cache_local_dir_all_and_the_table(hub_env, capsys, monkeypatch):
    """SD1.5's layout (files under unet/), the cache in HF_HUB_CACHE, --local-dir, --all, and the table."""
    from diffusers import UNet2DConditionModel

    hub, files, tmp = hub_env
    unet_src = tmp / "unet-src"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        UNet2DConditionModel(**preset("tiny")["reference_net"]).save_pretrained(unet_src)
    nested = {f"unet/{p.name}": p.read_bytes() for p in unet_src.iterdir()}
    hub.add("stable-diffusion-v1-5/stable-diffusion-v1-5", COMMIT, nested)
    lines = []
    for name, repo, payload in (("vae", "stabilityai/sd-vae-ft-mse", files),
                                ("sd15-unet", "stable-diffusion-v1-5/stable-diffusion-v1-5", nested)):
        lines += [f"[{name}]", f'description = "{name}"', f'repo_id = "{repo}"', f'revision = "{COMMIT}"',
                  'licence = "MIT"', 'used_by = ["x"]', "available = true", "files = ["]
        lines += [f'  {{ path = "{p}", sha256 = "{hashlib.sha256(d).hexdigest()}" }},' for p, d in payload.items()]
        lines += ["]", ""]
    manifest = tmp / "two.toml"
    manifest.write_text("\n".join(lines))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp / "hub-cache"))

    code, out, err = _run(capsys, "weights", "download", "--all", "--manifest", str(manifest), "--quiet", "--json")
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["name"] for r in results] == ["vae", "sd15-unet"]
    folder = Path(results[1]["path"])
    assert folder.is_relative_to(tmp / "hub-cache") and folder.name == COMMIT  # HF_HUB_CACHE respected
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")  # the real loading code
    assert unet.config.block_out_channels == tuple(preset("tiny")["reference_net"]["block_out_channels"]) or \
        list(unet.config.block_out_channels) == preset("tiny")["reference_net"]["block_out_channels"]

    local = tmp / "usb"
    assert _run(capsys, "weights", "download", "sd15-unet", "--manifest", str(manifest), "--local-dir", str(local),
                "--quiet")[0] == 0
    assert (local / "sd15-unet" / "unet" / "config.json").read_bytes() == nested["unet/config.json"]
    code, out, _ = _run(capsys, "weights", "path", "sd15-unet", "--manifest", str(manifest), "--local-dir", str(local))
    assert code == 0 and Path(out.strip()) == local / "sd15-unet"

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _run(capsys, "weights", "list", "--manifest", str(manifest))
    assert code == 0 and "sd15-unet" in out and "vae" in out and "MIT" in out
