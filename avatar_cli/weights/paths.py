"""Where weights live on this machine, from the environment alone: $AVATAR_HOME (trust records,
converted weights), $AVATAR_WEIGHTS_DIR / ``--local-dir`` (a folder per component), the Hugging Face
cache (HF_HOME / HF_HUB_CACHE) and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import os
from pathlib import Path


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


def converted_dir(name: str) -> Path:
    """Where ``avatar weights convert --from NAME`` writes by default: $AVATAR_HOME/converted/NAME."""
    return avatar_home() / "converted" / name
