"""Ditto's PyTorch release -> one folder ``--model ditto`` reads: every ``.pth`` key-checked without
loading its tensors, the cfg pickle read without running code, files hard-linked."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_folder
from ..errors import InputError, WeightsError
from .keys import ComponentReport, ConversionReport

#: Where the files sit in HF digital-avatar/ditto-talkinghead (DITTO notes sec. 2).
DITTO_CFG = "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"
DITTO_MODELS = "ditto_pytorch/models"
DITTO_AUX = "ditto_pytorch/aux_models"
DITTO_AUX_FILES = ("hubert_streaming_fix_kv.onnx", "det_10g.onnx", "2d106det.onnx", "landmark203.onnx",
                   "face_landmarker.task")


def _read_ditto_state(path: Path, entry: str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict, other top-level entries) of one Ditto ``.pth``, memory-mapped: the tensors' bytes
    are not read (``torch.load(mmap=True, weights_only=True)``; a legacy, non-zip file is read whole).
    ``module.`` prefixes (DDP) are removed, as Ditto's loader does.

    Raises:
        WeightsError: unreadable, not weights-only, no ``entry``, or not a dict of tensors (one line).
    """
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = load(True)
        except RuntimeError as err:  # "mmap can only be used with files saved with the zipfile format"
            if "mmap" not in str(err):
                raise
            obj = load(False)
    except Exception as err:  # noqa: BLE001 - weights_only refusal, truncated zip, not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({first[:200]})") from None
    others: list[str] = []
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            raise WeightsError(f"{path}: no '{entry}' entry (not Ditto's {path.name})")
        others = [str(k) for k in obj if k != entry]
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k.replace("module.", ""): v for k, v in obj.items()}, others


def check_ditto_models(directory: str | Path, preset: "str | Path | dict" = "full"
                       ) -> tuple[list[ComponentReport], dict[str, int]]:
    """Check the six ``.pth`` files of ``ditto_pytorch/models/`` against :class:`DittoModels` (built on
    the meta device at ``preset``'s sizes: a preset name, or a config of any width, ``models.ditto.ditto_config``):
    every key present, none extra, every shape equal, as
    ``DittoModels.from_files`` (``load_state_dict(strict=True)``) will require; without reading the
    tensors (memory-mapped), so ~0.7 GB of weights cost no RAM.

    Returns:
        (one report per network, named ``appearance (appearance_extractor.pth)`` etc.; the top-level
        entries of the stitch file Ditto does not use, counted under ``ignored``).

    Raises:
        WeightsError: a file missing or unreadable, or a missing / extra key or a wrong shape (one line
            naming the file and the first key).
    """
    from ..models.ditto import ENTRIES, FILES, WHAT, DittoModels, check_layout, ditto_config

    directory = Path(directory)
    models = DittoModels.from_config(ditto_config(preset), device="meta")
    reports, ignored = [], {}
    for name, filename in FILES.items():
        path = directory / filename
        if not path.is_file():
            raise WeightsError(f"{path} not found: Ditto's PyTorch weights are the ditto_pytorch/models/ folder of "
                               f"HF digital-avatar/ditto-talkinghead")
        state, others = _read_ditto_state(path, ENTRIES.get(name))
        check_layout(getattr(models, name).state_dict(), state, path, WHAT[name], " (is --arch or --config right?)")
        reports.append(ComponentReport(f"{name} ({filename})", loaded=len(state)))
        if others:
            ignored[f"{filename} entries Ditto does not use ({', '.join(others)})"] = len(others)
    return reports, ignored


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link ``src`` (its resolved target: an HF cache snapshot holds symbolic links to blobs) at
    ``dst``, or copy it where a link is impossible (another filesystem, no link support).
    Returns "linked" or "copied"."""
    import os
    import shutil

    try:
        os.link(src.resolve(), dst)
        return "linked"
    except OSError:
        shutil.copyfile(src, dst)
        return "copied"


def convert_ditto(snapshot: str | Path, output: str | Path, arch: str = "full",
                  overwrite: bool = False, config: "str | Path | dict | None" = None) -> ConversionReport:
    """Gather Ditto's released PyTorch set into one folder that ``--model ditto`` reads.

    Writes, atomically (a hidden ``.NAME.partial`` folder renamed when complete)::

        output/avatar_index.json        {"family": "ditto", "config": {network: arguments}, "preset": NAME
                                        (a preset only), "models": {...}, ...}
        output/ditto_cfg.json           DittoConfig.save: the cfg pickle's settings as JSON
        output/ditto_cfg.safetensors    its arrays (delta_eye_arr (15, 63), v_min_max_for_clip (4, 265))
        output/models/*.pth             the six networks, upstream layout (DittoModels.from_files)
        output/aux_models/*             hubert_streaming_fix_kv.onnx, det_10g.onnx, 2d106det.onnx,
                                        landmark203.onnx, face_landmarker.task

    The ``.pth`` and auxiliary files are hard links to the snapshot's where possible (no second copy
    of 2.3 GB), else copies. The cfg pickle is read by the restricted unpickler only
    (``safe_pickle.DittoConfig.from_pickle``); every ``.pth`` is checked by :func:`check_ditto_models`
    before anything is written.

    Args:
        snapshot: the repo folder (holding ``ditto_cfg/`` and ``ditto_pytorch/``), e.g. the installed
            ``ditto`` component's.
        output: folder to write.
        arch: the DittoModels preset the ``.pth`` files must match ("full" for the release).
        config: instead, the sizes of files of another width (``models/configs.py``: a JSON file or a dict,
            complete or ``{"base": ..., "<network>": {...}}``; without ``"base"`` it starts from ``arch``).

    Raises:
        InputError: snapshot not a folder or a file absent, output exists without ``overwrite``, or a cfg
            pickle that is refused (it would run code) or unreadable: nothing is written.
        WeightsError: a ``.pth`` file with a missing / extra key or a wrong shape: nothing is written.
    """
    import json

    from .. import __version__
    from ..models.ditto import FILES, ditto_config
    from ..safe_pickle import DittoConfig

    snapshot, output = Path(snapshot), Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it")
    if not snapshot.is_dir():
        raise InputError(f"{snapshot} is not a folder; give the folder of HF digital-avatar/ditto-talkinghead "
                         f"(holding ditto_cfg/ and ditto_pytorch/)")
    wanted = ([DITTO_CFG] + [f"{DITTO_MODELS}/{f}" for f in FILES.values()]
              + [f"{DITTO_AUX}/{f}" for f in DITTO_AUX_FILES])
    absent = [p for p in wanted if not (snapshot / p).is_file()]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise InputError(f"{snapshot} lacks {absent[0]}{more}: give the folder of HF digital-avatar/ditto-talkinghead, "
                         f"or run 'avatar weights download ditto'")
    try:
        cfg = DittoConfig.from_pickle(snapshot / DITTO_CFG)
    except WeightsError as err:  # refused (a global that could run code) or malformed: bad input
        raise InputError(str(err)) from None
    sizes = ditto_config(config if config is not None else arch, base=arch)
    reports, ignored = check_ditto_models(snapshot / DITTO_MODELS, sizes)

    how = {"linked": 0, "copied": 0}
    with atomic_folder(output) as tmp:
        tmp.mkdir(parents=True)
        cfg.save(tmp)
        for sub, source, names in (("models", DITTO_MODELS, FILES.values()),
                                   ("aux_models", DITTO_AUX, DITTO_AUX_FILES)):
            (tmp / sub).mkdir()
            for name in names:
                how[_link_or_copy(snapshot / source / name, tmp / sub / name)] += 1
        index = {"family": "ditto", **({"preset": arch} if config is None else {}), "config": sizes, "avatar_cli_version": __version__, "source": str(snapshot),
                 "cfg": sorted(p.name for p in tmp.glob("ditto_cfg.*")),
                 "models": {attr: f"models/{name}" for attr, name in FILES.items()},
                 "aux_models": [f"aux_models/{name}" for name in DITTO_AUX_FILES]}
        (tmp / "avatar_index.json").write_text(json.dumps(index, indent=2) + "\n")  # models.bundle.INDEX_FILE
    notes = {"files": how, "cfg_arrays": {k: list(v.shape) for k, v in cfg.arrays().items()}}
    return ConversionReport(str(output), reports, ignored, notes)
