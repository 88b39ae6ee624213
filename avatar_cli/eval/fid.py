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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError

COMPONENT = "fid-inception"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"  # torch.hub convention: the name carries the sha256's first hex digits
INPUT_SIZE = 299
FEATURES = 2048
RESIZE_MODES = ("antialias", "tf1")


# =========================================================================== Fréchet distance
def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of a set of feature vectors, in float64.

    Args:
        features: (N, D) with N >= 2.

    Returns:
        (mu (D,), sigma (D, D)), sigma = sum (x - mu)(x - mu)^T / (N - 1) (``np.cov(rowvar=False)``).

    Raises:
        InputError: fewer than 2 vectors (a covariance needs two).
    """
    x = torch.as_tensor(features).to(torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"feature statistics need at least 2 feature vectors, got shape {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues < 0 from
    rounding are set to 0)."""
    values, vectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr((sigma1 sigma2)^(1/2)) for covariance matrices, in float64.

    sigma1 sigma2 is similar to A sigma2 A with A = sigma1^(1/2) (symmetric PSD), so the trace of
    its principal square root is the sum of the square roots of A sigma2 A's eigenvalues: two
    symmetric eigendecompositions, real throughout, where scipy's ``sqrtm`` (StyleGAN-V,
    clean-fid) and torchmetrics' ``eigvals`` work on the non-symmetric product.
    """
    a = _psd_sqrt(sigma1.to(torch.float64))
    m = a @ sigma2.to(torch.float64) @ a
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Dowson and Landau 1982;
    Heusel et al. 2017, eq. 6). Float64.

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances (tensors or arrays).

    Returns:
        The distance, >= 0 up to rounding (FID / FVD units: squared feature units).

    Raises:
        InputError: shapes do not agree.
    """
    mu1, mu2 = (torch.as_tensor(v).to(torch.float64).reshape(-1) for v in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s).to(torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape[0] != d or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InputError(f"Fréchet distance: mismatched shapes {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    mean_term = (mu1 - mu2).square().sum()
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_of_features(features_a, features_b) -> float:
    """:func:`frechet_distance` of the :func:`feature_statistics` of two feature sets.

    The covariances are sigma_a = A^T A and sigma_b = B^T B with A, B the centred features divided
    by sqrt(N - 1); the non-zero eigenvalues of sigma_a sigma_b are those of (A B^T)(A B^T)^T, so
    tr((sigma_a sigma_b)^(1/2)) is the nuclear norm of the (N_a, N_b) matrix A B^T and
    tr(sigma) = |A|_F^2. That gives the same value from an N_a x N_b SVD instead of two D x D
    eigendecompositions, exactly, also where the covariances are singular (fewer vectors than
    dimensions: a few hundred frames against 2048 Inception features), and 0 to rounding for a set
    against itself. It is used when cheaper (N_a N_b min(N_a, N_b) < 2 D^3; 300 frames against 300:
    0.1 s where the D x D path takes 17 s on a 2-core CPU).

    Args:
        features_a, features_b: (N_a, D) and (N_b, D), N >= 2.

    Raises:
        InputError: fewer than 2 vectors, or different D.
    """
    xa, xb = (torch.as_tensor(f).to(torch.float64) for f in (features_a, features_b))
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[1] != xb.shape[1]:
        raise InputError(f"feature sets of shapes {tuple(xa.shape)} and {tuple(xb.shape)} do not match")
    na, nb, d = xa.shape[0], xb.shape[0], xa.shape[1]
    if na * nb * min(na, nb) >= 2 * d ** 3:
        return frechet_distance(*feature_statistics(xa), *feature_statistics(xb))
    for x in (xa, xb):
        if x.shape[0] < 2:
            raise InputError(f"feature statistics need at least 2 feature vectors, got shape {tuple(x.shape)}")
    mu_a, mu_b = xa.mean(0), xb.mean(0)
    a = (xa - mu_a) / math.sqrt(xa.shape[0] - 1)
    b = (xb - mu_b) / math.sqrt(xb.shape[0] - 1)
    nuclear = torch.linalg.svdvals(a @ b.T).sum()
    return float((mu_a - mu_b).square().sum() + a.square().sum() + b.square().sum() - 2 * nuclear)


# =========================================================================== the network
class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (``Mixed_5b..d``)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (``Mixed_6a``): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b..e``)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (``Mixed_7a``)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (``Mixed_7b``, ``Mixed_7c``). The TensorFlow graph
    pools with an average in ``Mixed_7b`` and a max in ``Mixed_7c`` (``max_pool=True``), as
    pytorch-fid's FIDInceptionE_1 / _2 note."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], 1)


def resize_tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)``: output pixel i samples the input at
    ``i * in / out`` (no half-pixel offset), the upper neighbour clamped to the edge.

    Args:
        x: (N, C, H, W) float.
        size: output side.

    Returns:
        (N, C, size, size), same dtype.
    """
    def axis(n_in: int):
        pos = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), (pos - lo.float()).to(x.dtype)

    y0, y1, dy = axis(x.shape[2])
    x0, x1, dx = axis(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


class FIDInceptionV3(nn.Module):
    """The Inception-v3 graph FID uses (TensorFlow's 2015-12-05 Inception, 1008 classes), in the
    parameter layout of torch-fidelity's / pytorch-fid's InceptionV3.

    ``forward`` takes (N, 3, H, W) RGB in [0, 255] (uint8 or float) of any size and returns the
    (N, 2048) float32 pool features; ``logits`` the (N, 1008) class logits.

    Args:
        resize: "antialias" (torchmetrics' default) or "tf1" (torch-fidelity's TensorFlow 1.x resize).
        input_size: the side images are resized to: 299, the network's; a smaller side (>= 75) gives
            other features and exists only to make tests cheap.
    """

    def __init__(self, resize: str = "antialias", input_size: int = INPUT_SIZE):
        super().__init__()
        self.input_size = input_size  # 299 as trained; smaller (>= 75) only to make tests cheap
        if resize not in RESIZE_MODES:
            raise InputError(f"FID resize must be one of {', '.join(RESIZE_MODES)}, not {resize!r}")
        self.resize = resize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 255] -> (N, 3, 299, 299) in about [-1, 1]: resized, (x - 128) / 128."""
        x = images.to(self.fc.weight.dtype)
        size = self.input_size
        if self.resize == "antialias":
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        else:
            x = resize_tf1_bilinear(x, size)
        return (x - 128) / 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3)).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1008) class logits (the ``fc`` layer on :meth:`forward`'s features)."""
        return self.fc(self.forward(images).to(self.fc.weight.dtype))


# =========================================================================== loading
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
