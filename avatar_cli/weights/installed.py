"""Installed lookups: the folder holding a component's files (``--local-dir`` /
$AVATAR_WEIGHTS_DIR first, then the Hugging Face cache at the pinned revision), auxiliary model
folders, a model's downloaded or converted weights, and what a model still lacks to render.
"""

from __future__ import annotations

from pathlib import Path

from .manifest import Component, load_manifest
from .paths import _hub_cache, _local_root, converted_dir
from .trust import effective_revision


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


def find_folder(weights_dir: str | Path | None, subfolder: str, component: str, inside: str = "") -> Path | None:
    """Where an auxiliary model lives: ``<weights_dir>/<subfolder>`` when that folder exists, else
    the installed manifest ``component``'s folder (joined with ``inside``), else None."""
    if weights_dir is not None and (Path(weights_dir) / subfolder).is_dir():
        return Path(weights_dir) / subfolder
    entry = load_manifest().get(component)
    found = installed_path(entry) if entry is not None else None
    return None if found is None else (found / inside if inside else found)


def downloaded_folder(spec) -> Path | None:
    """The installed folder of a model's first manifest component (a :class:`ModelSpec` of
    ``models/catalog.py``), if all its files are there."""
    if not spec.components:
        return None
    component = load_manifest().get(spec.components[0])
    return installed_path(component) if component is not None else None


def converted_folder(model: str) -> Path | None:
    """The converted weights folder ``--model`` renders from without --weights, if it exists."""
    from ..models.catalog import MODELS

    name = MODELS[model].converted if model in MODELS else None
    if name is None:
        return None
    folder = converted_dir(name)
    return folder if (folder / "avatar_index.json").is_file() else None


def missing_for(model: str, manifest: dict[str, Component] | None = None,
                local_dir: str | Path | None = None) -> list[str]:
    """Why ``model`` cannot render from installed components: one phrase per missing component."""
    from ..models.catalog import MODELS

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
