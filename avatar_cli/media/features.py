"""Audio-feature files (``avatar audio encode``): per-frame wav2vec2 features in safetensors.

One tensor ``features`` (frames, layers, dim) float32 and string metadata: ``fps``,
``sample_rate``, ``model`` (a fingerprint of the audio encoder's weights), ``audio_sha256``,
``frames`` (video frames of the speech), ``padding`` (frames of silence appended, Hallo's clip
padding), ``avatar_cli_version``. Written and read in the safetensors layout (8-byte header size,
JSON header, raw little-endian data) by streaming and memory-mapping, so an hour of features
(3.3 GB at full size) never has to sit in memory; safetensors' own loader reads the files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError


def fingerprint(model: "torch.nn.Module") -> str:
    """sha256 (first 16 hex digits) over a model's parameter and buffer bytes, in state-dict order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_features(path: str | Path, features: "torch.Tensor", metadata: dict[str, str], chunk_frames: int = 4096) -> None:
    """Write (frames, layers, dim) float32 features as safetensors, streaming; atomic (temporary
    file renamed when complete)."""
    path = Path(path)
    shape = list(features.shape)
    nbytes = int(np.prod(shape)) * 4
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()},
              "features": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-aligned
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for f0 in range(0, shape[0], chunk_frames):
                fh.write(features[f0:f0 + chunk_frames].float().contiguous().numpy().astype("<f4").tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_features(path: str | Path) -> tuple["torch.Tensor", dict[str, str]]:
    """Memory-map a features file. Returns (features (frames, layers, dim), metadata).

    Raises:
        InputError: missing, not a features file, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio features {path} do not exist; make them with 'avatar audio encode'")
    try:
        with open(path, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
        entry = header["features"]
        shape = tuple(entry["shape"])
        start = 8 + size + entry["data_offsets"][0]
        if entry["dtype"] != "F32" or path.stat().st_size < start + int(np.prod(shape)) * 4:
            raise ValueError("truncated or not float32")
        data = np.memmap(path, dtype="<f4", mode="c", offset=start, shape=shape)  # copy-on-write: no copy made
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not an audio-features file ({err}); make one with 'avatar audio encode'") from None
    import torch

    return torch.from_numpy(data), header.get("__metadata__", {})
