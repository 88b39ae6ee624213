"""Download and verify: huggingface_hub's ``hf_hub_download`` at the pinned (or resolved) revision,
each file's size and sha256 checked against the manifest or the first-use record; a rejected download
(sha256 mismatch, or a transfer whose size differs from the announced one) leaves none of its bytes in
the cache (the file, its blob and the partial transfers are removed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WeightsError
from .installed import installed_path
from .manifest import _COMMIT, Component, WeightFile
from .paths import _hub_cache, _local_root, _offline
from .trust import _record, _record_revision, _trust_file, effective_revision, expected_sha256, sha256_file


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
