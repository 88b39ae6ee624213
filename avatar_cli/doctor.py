"""``avatar doctor``: what this machine can render, as one dict (the CLI prints it as a table or JSON).

What it looks at, without loading a model or importing an optional package:

| key | what |
|---|---|
| ``python`` | version and executable |
| ``torch`` | version, build (``cuda X.Y`` or ``cpu``), whether it sees a CUDA GPU |
| ``device`` | what ``--device auto`` runs on: the CUDA GPU's name, memory (GiB) and bf16; on the CPU its cores, the threads torch uses, native bf16 (:func:`runtime.cpu_native_bf16`) and whether a C++ compiler for torch.compile is on PATH (``compiling.compiler_available``) |
| ``ffmpeg`` | imageio-ffmpeg's bundled binary and its version |
| ``packages`` | onnxruntime (core) and each extra: installed or not, version, what it is for |
| ``weights`` | each manifest entry (``weights.toml``): installed / verified / mismatch / absent / unavailable, its recorded size and folder |
| ``cache`` | the Hugging Face cache and ``AVATAR_HOME``, the free disk there, the default download's size |
| ``auto`` | the render ``--model auto`` would run: the model, from where (installed or downloaded on first use), and whether it can run |
| ``ok`` / ``problem`` / ``fix`` | False when the default render cannot run, with the problem and the one-line fix |

Hashing multi-GB weights takes minutes, so files are hashed only with ``verify=True``
(``avatar doctor --verify``); otherwise an entry is "installed" when all its files are on disk.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

# import name -> (distribution names to read the version from, how to install it, what it is for)
PACKAGES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), "core dependency",
                    "Ditto's HuBERT audio encoder and face crop; avatar eval's identity"),
    "mediapipe": (("mediapipe",), "pip install 'avatar-cli[face]'", "Hallo's face and lip boxes; Ditto's eye state"),
    "insightface": (("insightface",), "pip install 'avatar-cli[arcface]'", "Hallo's ArcFace face embedding"),
    "facenet_pytorch": (("facenet-pytorch",), "pip install 'avatar-cli[mtcnn]'", "EchoMimic's face detector (MTCNN)"),
    "matplotlib": (("matplotlib",), "pip install 'avatar-cli[plot]'", "avatar bench --plot, avatar eval --plot"),
    "audio_separator": (("audio-separator",), "pip install 'avatar-cli[vocals]'", "--separate-vocals"),
}


def _version(dists: tuple[str, ...]) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def packages() -> dict[str, dict]:
    """Each package of :data:`PACKAGES`: ``{"installed", "version", "install", "for"}`` (found on the
    path, not imported: importing MediaPipe alone takes seconds)."""
    from .models.catalog import importable

    return {name: {"installed": importable(name), "version": _version(dists) if importable(name) else None,
                   "install": install, "for": purpose}
            for name, (dists, install, purpose) in PACKAGES.items()}


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_facts() -> tuple[dict, dict]:
    """(``torch``, ``device``) entries: torch's version and build, and the device ``--device auto`` picks."""
    import torch

    from .compiling import compiler_available
    from .runtime import cpu_native_bf16

    cuda = torch.cuda.is_available()
    build = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"
    facts = {"version": torch.__version__, "build": build, "cuda_available": cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device = {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                  "memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = {"type": "cpu", "name": _cpu_name(), "cores": cores,
                  "torch_threads": torch.get_num_threads(), "native_bf16": cpu_native_bf16(),
                  "compiler": compiler_available()}
    return facts, device


def ffmpeg_facts() -> dict:
    """imageio-ffmpeg's binary: ``{"path", "version", "found"}``."""
    import imageio_ffmpeg

    try:
        path = imageio_ffmpeg.get_ffmpeg_exe()
        return {"found": True, "path": path, "version": imageio_ffmpeg.get_ffmpeg_version()}
    except RuntimeError as err:  # no bundled binary for this platform and none on PATH
        return {"found": False, "path": None, "version": None, "error": str(err)}


def weights_facts(verify: bool = False, log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """Each manifest entry: ``{"name", "status", "size_bytes", "path", "used_by"}``; status is
    "unavailable" (no public weights), "absent", "installed" (every file on disk), or with ``verify``
    "verified" / "mismatch" / "unknown" (hashed against the manifest or the first-use record)."""
    from .weights import installed_path, load_manifest, verify as verify_component

    rows = []
    for component in load_manifest().values():
        folder = installed_path(component) if component.available else None
        status = "unavailable" if not component.available else "absent" if folder is None else "installed"
        if verify and folder is not None:
            report = verify_component(component, log=log)
            status = "verified" if report.ok else \
                "mismatch" if any(f.status in ("mismatch", "missing") for f in report.files) else "unknown"
        rows.append({"name": component.name, "status": status, "size_bytes": component.size,
                     "path": None if folder is None else str(folder), "used_by": list(component.used_by)})
    return rows


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):  # the nearest existing folder (the cache may not exist yet)
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def cache_facts() -> dict:
    """The Hugging Face hub cache (where downloads go) and ``AVATAR_HOME`` (converted weights), the free
    disk at the hub cache and the default download's size."""
    from .models.catalog import DEFAULT_DOWNLOAD, MODELS
    from .weights import _hub_cache, avatar_home, load_manifest

    hub = _hub_cache()
    if hub is None:
        from huggingface_hub import constants

        hub = constants.HF_HUB_CACHE
    component = load_manifest().get(MODELS[DEFAULT_DOWNLOAD].components[0])
    size = component.size if component is not None else None
    free = _free_bytes(Path(hub))
    return {"hub_cache": str(hub), "avatar_home": str(avatar_home()), "free_bytes": free,
            "default_download": DEFAULT_DOWNLOAD, "default_download_bytes": size,
            "enough_space": None if free is None or size is None else free >= size}


def auto_facts(cache: dict) -> dict:
    """What ``avatar render IMAGE AUDIO`` (``--model auto``) would do here: ``{"model", "installed",
    "weights", "action", "can_run", "problem", "fix"}``."""
    from .models.catalog import AUTO_ORDER, DEFAULT_DOWNLOAD, PACKAGES as REQUIRED, missing_packages
    from .pipelines import _installed
    from .weights import _offline

    model, folder = DEFAULT_DOWNLOAD, None
    for name in AUTO_ORDER:
        folder = _installed(name)
        if folder is not None:
            model = name
            break
    facts = {"model": model, "installed": folder is not None, "weights": None if folder is None else str(folder),
             "can_run": True, "problem": None, "fix": None}
    gb = (f"{cache['default_download_bytes'] / 1e9:.1f} GB" if cache["default_download_bytes"] else "size unknown")
    facts["action"] = (f"render with {model} from {folder}" if folder is not None else
                       f"download {model} ({gb}) on the first render, then render with it")
    missing = missing_packages(model)
    if missing:
        install = " ".join(f"'{REQUIRED.get(m, m)}'" for m in missing)
        facts.update(can_run=False, problem=f"--model {model} needs {', '.join(missing)}, which is not installed",
                     fix=f"pip install {install}")
    elif folder is None and _offline():
        facts.update(can_run=False, problem="no model is installed and HF_HUB_OFFLINE is set",
                     fix=f"run 'avatar weights download {model}' ({gb}) where the hub can be reached")
    elif folder is None and cache["enough_space"] is False:
        need = cache["default_download_bytes"] / 1e9
        facts.update(can_run=False, problem=f"no model is installed and {cache['hub_cache']} has "
                     f"{cache['free_bytes'] / 1e9:.1f} GB free, less than {model}'s {need:.1f} GB",
                     fix="free disk space there, or point HF_HOME at a larger disk")
    return facts


def diagnose(verify: bool = False, log: Callable[[str], None] = lambda message: None) -> dict:
    """Everything ``avatar doctor`` reports (the keys of the module's table). ``ok`` is False when the
    default render (``--model auto``) cannot run here; ``problem`` and ``fix`` then say why and what to do.
    Starts no download and loads no model; ``verify`` hashes installed weights (minutes for GBs)."""
    from . import __version__

    torch, device = torch_facts()
    ffmpeg = ffmpeg_facts()
    cache = cache_facts()
    auto = auto_facts(cache)
    if not ffmpeg["found"] and auto["can_run"]:
        auto.update(can_run=False, problem="no ffmpeg binary found (imageio-ffmpeg has none for this platform)",
                    fix="install ffmpeg and set IMAGEIO_FFMPEG_EXE to its path")
    return {
        "avatar_cli": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": torch, "device": device, "ffmpeg": ffmpeg, "packages": packages(),
        "weights": weights_facts(verify, log), "cache": cache, "auto": auto,
        "ok": auto["can_run"], "problem": auto["problem"], "fix": auto["fix"],
    }
