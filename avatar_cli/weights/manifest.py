"""The weights manifest (``weights.toml``): one :class:`Component` per ``[name]`` table, its
:class:`WeightFile` entries, and the rules an entry must follow (a pinned 40-hex commit, or a
``revision_note`` saying why none is known).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InputError, WeightsError

MANIFEST_ENV = "AVATAR_MANIFEST"



_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class WeightFile:
    """One file of a component: path inside the repo, size in bytes and sha256 (None = unknown), and
    ``licence`` where the file's licence differs from its component's (e.g. a non-commercial model
    inside an Apache-2.0 set)."""

    path: str
    size: int | None = None
    sha256: str | None = None
    licence: str = ""


@dataclass(frozen=True)
class Component:
    """One manifest entry (a ``[name]`` table of ``weights.toml``)."""

    name: str
    description: str
    repo_id: str | None
    revision: str | None
    licence: str
    used_by: tuple[str, ...]
    available: bool
    reason: str = ""
    files: tuple[WeightFile, ...] = ()
    sha256_note: str = ""
    licence_short: str = ""
    revision_note: str = ""
    manual: str = ""  # how to get the files by hand when the download fails (e.g. the original URL)

    @property
    def size(self) -> int | None:
        """Total bytes, or None when a file's size is unknown."""
        sizes = [f.size for f in self.files]
        return None if not sizes or any(s is None for s in sizes) else sum(sizes)

    @property
    def known_size(self) -> int:
        """Bytes of the files whose size is known (a lower bound of the total when some are not)."""
        return sum(f.size or 0 for f in self.files)

    @property
    def pinned(self) -> bool:
        """Whether ``revision`` is a full 40-hex commit id (else a branch such as "main")."""
        return bool(self.revision and _COMMIT.fullmatch(self.revision))

    @property
    def short_licence(self) -> str:
        """A short licence name for tables: ``licence_short``, else the licence up to its first
        " (" or ";" ("-" for none)."""
        if self.licence_short:
            return self.licence_short
        return re.split(r" \(|;", self.licence, maxsplit=1)[0].strip() or "-"

    def licence_notes(self) -> str:
        """One line naming the files whose own licence differs from the component's (``""`` if none),
        e.g. ``"det_10g.onnx, 2d106det.onnx: InsightFace, non-commercial research only"``."""
        groups: dict[str, list[str]] = {}
        for f in self.files:
            if f.licence:
                groups.setdefault(f.licence, []).append(Path(f.path).name)
        return "; ".join(f"{', '.join(names)}: {licence}" for licence, names in groups.items())


def manifest_path(path: str | Path | None = None) -> Path:
    """The manifest in use: ``path``, else $AVATAR_MANIFEST, else the one shipped in the package."""
    if path is not None:
        return Path(path)
    if os.environ.get(MANIFEST_ENV):
        return Path(os.environ[MANIFEST_ENV])
    return Path(str(resources.files("avatar_cli") / "weights.toml"))


def load_manifest(path: str | Path | None = None) -> dict[str, Component]:
    """Parse a manifest into name -> :class:`Component` (in file order).

    Raises:
        WeightsError: the file is missing or malformed (message names the entry and field).
    """
    source = manifest_path(path)
    try:
        data = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"cannot read the weights manifest {source}: {err}") from None
    components = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            continue
        try:
            files = tuple(WeightFile(f["path"], f.get("size"), f.get("sha256") or None, f.get("licence", ""))
                          for f in entry.get("files", []))
            components[name] = Component(
                name=name, description=entry["description"], repo_id=entry.get("repo_id"),
                revision=entry.get("revision"), licence=entry["licence"], used_by=tuple(entry.get("used_by", [])),
                available=bool(entry["available"]), reason=entry.get("reason", ""), files=files,
                sha256_note=entry.get("sha256_note", ""), licence_short=entry.get("licence_short", ""),
                revision_note=entry.get("revision_note", ""), manual=entry.get("manual", ""),
            )
        except (KeyError, TypeError) as err:
            raise WeightsError(f"weights manifest {source}: entry [{name}] lacks or mistypes {err}") from None
        c = components[name]
        if c.available and not (c.repo_id and c.revision and files):
            raise WeightsError(f"weights manifest {source}: available entry [{name}] needs repo_id, revision, files")
        if c.available and not c.pinned and not c.revision_note:
            raise WeightsError(f"weights manifest {source}: entry [{name}] has revision {c.revision!r}, not a 40-hex "
                               f"commit; pin a commit, or say why none is known in a revision_note")
    return components


def select(manifest: dict[str, Component], names: list[str]) -> list[Component]:
    """Components by name. Raises InputError naming an unknown one and the known names."""
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise InputError(f"unknown weights {', '.join(unknown)}; known: {', '.join(manifest)}")
    return [manifest[n] for n in names]
