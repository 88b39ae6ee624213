"""SyncNet v2, the audio-visual synchronisation network behind Sync-C / Sync-D (LSE-C / LSE-D).

Re-implemented from the reading of joonson/syncnet_python @ 6efbb1c (``SyncNetModel.py``, class ``S``;
no code copied): two streams embed 0.2 s of speech and of video into the same 1024-dim space, where
the Euclidean distance is small when lips and speech are in sync (Chung & Zisserman, "Out of time:
automated lip sync in the wild", ACCV workshops 2016).

- audio: MFCC (13 coefficients x 20 steps at 100 Hz, i.e. 5 video frames at 25 fps), a 2D conv stack
  ``netcnnaud`` (1 -> 64 -> 192 -> 384 -> 256 -> 256 -> 512, the last conv (5, 4) to 1x1) and
  ``netfcaud`` (512 -> 512 -> 1024);
- video: 5 frames of the 224x224 face crop, **BGR, 0..255, not normalised** (syncnet_python reads
  them with ``cv2.imread``), a 3D conv stack ``netcnnlip`` (the first conv spans the 5 frames) and
  ``netfclip`` (512 -> 512 -> 1024).

Parameter names are exactly those of ``syncnet_v2.model`` (the original repo's ``S.state_dict()``,
``nn.Sequential`` indices included: ReLU and pooling layers keep their slots), so the file loads with
``load_state_dict(strict=True)``. The file is a plain state dict (syncnet_python's ``loadParameters``
iterates ``loaded_state.items()``; syncnet-python 0.2.3 calls ``S().load_state_dict(torch.load(path))``),
read here with ``torch.load(weights_only=True)``. A file saved by torch < 0.4 has no
``num_batches_tracked`` entries; BatchNorm's own loader fills them in (state-dict version < 2), so it
loads strictly too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError

SYNCNET_FILE = "syncnet_v2.model"
COMPONENT = "syncnet"  # the weights.toml entry
EMBEDDING_DIM = 1024
AUDIO_STEPS = 20  # MFCC steps per window (0.2 s at 100 Hz)
MFCC_COEFFS = 13
WINDOW_FRAMES = 5  # video frames per window
CROP_SIZE = 224


class SyncNetV2(nn.Module):
    """SyncNet v2 (syncnet_python's ``S``), in eval mode after loading.

    Args:
        embedding_dim: output size of both streams (1024 in ``syncnet_v2.model``).

    Inputs:
        ``forward_aud``: (N, 1, 13, 20) float32 MFCC windows (rows = coefficients, columns = 10 ms steps).
        ``forward_lip``: (N, 3, 5, 224, 224) float32 BGR frames in 0..255.

    Outputs: (N, embedding_dim) float32 embeddings; the metric is their Euclidean distance.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, 1, 1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), 1, 0), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), 1, 0), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, D) audio embeddings."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 -> (N, D) video embeddings."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNetV2:
    """Read ``syncnet_v2.model`` (a state dict) into :class:`SyncNetV2`, strictly, in eval mode.

    Raises:
        WeightsError: missing or unreadable file, not a plain state dict (e.g. a pickled module, which
            ``weights_only=True`` refuses to run), or keys / shapes that differ from SyncNet v2's.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"SyncNet weights {path} do not exist; {download_hint()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError (code refused), truncated file, not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"cannot read SyncNet weights {path} as a plain state dict ({first[:200]}); "
                           f"{download_hint()}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"SyncNet weights {path} are not a state dict of tensors (got {type(state).__name__}); "
                           f"{download_hint()}")
    state = {k[len("__S__."):] if k.startswith("__S__.") else k: v for k, v in state.items()}
    net = SyncNetV2(embedding_dim=_embedding_dim(state))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise WeightsError(f"{path} is not SyncNet v2's state dict: {detail}") from None
    return net.to(device).eval()


def _embedding_dim(state: Mapping[str, torch.Tensor]) -> int:
    weight = state.get("netfcaud.3.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else EMBEDDING_DIM


def download_hint() -> str:
    """The one fix for a missing SyncNet file."""
    return (f"run 'avatar weights download {COMPONENT}' (or pass --syncnet PATH to a {SYNCNET_FILE}; "
            f"docs/eval.md says where to get it)")


def find_syncnet(path: str | Path | None = None, weights_dir: str | Path | None = None) -> Path:
    """Where ``syncnet_v2.model`` is, in order: ``path`` (the file, or a folder holding it);
    ``weights_dir`` / ``$AVATAR_WEIGHTS_DIR`` + ``syncnet/`` (``avatar weights download syncnet
    --local-dir``); the installed manifest entry ``syncnet`` (Hugging Face cache).

    Raises:
        WeightsError: not found (names the download command).
    """
    if path is not None:
        p = Path(path)
        p = p / SYNCNET_FILE if p.is_dir() else p
        if not p.is_file():
            raise WeightsError(f"SyncNet weights {p} do not exist; {download_hint()}")
        return p
    for root in (weights_dir, os.environ.get("AVATAR_WEIGHTS_DIR")):
        if root:
            for candidate in (Path(root) / COMPONENT, Path(root)):
                hits = sorted(candidate.rglob(SYNCNET_FILE)) if candidate.is_dir() else []
                if hits:
                    return hits[0]
    from ..weights import installed_path, load_manifest

    entry = load_manifest().get(COMPONENT)
    folder = installed_path(entry) if entry is not None else None
    if folder is not None:
        hits = sorted(folder.rglob(SYNCNET_FILE))
        if hits:
            return hits[0]
    raise WeightsError(f"SyncNet weights ({SYNCNET_FILE}) are not installed; {download_hint()}")
