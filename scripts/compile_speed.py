"""torch.compile (inductor) on the CPU: compile time and seconds per frame against eager (issue 25).

Networks, full size, random weights (speed does not depend on weight values):

- ``ditto``: Ditto's warping network + SPADE decoder on one frame, in the format ``--dtype auto`` gives
  this CPU (``precision.policy``: bf16 autocast with the decoder channels_last where the CPU has native
  bf16, else fp32), and in fp32;
- ``vae``: the U-Net family's VAE decoder (diffusers ``AutoencoderKL.decoder``) on one 256 px frame's
  latents (1, 4, 32, 32), fp32.

For each: the eager seconds per frame (median of ``--rounds``), the first compiled call (compile + one
frame), the compiled seconds per frame after it, the max abs difference compiled vs eager, and the number
of frames after which compiling pays for itself (``compile_s / (eager - compiled)``; none when compiled
is not faster). ``fixture``: the quality of the compiled renderer in the ``auto`` format: the equivalence
fixture's warp into a decoder of the fixture's recipe (as ``scripts/bf16_quality.py``'s chain), compiled
and in bf16 autocast (decoder channels_last), against the eager fp32 frame: PSNR (dB, peak 1), beside the
eager bf16 frame's. Prints one JSON object.

Usage: ``PYTHONPATH=. python scripts/compile_speed.py [--nets fixture,ditto,vae] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar_cli.precision import policy  # noqa: E402


def timed(fn, rounds: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def measure(name: str, eager, compiled, rounds: int) -> dict:
    eager_times, ref = timed(eager, rounds)
    start = time.perf_counter()
    first = compiled()
    first_s = time.perf_counter() - start
    compiled_times, out = timed(compiled, rounds)
    eager_s, compiled_s = statistics.median(eager_times), statistics.median(compiled_times)
    compile_s = first_s - compiled_s
    gain = eager_s - compiled_s
    del first
    return {"network": name, "eager_s_per_frame": round(eager_s, 3), "first_compiled_call_s": round(first_s, 2),
            "compile_s": round(compile_s, 2), "compiled_s_per_frame": round(compiled_s, 3),
            "speedup": round(eager_s / compiled_s, 3),
            "frames_to_break_even": round(compile_s / gain, 1) if gain > 0 else None,
            "max_abs_diff": float((out.float() - ref.float()).abs().max())}


@torch.no_grad()
def ditto(rounds: int, fp32: bool) -> dict:
    import copy

    from avatar_cli.models.ditto import DittoModels

    models = DittoModels.from_preset("full", seed=0)
    cpu = torch.device("cpu")
    prec = policy("ditto", cpu, torch.float32, "float32" if fp32 else "auto")
    warp_p, dec_p = prec["warp"], prec["decoder"]
    decoder = dec_p.apply(copy.deepcopy(models.decoder))
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(1, 32, 16, 64, 64, generator=g)
    kp = 0.3 * torch.randn(1, 21, 3, generator=g)

    def run(warp, dec):
        with warp_p.context(cpu):
            warped = warp(f_s, kp, kp * 1.02)
        with dec_p.context(cpu):
            return dec(dec_p.input(warped))

    warp_c, dec_c = torch.compile(models.warp), torch.compile(decoder)
    label = "ditto warp+decoder " + ("float32" if fp32 else f"auto ({warp_p.describe()}, {dec_p.describe()})")
    return measure(label, lambda: run(models.warp, decoder), lambda: run(warp_c, dec_c), rounds)


@torch.no_grad()
def vae(rounds: int) -> dict:
    from diffusers import AutoencoderKL

    from avatar_cli.models.presets import PRESETS

    torch.manual_seed(0)
    decoder = AutoencoderKL(**PRESETS["full"]["vae"]).decoder.eval()  # sd-vae-ft-mse's shape
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(decoder)
    return measure("vae decoder 256 px float32", lambda: decoder(z), lambda: compiled(z), rounds)


@torch.no_grad()
def fixture() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bf16_quality import chain_networks

    from avatar_cli.precision import NetworkPrecision, psnr

    warp, decoder, args = chain_networks()  # the same chain as bf16_quality.py's
    ref = decoder(warp(*args)).clamp(0, 1)
    cpu = torch.device("cpu")
    warp_p, dec_p = NetworkPrecision(autocast=torch.bfloat16), NetworkPrecision(autocast=torch.bfloat16,
                                                                                channels_last=True)
    dec_p.apply(decoder)

    def frame(w, d):
        with warp_p.context(cpu):
            warped = w(*args)
        with dec_p.context(cpu):
            return d(dec_p.input(warped)).float().clamp(0, 1)

    eager = frame(warp, decoder)
    compiled = frame(torch.compile(warp), torch.compile(decoder))
    return {"network": "fixture warp+decoder, bf16 autocast (decoder channels_last)",
            "eager_psnr_db_vs_fp32": round(psnr(eager, ref), 2), "compiled_psnr_db_vs_fp32": round(psnr(compiled, ref), 2),
            "compiled_vs_eager_max_abs": float((compiled - eager).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nets", default="fixture,ditto,vae")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = []
    for net in args.nets.split(","):
        if net == "fixture":
            results.append(fixture())
        elif net == "ditto":
            results.append(ditto(args.rounds, fp32=False))
            results.append(ditto(args.rounds, fp32=True))
        elif net == "vae":
            results.append(vae(args.rounds))
        else:
            raise SystemExit(f"unknown network {net!r}: fixture, ditto or vae")
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
