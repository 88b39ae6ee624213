"""File hashes and trust on first use: a file whose sha256 the manifest cannot know is recorded on
its first download in ``$AVATAR_HOME/trusted-sha256.json`` and checked from then on; a floating
revision (``"main"`` with a ``revision_note``) is recorded there as the commit it resolved to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .manifest import _COMMIT, Component, WeightFile
from .paths import avatar_home


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _trust_file() -> Path:
    return avatar_home() / "trusted-sha256.json"


def _trusted() -> dict[str, str]:
    try:
        return json.loads(_trust_file().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _trust_key(component: Component, f: WeightFile) -> str:
    return f"{component.repo_id}@{effective_revision(component)}:{f.path}"


def _revision_key(component: Component) -> str:
    return f"{component.repo_id}@{component.revision}"


def effective_revision(component: Component) -> str | None:
    """The revision files are fetched and looked up at: the manifest's commit when pinned; for a
    floating revision (``"main"`` with a ``revision_note``) the commit it resolved to on the first
    download (recorded in ``$AVATAR_HOME/trusted-sha256.json``), else the branch name itself."""
    if component.pinned or not component.revision:
        return component.revision
    recorded = _trusted().get(_revision_key(component))
    return recorded if recorded and _COMMIT.fullmatch(recorded) else component.revision


def _record_revision(component: Component, commit: str) -> None:
    _store(_revision_key(component), commit)


def expected_sha256(component: Component, f: WeightFile) -> tuple[str | None, str]:
    """(sha256, source): from the manifest, else recorded on first use, else (None, "unknown")."""
    if f.sha256:
        return f.sha256, "manifest"
    recorded = _trusted().get(_trust_key(component, f))
    return (recorded, "recorded on first download") if recorded else (None, "unknown")


def _record(component: Component, f: WeightFile, digest: str) -> None:
    _store(_trust_key(component, f), digest)


def _store(key: str, value: str) -> None:
    store = _trusted()
    store[key] = value
    path = _trust_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
