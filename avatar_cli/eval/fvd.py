"""FVD: Fréchet Video Distance between two sets of videos (Unterthiner et al. 2018), with the I3D
detector StyleGAN-V's and LatentSync's evaluations use.

What StyleGAN-V computes (universome/stylegan-v @ 3fecd69, ``src/metrics/frechet_video_distance.py``
and ``metric_utils.py``): clips of 16 consecutive frames, uint8 (B, 3, T, H, W), fed to the
TorchScript detector ``i3d_torchscript.pt`` with ``rescale=True, resize=True,
return_features=True``: resized to 224x224 per frame, mapped to [-1, 1], and the 400 Kinetics
logits before the softmax taken as features; then mean, covariance and the Fréchet distance (scipy
``sqrtm``) as for FID. LatentSync (bytedance/LatentSync @ a229c39, ``eval/fvd.py``, ``eval/eval_fvd.py``)
uses the same detector and distance on face crops resized to 224 (OpenCV INTER_AREA) but passes
frames in [0, 1] with ``rescale=False, resize=False``: its numbers are on another input scale
(``input_range="0,1"`` reproduces it).

The detector is the Inception-v1 I3D (Carreira and Zisserman 2017) with tf.hub's Kinetics-400
weights, scripted from hassony2/kinetics_i3d_pytorch's ``src/i3dpt.py`` (the archive's classes are
``__torch__.src.i3dpt_jit.Unit3Dpy / Mixed / MaxPool3dTFPadding``). Loading TorchScript runs the
code serialized in it, so :class:`I3D` re-implements that network here (same parameter names:
``conv3d_1a_7x7.conv3d.weight``, ``mixed_3b.branch_1.0.batch3d.running_mean``, ...) and
:func:`read_torchscript_tensors` reads the archive's tensors without running anything: its
``data.pkl`` is unpickled with an allow-list (module objects become plain attribute records, tensors
are rebuilt from the ``data/`` records), and the tensors are loaded strictly.

Not verified (no copy of ``i3d_torchscript.pt`` could be read here): that the archive's tensor
names are exactly hassony2's names (a mismatch fails loudly, naming the keys), and the exact
interpolation of the detector's ``resize`` flag (taken as bilinear, align_corners=False, per frame).
``read_torchscript_code`` returns the archive's own forward code as text, to compare by eye.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from .fid import frechet_distance_of_features, load_strict, missing_message

COMPONENT = "fvd-i3d"
WEIGHTS_FILE = "i3d_torchscript.pt"
CLIP_FRAMES = 16
INPUT_SIZE = 224
NUM_CLASSES = 400

# Mixed blocks: (name, in channels, [branch 0, branch 1 reduce, branch 1, branch 2 reduce, branch 2,
# branch 3 pool projection]) as in the I3D paper's Inception-v1 (hassony2 i3dpt.py I3D.__init__)
MIXED = (
    ("mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: total max(k - s, 0) when s divides the size, else
    max(k - size % s, 0); the smaller half before (hassony2's ``get_padding_shape``, generalised
    to every axis)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads = [tf_same_pad(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
    return F.pad(x, flat) if any(flat) else x


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding (no bias) -> BatchNorm3d (eps 1e-3) -> ReLU; the logits layer
    has a bias and neither norm nor activation (hassony2 ``Unit3Dpy``; names ``conv3d``, ``batch3d``)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, stride=self.stride, bias=logits)
        if not logits:
            self.batch3d = nn.BatchNorm3d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.batch3d(x))


def max_pool_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Max pool with TF "SAME" padding, padded with zeros as hassony2's ``MaxPool3dTFPadding``
    (inputs are ReLU outputs, >= 0, so zeros never win over a real value), ``ceil_mode=True``."""
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride, ceil_mode=True)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool 3x3-1x1, concatenated (``branch_0``,
    ``branch_1.0/.1``, ``branch_2.0/.1``, ``branch_3.1``: the pool is ``branch_3.0``, no parameters)."""

    def __init__(self, cin: int, out: Sequence[int]):
        super().__init__()
        self.branch_0 = Unit3D(cin, out[0])
        self.branch_1 = nn.Sequential(Unit3D(cin, out[1]), Unit3D(out[1], out[2], (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(cin, out[3]), Unit3D(out[3], out[4], (3, 3, 3)))
        self.branch_3 = nn.Sequential(nn.Identity(), Unit3D(cin, out[5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3[1](pooled)], 1)


@dataclass(frozen=True)
class I3DConfig:
    """Network size. ``width`` scales every channel count (1 = the real network; smaller only for
    tests), ``input_size`` the side frames are resized to (224 = the real network; the final average
    pool covers the (input_size / 32)^2 map, 7x7 at 224)."""

    width: float = 1.0
    num_classes: int = NUM_CLASSES
    input_size: int = INPUT_SIZE

    def ch(self, c: int) -> int:
        return max(1, math.ceil(c * self.width))


class I3D(nn.Module):
    """Inception-v1 I3D, RGB stream, in hassony2's ``I3D`` parameter layout.

    ``forward`` takes (B, 3, T, S, S) float in [-1, 1] (S = ``config.input_size``, T >= 9; 16 for FVD)
    and returns the (B, num_classes) logits averaged over time: FVD's features.
    """

    def __init__(self, config: I3DConfig = I3DConfig()):
        super().__init__()
        self.config = c = config
        self.conv3d_1a_7x7 = Unit3D(3, c.ch(64), (7, 7, 7), (2, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(c.ch(64), c.ch(64))
        self.conv3d_2c_3x3 = Unit3D(c.ch(64), c.ch(192), (3, 3, 3))
        cin = c.ch(192)
        for name, _, out in MIXED:
            out = [c.ch(o) for o in out]
            setattr(self, name, Mixed(cin, out))
            cin = out[0] + out[2] + out[4] + out[5]
        self.conv3d_0c_1x1 = Unit3D(cin, c.num_classes, logits=True)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))                      # maxPool3d_2a_3x3
        x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))                      # maxPool3d_3a_3x3
        x = self.mixed_3c(self.mixed_3b(x))
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))                      # maxPool3d_4a_3x3
        for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
            x = getattr(self, name)(x)
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))                      # maxPool3d_5a_2x2
        x = self.mixed_5c(self.mixed_5b(x))
        side = self.config.input_size // 32
        x = F.avg_pool3d(x, (2, side, side), stride=1)                  # avg_pool (2, 7, 7)
        x = self.conv3d_0c_1x1(x)                                       # dropout: identity in eval
        return x.squeeze(4).squeeze(3).mean(2)


# =========================================================================== TorchScript archive
class _ScriptObject:
    """A TorchScript object (module) read from ``data.pkl``: its type name and attributes, no code."""

    type_name = ""

    @property
    def attributes(self) -> dict:
        return self.__dict__.setdefault("_attributes", {})

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.attributes.update(state)
        else:  # objects with a custom __getstate__ pickle a tuple or other value
            self.attributes["__state__"] = state


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


def _same(value, *rest):
    return value


# typed-container markers of scripted modules (torch/jit/_pickle.py: each returns its argument)
_JIT_PICKLE = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: ``__torch__.*`` classes become :class:`_ScriptObject`
    records, tensors are rebuilt from the archive's ``data/`` records; any other global (a pickle
    that would call code) is refused before anything runs."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, name: str):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.name = archive, root, name

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            type_name = f"{module}.{name}"

            return type("Record", (_ScriptObject,), {"type_name": type_name})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch.jit._pickle" and name in _JIT_PICKLE:
            return _same
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise WeightsError(f"refusing to load {self.name}: global '{module}.{name}' is not allowed "
                           f"(only module records and tensors are read)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsError(f"refusing to load {self.name}: unexpected persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise WeightsError(f"{self.name}: storage of unknown type {dtype!r}")
        raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        item = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * item:
            raise WeightsError(f"{self.name}: tensor record data/{key} is truncated")
        return torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def _archive_root(archive: zipfile.ZipFile, name: str) -> str:
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise WeightsError(f"{name} is not a TorchScript archive (no single <root>/data.pkl)")
    return roots[0]


def read_torchscript_tensors(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Every tensor attribute of a TorchScript archive's module tree, by dotted path, without running
    its code (``torch.jit.load`` would).

    Args:
        path: a ``torch.jit.save`` archive (a zip: ``<root>/data.pkl`` + ``<root>/data/<key>``).

    Returns:
        path -> tensor, e.g. ``"conv3d_1a_7x7.conv3d.weight"``, in the archive's order: the module's
        parameters and buffers as its ``state_dict()`` names them (``num_batches_tracked`` included).

    Raises:
        WeightsError: not a zip / not TorchScript, a global outside the allow-list, a truncated record.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise WeightsError(f"cannot read {path} as a TorchScript archive: {err}") from None
    with archive:
        root = _archive_root(archive, str(path))
        try:
            obj = _ArchiveUnpickler(archive.read(f"{root}/data.pkl"), archive, root, str(path)).load()
        except WeightsError:
            raise
        except Exception as err:  # noqa: BLE001 - corrupt pickle: one line
            raise WeightsError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def walk(node, prefix: str):
        for key, value in node.attributes.items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{key}.")

    if not isinstance(obj, _ScriptObject):
        raise WeightsError(f"{path}: data.pkl holds a {type(obj).__name__}, not a module")
    walk(obj, "")
    return out


def read_torchscript_code(path: str | Path) -> dict[str, str]:
    """The archive's serialized code (``<root>/code/**.py``) as text, file name -> source: to read,
    never to run (e.g. to check what the detector's ``rescale`` / ``resize`` flags do)."""
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, str(path))
        return {n[len(root) + 1:]: archive.read(n).decode("utf-8", "replace") for n in archive.namelist()
                if n.startswith(f"{root}/code/") and n.endswith(".py")}


def load_i3d(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> I3D:
    """The FVD detector with the ``fvd-i3d`` weights, read from ``i3d_torchscript.pt`` by
    :func:`read_torchscript_tensors` (its code is never run) and loaded strictly.

    Args:
        weights_dir: a folder holding ``fvd-i3d/i3d_torchscript.pt``; None = the installed manifest
            entry ($AVATAR_WEIGHTS_DIR or the Hugging Face cache).
        device: where the network runs.

    Raises:
        WeightsError: not downloaded (one line naming ``avatar weights download fvd-i3d``), not a
            TorchScript archive, or tensors that do not fit :class:`I3D` (names the keys).
    """
    from ..weights import find_folder

    folder = find_folder(weights_dir, COMPONENT, COMPONENT)
    path = None if folder is None else Path(folder) / WEIGHTS_FILE
    if path is None or not path.is_file():
        raise WeightsError(missing_message(COMPONENT))
    model = I3D()
    load_strict(model, dict(read_torchscript_tensors(path)), path)
    return model.to(device)


# =========================================================================== videos -> FVD
INPUT_RANGES = ("-1,1", "0,1")


def preprocess_clips(clips: torch.Tensor, size: int = INPUT_SIZE, input_range: str = "-1,1") -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) -> (B, 3, T, size, size) float32 detector input: each frame
    resized to size x size (bilinear, align_corners=False, no antialiasing: the detector's
    ``resize=True``), values 2 x / 255 - 1 (``rescale=True``; ``input_range="0,1"``: x / 255, as
    LatentSync feeds it)."""
    if input_range not in INPUT_RANGES:
        raise InputError(f"FVD input_range must be one of {', '.join(INPUT_RANGES)}, not {input_range!r}")
    b, t, h, w, _ = clips.shape
    x = clips.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x / 255.0
    if input_range == "-1,1":
        x = x * 2 - 1
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def video_clips(videos: Iterable, clip_frames: int = CLIP_FRAMES, clips: str = "all") -> list[torch.Tensor]:
    """16-frame clips of each video: ``clips="first"`` takes each video's first ``clip_frames`` frames
    (StyleGAN-V's generated videos; LatentSync takes frames 20-35), ``"all"`` every non-overlapping
    run of ``clip_frames`` (for one rendered video against one real video).

    Args:
        videos: uint8 (T, H, W, 3) arrays or tensors.

    Returns:
        (clip_frames, H, W, 3) uint8 tensors.

    Raises:
        InputError: a malformed video, or one shorter than ``clip_frames``.
    """
    if clips not in ("all", "first"):
        raise InputError(f"FVD clips must be 'all' or 'first', not {clips!r}")
    out = []
    for i, video in enumerate(videos):
        v = video if isinstance(video, torch.Tensor) else torch.from_numpy(np.require(video, requirements="W"))
        if v.dtype != torch.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise InputError(f"video {i}: FVD needs uint8 (T, H, W, 3) frames, got {v.dtype} {tuple(v.shape)}")
        if v.shape[0] < clip_frames:
            raise InputError(f"video {i} has {v.shape[0]} frames; FVD clips need {clip_frames}")
        count = 1 if clips == "first" else v.shape[0] // clip_frames
        out.extend(v[k * clip_frames:(k + 1) * clip_frames] for k in range(count))
    return out


@torch.no_grad()
def i3d_features(clips: Sequence[torch.Tensor], model: I3D, batch_size: int = 4,
                 input_range: str = "-1,1") -> torch.Tensor:
    """(N, num_classes) float64 detector features of uint8 (T, H, W, 3) clips (same T in a batch)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(clips), batch_size):
        batch = torch.stack(list(clips[start:start + batch_size]))
        x = preprocess_clips(batch, model.config.input_size, input_range).to(device)
        out.append(model(x).double().cpu())
    if not out:
        raise InputError("no clips to compute FVD features of")
    return torch.cat(out)


def fvd_between(videos_a, videos_b, weights_dir: str | Path | None = None, *, model: I3D | None = None,
                clip_frames: int = CLIP_FRAMES, clips: str = "all", batch_size: int = 4,
                input_range: str = "-1,1", device: str | torch.device = "cpu") -> float:
    """FVD between two sets of videos.

    Args:
        videos_a, videos_b: lists of uint8 (T, H, W, 3) videos (any size; frames are resized to 224).
        weights_dir: where ``fvd-i3d`` is (see :func:`load_i3d`); ignored with ``model``.
        model: a loaded :class:`I3D` (tests pass random weights).
        clip_frames: frames per clip (16, as StyleGAN-V and LatentSync).
        clips: "all" non-overlapping clips of every video (default), or "first" (one per video, as
            the papers over many videos). Each set needs at least 2 clips.
        batch_size: clips per detector call.
        input_range: "-1,1" (StyleGAN-V's rescale) or "0,1" (LatentSync's numbers).
        device: where the network runs when loaded here.

    Returns:
        FVD (float, >= 0 up to rounding; 0 for identical sets). Papers report it over hundreds or
        thousands of clips; with fewer clips than 400 the covariance is singular and the value biased.

    Raises:
        WeightsError: ``fvd-i3d`` not downloaded (names the download command).
        InputError: malformed or too short videos, or fewer than 2 clips in a set.
    """
    model = model if model is not None else load_i3d(weights_dir, device)
    feats = [i3d_features(video_clips(v, clip_frames, clips), model, batch_size, input_range)
             for v in (videos_a, videos_b)]
    return frechet_distance_of_features(*feats)
