"""Cache hygiene by content: a rejected download leaves none of its bytes under the cache.

A file is searched for by what it holds, not by its name: the Hugging Face cache stores the bytes in
``blobs/<etag>`` (the sha256 of a large file) behind a ``snapshots/<commit>/<path>`` link, and a
partial transfer in ``blobs/<etag>.incomplete``. The payload is larger than one hashing chunk
(:func:`avatar_cli.weights.sha256_file` reads 1 MiB at a time) so that a digest of the first chunk
only would not pass.
"""

import hashlib
import os
from pathlib import Path

import pytest

from avatar_cli import weights as w
from avatar_cli.cli import main
from tests.hub import FakeHub, serving

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
CHUNK = 1 << 20


def _payload(n: int, seed: int) -> bytes:
    """n pseudo-random bytes (no run of them occurs by chance in another file)."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


GOOD = _payload(CHUNK + 4096 + 17, 1)  # more than one hashing chunk, not a multiple of it
# the same size, the same first chunk; differs only after the first hashing chunk
TAMPERED = GOOD[:CHUNK + 100] + bytes(b ^ 0xFF for b in GOOD[CHUNK + 100:CHUNK + 200]) + GOOD[CHUNK + 200:]


def _manifest(tmp_path: Path, size: int, sha: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(f'[blob]\ndescription = "x"\nrepo_id = "someone/blob"\nrevision = "{COMMIT}"\nlicence = "MIT"\n'
                    f'used_by = ["vae"]\navailable = true\nsha256_note = "test"\n'
                    f'files = [ {{ path = "weights.bin", size = {size}, sha256 = "{sha}" }} ]\n')
    return path


def _holding(root: Path, data: bytes) -> list[Path]:
    """Every file under root holding any 4 KB run of ``data`` (whole copies and partial transfers),
    and every file named after its sha256 other than the hub's lock files."""
    digest = hashlib.sha256(data).hexdigest()
    probes = [data[i:i + 4096] for i in range(0, len(data) - 4096, CHUNK // 4)]
    found = []
    for path in root.rglob("*"):
        if path.is_symlink():
            if not path.exists():
                found.append(path)  # a dangling snapshot link is a leftover too
            continue  # a live link's target is searched as itself
        if not path.is_file():
            continue
        if digest in path.name and not path.name.endswith(".lock"):
            found.append(path)
            continue
        content = path.read_bytes()
        if any(p in content for p in probes):
            found.append(path)
    return found


def _download(capsys):
    code = main(["weights", "download", "blob", "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("served, size, case", [
    (TAMPERED, len(GOOD), "checksum"),      # same size, differs after the first 1 MiB chunk
    (GOOD + b"x" * 10, len(GOOD), "size"),   # the hub serves a longer file than the manifest says
])
def test_a_rejected_download_leaves_none_of_its_bytes_in_the_cache(tmp_path, monkeypatch, capsys, served, size, case):
    hub = FakeHub()
    hub.add("someone/blob", COMMIT, {"weights.bin": served})
    sha = hashlib.sha256(GOOD).hexdigest()
    assert hashlib.sha256(served[:CHUNK]).hexdigest() == hashlib.sha256(GOOD[:CHUNK]).hexdigest()
    with serving(hub, monkeypatch, tmp_path, manifest=_manifest(tmp_path, size, sha)):
        code, err = _download(capsys)
    assert code == 1 and "deleted" in err and len(err.strip().splitlines()) == 1, err
    assert ("differs" in err) if case == "checksum" else (f"size {len(served)} != {size}" in err)
    assert (tmp_path / "hf").is_dir()  # the cache was written to, then cleaned
    assert _holding(tmp_path / "hf", served) == []
    assert _holding(tmp_path, served) == []  # nor anywhere else the download wrote


def test_an_interrupted_then_rejected_download_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The connection drops halfway (the first half lands in ``.incomplete``), the resume completes
    the file, the checksum rejects it: neither the blob nor the partial remains."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub = FakeHub()
    hub.add("someone/blob", COMMIT, {"weights.bin": TAMPERED})
    hub.cut_once.add("weights.bin")
    with serving(hub, monkeypatch, tmp_path, manifest=_manifest(tmp_path, len(GOOD), hashlib.sha256(GOOD).hexdigest())):
        code, err = _download(capsys)
    assert code == 1 and "differs" in err, err
    gets = hub.gets("weights.bin")
    assert len(gets) == 2 and gets[1][2] is not None  # it was cut, then resumed
    assert _holding(tmp_path, TAMPERED) == []


def test_a_transfer_of_the_wrong_size_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The hub announces one size and sends more: huggingface_hub rejects the transfer ("Consistency
    check failed") with the bytes in ``blobs/<etag>.incomplete``; they must not stay there (a resume
    would start from a file that is already too long)."""
    hub = FakeHub()
    served = GOOD + b"y" * 100
    hub.add("someone/blob", COMMIT, {"weights.bin": served})
    hub.announce["weights.bin"] = len(GOOD)
    with serving(hub, monkeypatch, tmp_path, manifest=_manifest(tmp_path, len(GOOD), hashlib.sha256(GOOD).hexdigest())):
        code, err = _download(capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "size" in err and "removed" in err
    assert _holding(tmp_path, served) == []


def test_the_content_search_finds_an_accepted_download(tmp_path, monkeypatch, capsys):
    """The search above is not blind: an accepted download is found by content in the blobs folder."""
    hub = FakeHub()
    hub.add("someone/blob", COMMIT, {"weights.bin": GOOD})
    with serving(hub, monkeypatch, tmp_path, manifest=_manifest(tmp_path, len(GOOD), hashlib.sha256(GOOD).hexdigest())):
        code, err = _download(capsys)
    assert code == 0, err
    found = _holding(tmp_path / "hf", GOOD)
    assert [p.parent.name for p in found] == ["blobs"] and found[0].name == hashlib.sha256(GOOD).hexdigest()
    # the tampered copy differs from GOOD only after the first hashing chunk, and is caught
    found[0].write_bytes(TAMPERED)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    report = w.verify(w.load_manifest()["blob"], log=lambda *_: None)
    assert [f.status for f in report.files] == ["mismatch"]
