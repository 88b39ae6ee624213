"""Loading Ditto, a mixin of :class:`~avatar_cli.pipelines.ditto.DittoPipeline` (moved from ``pipelines/ditto.py``):
a weights folder (the Hugging Face snapshot of ``digital-avatar/ditto-talkinghead``: ``ditto_pytorch/models/*.pth``,
``ditto_pytorch/aux_models/*``, ``ditto_cfg/*.pkl``; or the folder ``avatar weights convert --from ditto`` writes:
``models/``, ``aux_models/``, ``ditto_cfg.json``), or random weights at a preset's or a config's sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import WeightsError
from ..models.ditto import DittoModels, index_config
from ..motion.hubert_windows import OnnxHubert, RandomHubert
from ..runtime import resolve_device, resolve_dtype
from ..safe_pickle import DittoConfig

if TYPE_CHECKING:
    from .ditto import DittoPipeline

HUBERT_FILE = "hubert_streaming_fix_kv.onnx"
EYE_TASK_FILE = "face_landmarker.task"


def _folder(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


class DittoLoadMixin:
    """``from_pretrained`` / ``from_preset`` and the weights folder's parts for :class:`DittoPipeline`
    (whose constructor ``cls(models, config, encoder, aux_dir, device, dtype, source, precision=...)`` they call)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        compile: bool | None = False, **_) -> "DittoPipeline":
        """Load Ditto's released files (a hub snapshot or a converted folder, see the module docstring).

        ``dtype="auto"`` is float32 on the CPU (Ditto's fp16 autocast is 30-150x slower there) and
        float16 on CUDA.

        Raises:
            WeightsError: a missing or malformed file (named), or onnxruntime missing for HuBERT.
        """
        root = Path(path)
        dev = resolve_device(device)
        dt = resolve_dtype("float16" if dtype == "auto" and dev.type == "cuda" else dtype, dev)
        models_dir = _folder(root, "models", "ditto_pytorch/models")
        if models_dir is None:
            raise WeightsError(f"{root} holds no Ditto weights (no models/ or ditto_pytorch/models/); run "
                               f"'avatar weights download ditto' or pass the folder 'weights convert --from ditto' wrote")
        config = cls.config_of(root)
        aux = cls.aux_folder(root)
        if aux is None or not (aux / HUBERT_FILE).is_file():
            raise WeightsError(f"Ditto's audio encoder {HUBERT_FILE} is not in {root}; run "
                               f"'avatar weights download ditto'")
        # sizes: avatar_index.json's "config" ('weights convert --from ditto'), or its "preset" (older folders)
        models = DittoModels.from_files(models_dir, preset=index_config(root))
        pipe = cls(models, config, OnnxHubert(aux / HUBERT_FILE), aux, dev, dt, str(root), precision=dtype)
        pipe.compile = compile
        return pipe

    @staticmethod
    def config_of(root: str | Path | None) -> DittoConfig:
        """The run options of a weights folder: ``ditto_cfg.json`` (converted), else the hub's
        ``ditto_cfg/*pytorch*.pkl``, else the code defaults (also for None: random weights)."""
        if root is None:
            return DittoConfig()
        root = Path(root)
        if (root / "ditto_cfg.json").is_file():
            return DittoConfig.load(root)
        pickles = sorted((root / "ditto_cfg").glob("*pytorch*.pkl")) if (root / "ditto_cfg").is_dir() else []
        return DittoConfig.from_pickle(pickles[0]) if pickles else DittoConfig()

    @staticmethod
    def aux_folder(root: str | Path) -> Path | None:
        """The folder of the face-crop ONNX models and HuBERT in a weights folder, or None."""
        return _folder(Path(root), "aux_models", "ditto_pytorch/aux_models")

    @classmethod
    def from_preset(cls, arch: str = "full", device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    seed: int = 0, compile: bool | None = False, **_) -> "DittoPipeline":
        """Random weights at the released sizes (``full``) or a tiny preset, with a seeded random
        stand-in for HuBERT: real shapes and costs, the frames are noise."""
        dev = resolve_device(device)
        dt = resolve_dtype("float16" if dtype == "auto" and dev.type == "cuda" else dtype, dev)
        pipe = cls(DittoModels.from_preset(arch, seed=seed), DittoConfig(), RandomHubert(seed), None, dev, dt,
                   f"random:{arch}", precision=dtype)
        pipe.compile = compile
        return pipe
