"""Folders written all at once, so a reader never sees a half-written one (weights folders,
conversions, trained weights). Imports nothing heavy."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(output: str | Path):
    """Write a folder all at once: yields a hidden sibling ``.NAME.partial`` to fill, which replaces
    ``output`` only when the block ends without an error (removed otherwise). A reader never sees a
    half-written weights folder."""
    import shutil

    output = Path(output)
    tmp = output.with_name(f".{output.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
