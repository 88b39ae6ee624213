"""Device and dtype policy, shared by every model family and command.

``resolve_device("auto")`` picks CUDA when present; ``resolve_dtype("auto", device)`` picks bf16 (or
fp16) on CUDA and fp32 on the CPU (half precision on the CPU is many times slower there). Both
accept an already-resolved ``torch.device`` / ``torch.dtype`` unchanged, so a value is resolved
once (by the CLI or by the caller) and passed on as is.
"""

from __future__ import annotations

import torch

from .errors import InputError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu.

    Raises:
        InputError: an unknown name, or a CUDA device this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but this machine has no CUDA GPU (or torch is a CPU build); "
                         "use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA GPUs that support it (else float16), float32 on the CPU.

    Raises:
        InputError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be auto, float32, float16 or bfloat16 (got {dtype!r})")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).replace("torch.", "")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``'s ``flags``); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU computes bfloat16 natively: AVX512-BF16 (``avx512_bf16``) or AMX (``amx_bf16``).
    Without either, torch emulates bf16 matrix products in fp32 and gains nothing from it."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)
