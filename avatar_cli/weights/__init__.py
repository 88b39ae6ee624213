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

One module per concern, every name re-exported here (the old import path ``avatar_cli.weights``):
``manifest.py`` (:class:`Component`, :class:`WeightFile`, :func:`load_manifest`, :func:`select`),
``paths.py`` (:func:`avatar_home`, the environment's folders), ``installed.py`` (:func:`installed_path`,
:func:`find_folder`, :func:`missing_for`, downloaded / converted folders), ``trust.py``
(:func:`sha256_file`, :func:`effective_revision`, :func:`expected_sha256`, the first-use records) and
``download.py`` (:func:`download`, :func:`verify`, the rejected-download cleanup). The manifest itself
stays at ``avatar_cli/weights.toml`` (package data).
"""

from __future__ import annotations

from .download import (FileReport, VerifyReport, _check, _partials, _partials_root, _remove_download,  # noqa: F401
                       _remove_new_partials, _resolve_revision, download, verify)
from .installed import converted_folder, downloaded_folder, find_folder, installed_path, missing_for  # noqa: F401
from .manifest import _COMMIT, MANIFEST_ENV, Component, WeightFile, load_manifest, manifest_path, select  # noqa: F401
from .paths import _hub_cache, _local_root, _offline, avatar_home, converted_dir  # noqa: F401
from .trust import (_record, _record_revision, _revision_key, _store, _trust_file, _trust_key, _trusted,  # noqa: F401
                    effective_revision, expected_sha256, sha256_file)

