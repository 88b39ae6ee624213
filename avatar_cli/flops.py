"""Model FLOPs and the devices' peaks, for ``avatar bench`` and ``Pipeline.count_flops``: a module of its
own so that the pipelines and the bench both import it (no import circle between them).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; attention
4 B H L S D), extended with the CPU attention kernel it lacks.
"""

from __future__ import annotations

import torch


def _count_cpu_attention() -> None:
    """Give FlopCounterMode a formula for the CPU attention kernel, which it lacks (it counts the
    CUDA kernels only): the same 4 B H L S D as for those."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter_mode():
    """A ``FlopCounterMode`` (no display) that also counts attention on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    return FlopCounterMode(display=False)


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring
# (first match wins); the achieved TFLOP/s is reported as a share of these.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0))


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, or None (CPUs and unlisted GPUs)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None
