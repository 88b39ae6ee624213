"""Seconds per frame of Ditto's warp + decoder at full size in each format, interleaved (ratios hold under load).

Formats: fp32; bf16 autocast; bf16 autocast with the decoder in channels_last. Each round runs every
format once on the same inputs (random full-size weights, 1 frame), ``--rounds`` rounds; prints the
median wall seconds per format and the ratio to fp32 as JSON, and the process CPU seconds (both
threads; on a machine shared with other jobs the wall time also counts time slices given to them).

Usage: ``PYTHONPATH=. python scripts/bf16_speed.py [--rounds 3] [--batch 1]``; ``--family unet``: the dual
U-Net family's renders instead (``scripts/bf16_speed_unet.py``, its own options).
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

from avatar_cli.models.ditto import DittoModels  # noqa: E402
from avatar_cli.precision import NetworkPrecision  # noqa: E402

FORMATS = {
    "float32": (NetworkPrecision(), NetworkPrecision()),
    "bf16-autocast": (NetworkPrecision(autocast=torch.bfloat16), NetworkPrecision(autocast=torch.bfloat16)),
    "bf16-autocast, decoder channels_last": (NetworkPrecision(autocast=torch.bfloat16),
                                             NetworkPrecision(autocast=torch.bfloat16, channels_last=True)),
}


@torch.no_grad()
def main() -> None:
    if "--family" in sys.argv and sys.argv[sys.argv.index("--family") + 1:][:1] == ["unet"]:
        from bf16_speed_unet import main as unet_main

        return unet_main(sys.argv[1:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    models = DittoModels.from_preset("full", seed=0)
    import copy

    decoders = {}
    for name, (_, dec) in FORMATS.items():
        decoders[name] = dec.apply(copy.deepcopy(models.decoder)) if dec.channels_last else models.decoder
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(args.batch, 32, 16, 64, 64, generator=g)
    kp = 0.3 * torch.randn(args.batch, 21, 3, generator=g)
    cpu = torch.device("cpu")
    times = {name: {"warp": [], "decoder": [], "cpu": []} for name in FORMATS}
    for _ in range(args.rounds):
        for name, (warp_p, dec_p) in FORMATS.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            with warp_p.context(cpu):
                warped = models.warp(f_s, kp, kp * 1.02)
            mid = time.perf_counter()
            with dec_p.context(cpu):
                decoders[name](dec_p.input(warped))
            end = time.perf_counter()
            times[name]["cpu"].append((time.process_time() - cpu_start) / args.batch)
            times[name]["warp"].append((mid - start) / args.batch)
            times[name]["decoder"].append((end - mid) / args.batch)
    base = statistics.median([w + d for w, d in zip(times["float32"]["warp"], times["float32"]["decoder"])])
    base_cpu = statistics.median(times["float32"]["cpu"])
    report = {}
    for name, t in times.items():
        total = statistics.median([w + d for w, d in zip(t["warp"], t["decoder"])])
        report[name] = {"warp_s": round(statistics.median(t["warp"]), 3),
                        "decoder_s": round(statistics.median(t["decoder"]), 3),
                        "frame_s": round(total, 3), "speedup_vs_fp32": round(base / total, 3),
                        "frame_cpu_s": round(statistics.median(t["cpu"]), 3),
                        "cpu_speedup_vs_fp32": round(base_cpu / statistics.median(t["cpu"]), 3)}
    print(json.dumps({"rounds": args.rounds, "batch": args.batch, "threads": torch.get_num_threads(),
                      "formats": report}, indent=1))


if __name__ == "__main__":
    main()
