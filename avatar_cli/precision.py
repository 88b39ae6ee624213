"""Number format and memory layout per network: which networks run in bf16 and channels_last where.

``runtime.py`` resolves one ``--dtype`` per run; this module refines it per network (issue 25):

- a :class:`NetworkPrecision` says how one network runs: its weights' dtype, an optional autocast
  dtype (``torch.autocast``: matrix products and convolutions in bf16, reductions and norms in fp32)
  and whether its 4-D activations use ``torch.channels_last``;
- :func:`policy` gives every network of a family its :class:`NetworkPrecision` for a device and a
  ``--dtype`` request. ``--dtype float32|float16|bfloat16`` is applied to every network as before
  (bit-identical fp32 path); ``auto`` on CUDA is today's run dtype; ``auto`` on a CPU is fp32 except for
  the networks listed in :data:`CPU_BF16_DEFAULT`, which run under bf16 autocast when the CPU computes
  bf16 natively (:func:`~avatar_cli.runtime.cpu_native_bf16`: AVX512-BF16 or AMX). A network enters
  :data:`CPU_BF16_DEFAULT` only when its output on the equivalence fixture is >= 40 dB (PSNR) from fp32
  (``scripts/bf16_quality.py``; numbers in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from .runtime import cpu_native_bf16, dtype_name

# Networks of each family, in the order a report lists them.
NETWORKS = {
    "ditto": ("appearance", "motion", "warp", "decoder", "stitch", "dit"),
    # the dual U-Net family (pipelines/unet.py): the speech encoder (wav2vec2 / Whisper), the VAE's encoder
    # (portrait, Hallo's motion frames), the reference net, the denoising U-Net and the latent decoders.
    # The projectors and the face locator are small and run in the run dtype.
    "unet": ("audio_encoder", "vae_encoder", "reference_net", "denoising_unet", "vae_decoder", "taesd"),
}
# Networks whose CPU default is bf16 autocast on a CPU with native bf16 (the 40 dB rule, docs/benchmarks.md).
# Ditto, fixture weights (scripts/bf16_quality.py): decoder frame 51.4 dB; the fixture's warp into a decoder of
# the same recipe 53.1 dB (warp in bf16), 48.9 dB (both). The appearance and motion extractors run once per
# portrait (no speed to gain) and their keypoints move by up to 0.05 in bf16: they stay fp32.
# The U-Net family (scripts/bf16_quality.py --family unet): the denoising U-Net's prediction on the Hallo and
# EchoMimic fixtures is 64 dB from fp32 (with the reference net in bf16 too), the VAE decoder's frame 48.3 dB,
# TAESD's 69.5 dB. The VAE encoder (the portrait, once) and the speech encoders (once per video) stay fp32.
CPU_BF16_DEFAULT: dict[str, frozenset[str]] = {
    "ditto": frozenset({"warp", "decoder"}),
    "unet": frozenset({"reference_net", "denoising_unet", "vae_decoder", "taesd"}),
}
# Networks kept in fp32 whatever --dtype says (Ditto's DiT, keypoints and stitching, as upstream).
ALWAYS_FP32 = {"ditto": frozenset({"stitch", "dit"})}
# Networks whose activations go channels_last when they run in bf16 on a CPU (4-D convolution stacks;
# measured faster there, docs/benchmarks.md). The warp network's 3-D volumes stay contiguous.
CHANNELS_LAST = {"ditto": frozenset({"decoder"}), "unet": frozenset({"vae_decoder", "taesd"})}


@dataclass(frozen=True)
class NetworkPrecision:
    """How one network runs.

    Attributes:
        dtype: its parameters' and inputs' dtype.
        autocast: ``torch.autocast`` dtype around its forward, or None.
        channels_last: its 4-D inputs (and so its convolutions' activations) in ``torch.channels_last``.
    """

    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None
    channels_last: bool = False

    def describe(self) -> str:
        """E.g. ``float32``, ``bfloat16`` (weights), ``bfloat16-autocast+channels_last``."""
        name = f"{dtype_name(self.autocast)}-autocast" if self.autocast is not None else dtype_name(self.dtype)
        return name + ("+channels_last" if self.channels_last else "")

    def context(self, device: torch.device):
        """``torch.autocast(device.type, self.autocast)`` or a null context."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this network's input dtype (and memory format for 4-D tensors)."""
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def apply(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast ``module``'s parameters to :attr:`dtype` (and channels_last weights); returns it."""
        module.to(dtype=self.dtype)
        to_channels_last(module, self.channels_last)
        return module


def to_channels_last(module: torch.nn.Module, on: bool = True) -> torch.nn.Module:
    """Put ``module``'s 4-D parameters (2-D convolution weights) in ``torch.channels_last`` (``on``) or
    back to contiguous, in place (``Module.to(memory_format=...)`` refuses modules that also hold 3-D or
    5-D weights)."""
    fmt = torch.channels_last if on else torch.contiguous_format
    for param in module.parameters():
        if param.dim() == 4 and not param.data.is_contiguous(memory_format=fmt):
            param.data = param.data.contiguous(memory_format=fmt)
    return module


def _float32_outputs(out, dtype: torch.dtype):
    """``out`` with its ``dtype`` tensors in float32, through tuples, lists and dict-like outputs (diffusers'
    ``BaseOutput`` and transformers' ``ModelOutput`` are updated in place)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == dtype else out
    if isinstance(out, dict):
        for key in list(out.keys()):
            out[key] = _float32_outputs(out[key], dtype)
        return out
    if type(out) in (tuple, list):
        return type(out)(_float32_outputs(x, dtype) for x in out)
    return out


def run_in_format(obj, method: str, prec: NetworkPrecision, device: torch.device) -> None:
    """Make ``obj.<method>`` (a module's ``forward``, or a method that runs one) run in ``prec``, in place.

    With an autocast dtype: floating tensor arguments go through :meth:`NetworkPrecision.input`, the call
    runs in :meth:`NetworkPrecision.context`, and tensors of the autocast dtype in the result come back
    in float32 (the run dtype around it), so the networks before and after it see what they see in fp32;
    ``obj``'s 4-D weights follow ``prec.channels_last``. Without one, the class's own method is restored
    (and the weights made contiguous again): the fp32 path is the unwrapped one, bit for bit.

    Args:
        obj: a ``torch.nn.Module`` or any object whose ``method`` runs a network (e.g. ``WhisperFeatures``).
        method: the attribute to wrap ("forward", "extract_features", "_encode_window").
        prec: the format.
        device: where it runs (the autocast device type).
    """
    import functools

    obj.__dict__.pop(method, None)  # the class's method again
    module = obj if isinstance(obj, torch.nn.Module) else None
    if prec.autocast is None:
        if module is not None and prec.dtype == torch.float32:
            to_channels_last(module, False)
        return
    if module is not None:
        to_channels_last(module, prec.channels_last)
    original = getattr(obj, method)

    @functools.wraps(original)
    def run(*args, **kwargs):
        args = tuple(prec.input(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        with prec.context(device):
            out = original(*args, **kwargs)
        return _float32_outputs(out, prec.autocast)

    obj.__dict__[method] = run  # an instance attribute: nn.Module.__call__ looks up self.forward


def policy(family: str, device: torch.device, dtype: torch.dtype, requested: str | torch.dtype = "auto",
           native_bf16: bool | None = None) -> dict[str, NetworkPrecision]:
    """Each network of ``family``'s :class:`NetworkPrecision` on ``device``.

    Args:
        family: a key of :data:`NETWORKS` ("ditto", "unet").
        device: where the networks run.
        dtype: the run dtype ``runtime.resolve_dtype`` gave (fp32 on a CPU for ``auto``).
        requested: the ``--dtype`` as given: only ``"auto"`` lets this policy pick bf16 on a CPU.
        native_bf16: whether the CPU computes bf16 natively; None: :func:`cpu_native_bf16`.

    Returns:
        network name -> :class:`NetworkPrecision` (networks in :data:`ALWAYS_FP32` are fp32).
    """
    nets = NETWORKS[family]
    keep = ALWAYS_FP32.get(family, frozenset())
    out = {n: NetworkPrecision() if n in keep else NetworkPrecision(dtype) for n in nets}
    if device.type == "cpu" and requested == "auto" and dtype == torch.float32:
        if native_bf16 is None:
            native_bf16 = cpu_native_bf16()
        if native_bf16:
            for n in CPU_BF16_DEFAULT.get(family, ()):
                out[n] = NetworkPrecision(torch.float32, torch.bfloat16, n in CHANNELS_LAST.get(family, ()))
    return out


def describe(precisions: dict[str, NetworkPrecision]) -> dict[str, str]:
    """network -> :meth:`NetworkPrecision.describe`, for the render / bench JSON's ``precision``."""
    return {n: p.describe() for n, p in precisions.items()}


def run_in(module: torch.nn.Module, args: tuple, mode: str, channels_last: bool = False):
    """Run ``module(*args)`` in a format, leaving the module as it was (for comparisons).

    Args:
        mode: "fp32", "autocast" (bf16 autocast, fp32 weights) or "weights" (module and inputs in bf16).
        channels_last: 4-D inputs and weights in channels_last.

    Returns:
        the module's output (bf16 tensors with ``weights``).
    """
    import copy

    net = copy.deepcopy(module)
    prec = {"fp32": NetworkPrecision(), "autocast": NetworkPrecision(torch.float32, torch.bfloat16, channels_last),
            "weights": NetworkPrecision(torch.bfloat16, None, channels_last)}[mode]
    prec.apply(net)
    args = tuple(prec.input(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with torch.no_grad(), prec.context(torch.device("cpu")):
        return net(*args)


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of ``a`` against ``b`` (same shape, values in [0, peak]); inf when equal."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)
