"""FID: Fréchet Inception Distance between two sets of frames (Heusel et al. 2017).

What is computed, as torchmetrics 1.9's ``FrechetInceptionDistance(feature=2048)`` computes it
(``torchmetrics/image/fid.py``; its network is torch-fidelity 0.4's ``FeatureExtractorInceptionV3``,
the TensorFlow Inception graph of 2015-12-05 restated in PyTorch, as pytorch-fid's):

1. every frame (uint8 RGB) is resized to 299x299 (``resize="antialias"``: bilinear with antialiasing,
   torchmetrics' default; ``resize="tf1"``: TensorFlow 1.x's bilinear resize, torch-fidelity's and
   torchmetrics' ``antialias=False``), mapped to ``(x - 128) / 128``;
2. :class:`FIDInceptionV3` gives its 2048-d pool features;
3. mean and covariance (unbiased, ``n - 1``) of each set's features in float64
   (:func:`feature_statistics`);
4. the Fréchet distance of the two Gaussians (:func:`frechet_distance`).

The network is re-implemented here (no code copied) rather than imported: torch-fidelity loads its
weights with ``torch.load(weights_only=False)`` or from a GitHub URL, and pulls torchvision and
scipy. Its parameter names are those of torch-fidelity's / pytorch-fid's InceptionV3 (torchvision's
``Inception3`` names without the auxiliary head), so ``pt_inception-2015-12-05-6726825d.pth``
(the ``fid-inception`` manifest entry) loads strictly, read with ``torch.load(weights_only=True)``.
``tests/eval/test_fid.py`` checks the values against torchmetrics' on the same random weights
(fixture ``tests/data/eval_fid_reference.npz``).

Modules: ``frechet.py`` (statistics and distance, shared with FVD), ``inception.py`` (the network);
here the weights, the batching of frames and :func:`fid_between`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..errors import InputError, WeightsError
from .frechet import (_psd_sqrt, feature_statistics, frechet_distance, frechet_distance_of_features,  # noqa: F401
                      trace_sqrt_product)
from .inception import (FEATURES, INPUT_SIZE, RESIZE_MODES, BasicConv2d, FIDInceptionV3,  # noqa: F401
                        resize_tf1_bilinear)

COMPONENT = "fid-inception"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"  # torch.hub convention: the name carries the sha256's first hex digits


def missing_message(component: str) -> str:
    return f"the {component} model is not downloaded: run 'avatar weights download {component}'"


def load_inception(weights_dir: str | Path | None = None, device: str | torch.device = "cpu",
                   resize: str = "antialias", check_hash: bool = True) -> FIDInceptionV3:
    """The FID network with the ``fid-inception`` weights.

    Args:
        weights_dir: a folder holding ``fid-inception/pt_inception-2015-12-05-6726825d.pth`` (what
            ``avatar weights download fid-inception --local-dir DIR`` writes); None = the installed
            manifest entry ($AVATAR_WEIGHTS_DIR or the Hugging Face cache).
        device: where the network runs.
        resize: "antialias" (torchmetrics' default) or "tf1" (torch-fidelity's).
        check_hash: check that the file's sha256 starts with ``6726825d`` (as pytorch-fid and
            torch-fidelity check it; the manifest has no full hash). False only for test weights.

    Raises:
        WeightsError: not downloaded (one line naming ``avatar weights download fid-inception``),
            a sha256 that does not start with ``6726825d``, or a file that is not a state dict of
            this network.
    """
    from ..weights import find_folder, sha256_file

    folder = find_folder(weights_dir, COMPONENT, COMPONENT)
    path = None if folder is None else Path(folder) / WEIGHTS_FILE
    if path is None or not path.is_file():
        raise WeightsError(missing_message(COMPONENT))
    if check_hash and not sha256_file(path).startswith(SHA256_PREFIX):
        raise WeightsError(f"{path}: its sha256 does not start with {SHA256_PREFIX} (the file name's hash); "
                           f"delete it and run 'avatar weights download {COMPONENT}' again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused or corrupt: one line
        raise WeightsError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    model = FIDInceptionV3(resize)
    load_strict(model, state, path)
    return model.to(device)


def load_strict(model: nn.Module, state: dict, source) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line WeightsError naming the first
    missing / unexpected keys instead of a traceback."""
    if not isinstance(state, dict):
        raise WeightsError(f"{source} is not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
        raise WeightsError(f"{source} does not fit {type(model).__name__}: {lines[0][:200]}"
                           f"{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}") from None


# =========================================================================== frames -> FID
def iter_frame_batches(frames, batch_size: int) -> Iterable[torch.Tensor]:
    """Batches of (n, 3, H, W) uint8 tensors from frames given as a uint8 (N, H, W, 3) array or
    tensor, or any iterable of (H, W, 3) frames or (n, H, W, 3) stacks. Consecutive frames of the
    same size share a batch.

    Raises:
        InputError: a frame that is not (H, W, 3) uint8.
    """
    pending: list[torch.Tensor] = []

    def flush():
        if pending:
            yield torch.stack(pending).permute(0, 3, 1, 2)
            pending.clear()

    def frames_of(item):
        t = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.require(item, requirements="W"))
        if t.dtype != torch.uint8 or t.shape[-1] != 3 or t.ndim not in (3, 4):
            raise InputError(f"frames must be uint8 (H, W, 3) RGB, got {t.dtype} {tuple(t.shape)}")
        return [t] if t.ndim == 3 else list(t)

    items = [frames] if isinstance(frames, (np.ndarray, torch.Tensor)) else frames
    for item in items:
        for frame in frames_of(item):
            if pending and (frame.shape != pending[0].shape or len(pending) >= batch_size):
                yield from flush()
            pending.append(frame)
    yield from flush()


@torch.no_grad()
def inception_features(frames, model: FIDInceptionV3, batch_size: int = 32) -> torch.Tensor:
    """(N, 2048) float64 Inception features of ``frames`` (see :func:`iter_frame_batches`)."""
    device = next(model.parameters()).device
    out = [model(batch.to(device)).double().cpu() for batch in iter_frame_batches(frames, batch_size)]
    if not out:
        raise InputError("no frames to compute FID features of")
    return torch.cat(out)


def fid_between(frames_a, frames_b, weights_dir: str | Path | None = None, *, model: FIDInceptionV3 | None = None,
                batch_size: int = 32, device: str | torch.device = "cpu", resize: str = "antialias") -> float:
    """FID between two sets of frames (e.g. a rendered video's and the real video's).

    Args:
        frames_a, frames_b: uint8 RGB frames, (N, H, W, 3) arrays/tensors or iterables of (H, W, 3)
            frames or (n, H, W, 3) stacks; at least 2 frames each (FID papers use thousands: with
            fewer frames than 2048 the covariances are singular and the value is biased upward).
        weights_dir: where ``fid-inception`` is (see :func:`load_inception`); ignored with ``model``.
        model: a loaded :class:`FIDInceptionV3` (reused across calls; tests pass random weights).
        batch_size: frames per network call.
        device: where the network runs when loaded here.
        resize: see :func:`load_inception`.

    Returns:
        FID (float, >= 0 up to rounding; 0 for identical sets).

    Raises:
        WeightsError: ``fid-inception`` not downloaded (names the download command).
        InputError: malformed frames or fewer than 2 frames in a set.
    """
    model = model if model is not None else load_inception(weights_dir, device, resize)
    return frechet_distance_of_features(inception_features(frames_a, model, batch_size),
                                        inception_features(frames_b, model, batch_size))
