"""FID's network: the TensorFlow Inception graph of 2015-12-05 restated in PyTorch (torch-fidelity 0.4's
``FeatureExtractorInceptionV3``, pytorch-fid's ``FIDInceptionA..E``), re-implemented (no code copied)
under torch-fidelity's parameter names, and TensorFlow 1.x's bilinear resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

INPUT_SIZE = 299
FEATURES = 2048
RESIZE_MODES = ("antialias", "tf1")


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
