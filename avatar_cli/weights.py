"""Model weights: the ``weights.toml`` manifest, downloads, verification, local paths.

Downloads go through huggingface_hub (``hf_hub_download``): atomic (``.incomplete`` then rename),
resumable, cached by revision in the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE),
HF_ENDPOINT and HF_TOKEN respected. Every downloaded file is hashed: a sha256 that differs from the
manifest's deletes the file; a file whose sha256 the manifest cannot know is recorded on first
download (trust on first use) in ``$AVATAR_HOME/trusted-sha256.json`` and checked from then on.
A file whose size differs from the manifest's fails before any hash is recorded.

Revisions are 40-hex commits. Where none is known, an entry may say ``revision = "main"`` with a
``revision_note``: the first download resolves it to a commit (the Hub's ``X-Repo-Commit``), prints it
and records it in the same file; downloads, lookups and first-use hashes then stay at that commit
(:func:`effective_revision`).

Where a component is looked for, in order:
1. ``<local_dir>/<name>/`` when ``local_dir`` is given, else ``$AVATAR_WEIGHTS_DIR/<name>/`` when set
   (what ``avatar weights download --local-dir DIR`` writes; e.g. a USB stick);
2. the Hugging Face cache at the pinned revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import InputError, WeightsError

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


# ----------------------------------------------------------------- locations
def avatar_home() -> Path:
    """$AVATAR_HOME, else $XDG_CACHE_HOME/avatar-cli, else ~/.cache/avatar-cli."""
    if os.environ.get("AVATAR_HOME"):
        return Path(os.environ["AVATAR_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatar-cli"


def _local_root(local_dir: str | Path | None) -> Path | None:
    if local_dir is not None:
        return Path(local_dir)
    return Path(os.environ["AVATAR_WEIGHTS_DIR"]) if os.environ.get("AVATAR_WEIGHTS_DIR") else None


def _hub_cache() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def installed_path(component: Component, local_dir: str | Path | None = None) -> Path | None:
    """The folder holding all of a component's files (repo layout inside), or None."""
    if not component.available:
        return None
    root = _local_root(local_dir)
    if root is not None and all((root / component.name / f.path).is_file() for f in component.files):
        return root / component.name
    from huggingface_hub import try_to_load_from_cache

    revision = effective_revision(component)
    found = [try_to_load_from_cache(component.repo_id, f.path, cache_dir=_hub_cache(), revision=revision)
             for f in component.files]
    if all(isinstance(p, str) for p in found):
        first, rel = Path(found[0]), component.files[0].path
        return first.parents[len(Path(rel).parts) - 1]
    return None


# ----------------------------------------------------------------- hashes
def find_folder(weights_dir: str | Path | None, subfolder: str, component: str, inside: str = "") -> Path | None:
    """Where an auxiliary model lives: ``<weights_dir>/<subfolder>`` when that folder exists, else
    the installed manifest ``component``'s folder (joined with ``inside``), else None."""
    if weights_dir is not None and (Path(weights_dir) / subfolder).is_dir():
        return Path(weights_dir) / subfolder
    entry = load_manifest().get(component)
    found = installed_path(entry) if entry is not None else None
    return None if found is None else (found / inside if inside else found)


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


def _remove_download(path: Path) -> None:
    """Delete a downloaded file; in the HF cache also the blob its snapshot link points to."""
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)


def _partials_root(component: Component, target: Path | None) -> Path:
    """Where huggingface_hub keeps a component's partial transfers (``*.incomplete``): the repo's
    ``blobs/`` folder in the HF cache, ``<local_dir>/.cache/huggingface/download/`` with --local-dir."""
    if target is not None:
        return target / ".cache" / "huggingface" / "download"
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = _hub_cache() or constants.HF_HUB_CACHE
    return Path(cache) / repo_folder_name(repo_id=component.repo_id, repo_type="model") / "blobs"


def _partials(root: Path) -> dict[Path, int]:
    """The ``*.incomplete`` files under root and their sizes."""
    return {p: p.stat().st_size for p in root.rglob("*.incomplete") if p.is_file()} if root.is_dir() else {}


def _remove_new_partials(root: Path, before: dict[Path, int]) -> None:
    """Delete the partial transfers written since ``before`` (new, or grown): the bytes of a transfer
    huggingface_hub rejected (its size differs from the announced one) must not be resumed from."""
    for path, size in _partials(root).items():
        if before.get(path) != size:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------- actions
@dataclass
class FileReport:
    """What happened to one file: status ok | recorded | mismatch | missing | unknown."""

    component: str
    path: str
    status: str
    detail: str = ""
    sha256: str | None = None


@dataclass
class VerifyReport:
    component: str
    installed: bool
    path: str | None
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.installed and all(f.status in ("ok", "recorded") for f in self.files)


def download(component: Component, local_dir: str | Path | None = None, quiet: bool = False,
             log=print) -> tuple[Path, list[FileReport]]:
    """Download a component's files at its pinned revision and check their sizes and sha256.

    A floating revision (``"main"``, allowed only with a ``revision_note``) is resolved to a commit
    on the first download (:func:`_resolve_revision`), recorded and printed; later calls stay there.

    Args:
        component: an available manifest entry.
        local_dir: write to ``local_dir/<name>/`` instead of the HF cache.
        quiet: no progress bars.
        log: where notes (trust on first use) go.

    Returns:
        (the folder holding the files, one report per file).

    Raises:
        WeightsError: unavailable component, offline, not found, gated without a token, a transfer
            error, or a sha256 mismatch (the file is deleted first).
    """
    if not component.available:
        raise WeightsError(f"{component.name} cannot be downloaded: {component.reason}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    from huggingface_hub.utils import logging as hub_logging

    root = _local_root(local_dir)
    target = None if root is None else root / component.name
    reports = []
    if quiet:
        disable_progress_bars()
    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()  # no "Retrying in 4s" lines: a failure ends in one line of ours
    revision = effective_revision(component)
    try:
        if not _COMMIT.fullmatch(revision) and not _offline():
            revision = _resolve_revision(component, log)
        for f in component.files:
            partials = _partials(_partials_root(component, target))
            try:
                path = Path(hf_hub_download(
                    component.repo_id, f.path, revision=revision, cache_dir=_hub_cache(),
                    local_dir=target, endpoint=os.environ.get("HF_ENDPOINT") or None,
                    local_files_only=_offline()))
            except GatedRepoError:
                raise WeightsError(f"{component.repo_id} is gated: accept its licence on huggingface.co and set "
                                   f"HF_TOKEN (or run 'hf auth login')") from None
            except LocalEntryNotFoundError:
                if _offline():
                    raise WeightsError(f"offline and {component.name}/{f.path} is not downloaded: download it on a "
                                       f"connected machine ('avatar weights download {component.name} --local-dir "
                                       f"DIR') and set AVATAR_WEIGHTS_DIR=DIR here") from None
                endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
                raise WeightsError(f"cannot reach {endpoint} and {component.name}/{f.path} is not in the cache: check "
                                   f"the network (or HF_ENDPOINT), or download on a connected machine with --local-dir "
                                   f"and set AVATAR_WEIGHTS_DIR here") from None
            except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
                raise WeightsError(f"{component.repo_id}@{revision} has no {f.path} "
                                   f"({type(err).__name__}); the manifest entry [{component.name}] is out of date") from None
            except (HfHubHTTPError, OSError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                if "Consistency check failed" in first:
                    # the transfer's size differs from the size the hub announced: its bytes cannot be resumed from
                    _remove_new_partials(_partials_root(component, target), partials)
                    raise WeightsError(f"downloading {component.name}/{f.path} failed: the transfer's size differs "
                                       f"from the size the hub announced ({first}); the partial file was removed: "
                                       f"run the command again") from None
                raise WeightsError(f"downloading {component.name}/{f.path} failed: {first}; run the command again "
                                   f"to resume") from None
            reports.append(_check(component, f, path, record=True, log=log))
            if reports[-1].status == "mismatch":
                _remove_download(path)
                _remove_new_partials(_partials_root(component, target), partials)
                raise WeightsError(f"{component.name}/{f.path}: {reports[-1].detail}; the file was deleted")
    finally:
        hub_logging.set_verbosity(verbosity)
        if quiet:
            enable_progress_bars()
    return path.parents[len(Path(component.files[-1].path).parts) - 1], reports


def _resolve_revision(component: Component, log=print) -> str:
    """The commit a floating revision (e.g. "main") points to now, asked of the hub (a HEAD request
    for the first file: its ``X-Repo-Commit``), recorded so that later downloads, lookups and
    first-use hashes stay at that commit, and printed (pin it in the manifest).

    Raises:
        WeightsError: the hub cannot be reached, or does not know the repo, revision or file.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    first = component.files[0].path
    try:
        meta = get_hf_file_metadata(hf_hub_url(component.repo_id, first, revision=component.revision,
                                               endpoint=endpoint), endpoint=endpoint)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise WeightsError(f"{component.repo_id}@{component.revision} has no {first} ({type(err).__name__}); "
                           f"the manifest entry [{component.name}] is out of date") from None
    except Exception as err:  # noqa: BLE001 - connection refused, DNS, timeout, HTTP errors: one line
        where = endpoint or "https://huggingface.co"
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"cannot reach {where} to resolve {component.repo_id}@{component.revision} ({detail}): "
                           f"check the network (or HF_ENDPOINT), or download on a connected machine with "
                           f"--local-dir and set AVATAR_WEIGHTS_DIR here") from None
    commit = meta.commit_hash
    if not commit or not _COMMIT.fullmatch(commit):
        raise WeightsError(f"{component.repo_id}@{component.revision}: the hub gave no commit id; cannot pin it")
    _record_revision(component, commit)
    log(f"{component.name}: {component.repo_id}@{component.revision} resolved to commit {commit} (recorded in "
        f"{_trust_file()}; downloads and checks stay at it)")
    return commit


def _check(component: Component, f: WeightFile, path: Path, record: bool, log=print) -> FileReport:
    if not path.is_file():
        return FileReport(component.name, f.path, "missing", "not on disk")
    if f.size is not None and path.stat().st_size != f.size:  # also before a first-use hash is recorded
        return FileReport(component.name, f.path, "mismatch", f"size {path.stat().st_size} != {f.size}")
    digest = sha256_file(path)
    expected, source = expected_sha256(component, f)
    if expected is None:
        if record:
            _record(component, f, digest)
            log(f"recorded sha256 of {component.name}/{f.path} on first download (trust on first use): {digest}")
            return FileReport(component.name, f.path, "recorded", "trust on first use", digest)
        return FileReport(component.name, f.path, "unknown", "no known sha256", digest)
    if digest != expected:
        return FileReport(component.name, f.path, "mismatch",
                          f"sha256 {digest[:12]}... differs from the {source} {expected[:12]}...", digest)
    return FileReport(component.name, f.path, "ok", source, digest)


def verify(component: Component, local_dir: str | Path | None = None, log=print) -> VerifyReport:
    """Re-hash an installed component's files against the manifest (or first-use record)."""
    folder = installed_path(component, local_dir)
    report = VerifyReport(component.name, folder is not None, None if folder is None else str(folder))
    if folder is None:
        return report
    for f in component.files:
        report.files.append(_check(component, f, folder / f.path, record=True, log=log))
    return report


# Manifest components each sampling method needs to render without --weights.
def downloaded_folder(spec) -> Path | None:
    """The installed folder of a model's first manifest component (a :class:`ModelSpec` of
    ``models/catalog.py``), if all its files are there."""
    if not spec.components:
        return None
    component = load_manifest().get(spec.components[0])
    return installed_path(component) if component is not None else None


def converted_dir(name: str) -> Path:
    """Where ``avatar weights convert --from NAME`` writes by default: $AVATAR_HOME/converted/NAME."""
    return avatar_home() / "converted" / name


def converted_folder(model: str) -> Path | None:
    """The converted weights folder ``--model`` renders from without --weights, if it exists."""
    from .models.catalog import MODELS

    name = MODELS[model].converted if model in MODELS else None
    if name is None:
        return None
    folder = converted_dir(name)
    return folder if (folder / "avatar_index.json").is_file() else None


def missing_for(model: str, manifest: dict[str, Component] | None = None,
                local_dir: str | Path | None = None) -> list[str]:
    """Why ``model`` cannot render from installed components: one phrase per missing component."""
    from .models.catalog import MODELS

    manifest = manifest if manifest is not None else load_manifest()
    spec = MODELS.get(model)
    needed = spec.components if spec is not None else ()
    if not needed:
        return [f"{model}: no public weights exist for it yet"]
    absent = [name for name in needed if name not in manifest]
    unavailable = [f"{name}: {manifest[name].reason}" for name in needed
                   if name in manifest and not manifest[name].available]
    if absent or unavailable:  # downloads would not help
        return [f"{name}: not in the manifest" for name in absent] + unavailable
    missing = [f"{name}: run 'avatar weights download {name}'" for name in needed
               if installed_path(manifest[name], local_dir) is None]
    if spec.converted and not spec.reads_download:  # rendered from the converted folder: say the last step too
        convert = f"'avatar weights convert --from {spec.convert_from or spec.converted}'"
        missing = [*missing, f"then {convert}"] if missing else \
            [f"{spec.converted}: downloaded but not converted; run {convert}"]
    return missing
