"""Seeded random weights and the reduced configs of the Ditto equivalence fixture.

Used twice: once by the (throwaway, never committed) script that ran Ditto's own modules to record
``tests/data/ditto_tiny_io.safetensors``, and by the tests, which rebuild the same weights for the
project's modules. Only torch is imported here, so both environments can load this file.
"""

from __future__ import annotations

import math

import torch

# Reduced widths: the released structure (depths, kernel sizes, 21 keypoints, 66 bins) at small widths.
FIXTURE_CONFIG = {
    "appearance": dict(image_channel=3, block_expansion=8, num_down_blocks=2, max_features=32,
                       reshape_channel=4, reshape_depth=8, num_resblocks=2),
    "motion": dict(num_kp=21, depths=[1, 1, 2, 1], dims=[8, 16, 24, 32], num_bins=66),
    "warp": dict(num_kp=21, block_expansion=4, max_features=16, num_down_blocks=2, reshape_channel=4,
                 reshape_depth=4, dense_block_expansion=4, dense_max_features=16, dense_num_blocks=3,
                 compress=2),
    "decoder": dict(upscale=2, max_features=32, block_expansion=8, out_channels=8, num_down_blocks=2,
                    spade_hidden=16),
    "stitch": dict(input_size=126, hidden_sizes=[128, 128, 64], output_size=65),  # the released size
    "dit": dict(nfeats=12, seq_len=8, latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.1,
                cond_feature_dim=20),
}
FIXTURE_SEEDS = {"appearance": 1, "motion": 2, "warp": 3, "decoder": 4, "stitch": 5, "dit": 6}


def seeded_state_dict(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict layout (keys visited in sorted order, one generator).

    Conv/linear weights ~ N(0, 1/fan_in); biases, running means ~ 0.1 N(0, 1); 1-D norm weights
    ~ 1 + 0.1 N(0, 1); running variances ~ U(0.5, 1.5); GRN gamma/beta ~ 0.5 N(0, 1); null embeddings
    N(0, 1). Integer buffers and ``rotary.freqs`` keep the module's own values. Spectral-norm ``weight_u``
    / ``weight_v`` are 10 power iterations on ``weight_orig`` from random starts, so that sigma is the
    top singular value, as in a trained file.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(template):
        ref = template[key]
        shape, name = tuple(ref.shape), key.rsplit(".", 1)[-1]
        if not ref.dtype.is_floating_point or key.endswith("rotary.freqs"):
            out[key] = ref.detach().clone()
            continue
        randn = torch.randn(shape, generator=g)
        if name == "running_var":
            value = 0.5 + torch.rand(shape, generator=g)
        elif name in ("gamma", "beta"):
            value = 0.5 * randn
        elif name.startswith("null_cond"):
            value = randn
        elif name in ("bias", "running_mean", "weight_u", "weight_v"):
            value = 0.1 * randn
        elif len(shape) == 1:
            value = 1 + 0.1 * randn
        else:
            value = randn / math.sqrt(math.prod(shape[1:]))
        out[key] = value
    for key in [k for k in out if k.endswith(".weight_u")]:
        prefix = key[: -len("weight_u")]
        w = out[prefix + "weight_orig"].reshape(out[key].shape[0], -1)
        u, v = out[key], out[prefix + "weight_v"]
        for _ in range(10):
            v = torch.nn.functional.normalize(w.t() @ u, dim=0)
            u = torch.nn.functional.normalize(w @ v, dim=0)
        out[key], out[prefix + "weight_v"] = u, v
    return out


def checksum(state: dict[str, torch.Tensor]) -> float:
    """Sum of |w| over the floating tensors: the fixture records it to catch a change of RNG stream."""
    return float(sum(v.double().abs().sum() for v in state.values() if v.dtype.is_floating_point))
