"""Seeded random weights for the metric networks, defined by key names and shapes only.

The same function makes the weights here and in the throwaway environment that recorded the
reference values (tests/data/README.md, "Metric references"), so the reference implementation
(torch-fidelity's InceptionV3) and ours run with identical weights without shipping them.
"""

from __future__ import annotations

import math

import torch


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 state dict for ``shapes`` (key -> shape), keys drawn in sorted order from one
    ``torch.Generator`` seeded ``seed``: conv / linear weights N(0, 2 / fan_in) (He, so that deep
    ReLU stacks keep their scale), biases and batch-norm shifts N(0, 0.1^2), batch-norm scales
    1 + N(0, 0.1^2), running means N(0, 0.1^2), running variances U(0.5, 1.5),
    ``num_batches_tracked`` 0."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        if leaf == "running_var":
            value = 0.5 + torch.rand(shape, generator=g)
        elif leaf == "weight" and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif leaf == "weight":  # batch-norm scale
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:  # bias, running_mean
            value = 0.1 * torch.randn(shape, generator=g)
        out[key] = value.float()
    return out


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """key -> shape of a module's state dict."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
