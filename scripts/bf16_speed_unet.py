"""fp32 against the new ``--dtype auto`` default for the dual U-Net family, full size, random weights, 256 px,
interleaved in rounds (``scripts/bf16_speed.py --family unet`` runs this).

Two renders through the library (``UNetPipeline.generate``, the path ``avatar render`` takes): osa-lcm (one
step, one 16-frame clip, the VAE decoder) and echomimic-acc (one 12-frame context window, ``--echomimic-steps``
of its 6 steps, so that an idle 2-core machine runs the whole script in about 10 minutes). Each round renders
both formats of a model, in alternating order (fp32 first in odd rounds); per format the median wall and
process-CPU seconds of the render and of its stages (audio = the speech encoder, reference = VAE encoder and
reference net, sampling = the denoising U-Net, decode = the VAE decoder), the ratio to fp32, and the quality
of the new default at full size with torch-init random weights: the final frames' PSNR (peak 255) and the
final latents' max abs error against fp32. The formats are ``--dtype float32`` and ``--dtype auto`` with the
running CPU's native-bf16 flag (``runtime.cpu_native_bf16``; ``--native-bf16`` forces it on).

First the VAE decoder alone in fp32, bf16 autocast and bf16 autocast + channels_last (``--decoder-rounds``).

Usage: ``PYTHONPATH=. python scripts/bf16_speed.py --family unet [--rounds 2] [--models osa-lcm,echomimic-acc]``
(``--arch tiny``: the same at the tiny preset, a check of the script in seconds).
Prints one JSON object (also the load average before and after, ``os.getloadavg``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar_cli.options import RenderOptions  # noqa: E402
from avatar_cli.pipelines import load_pipeline  # noqa: E402
from avatar_cli.pipelines.base import RenderStats  # noqa: E402
from avatar_cli.precision import describe, psnr  # noqa: E402
from avatar_cli.runtime import cpu_native_bf16  # noqa: E402

SIZE = 256


def _render(pipe, image, wave, options, requested, native):
    pipe.set_precision(requested, native_bf16=native)
    stats, kept = RenderStats.of(pipe), []
    wall, cpu = time.perf_counter(), time.process_time()
    frames = np.concatenate(list(pipe.generate(image, wave, options, stats=stats, keep_latents=kept)))
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "stages": {k: v for k, v in stats.stages.items() if k != "write"}}, frames, kept[-1]


def measure(model: str, options: RenderOptions, seconds: float, rounds: int, native: bool, arch: str) -> dict:
    pipe = load_pipeline(model, random_weights=True, arch=arch, device="cpu", dtype="float32")
    pipe.warn = lambda message: None
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    runs = {"float32": [], "auto": []}
    outputs, formats = {}, {}
    for r in range(rounds):
        for requested in (("float32", "auto") if r % 2 == 0 else ("auto", "float32")):
            run, frames, latents = _render(pipe, image, wave, options, requested, native)
            runs[requested].append(run)
            outputs.setdefault(requested, (frames, latents))
            formats[requested] = describe(pipe.precision)
    pipe.set_precision("float32")
    report = {"frames": int(outputs["float32"][0].shape[0]), "formats": formats}
    base = {}
    for requested, rs in runs.items():
        row = {"wall_s": round(statistics.median(x["wall_s"] for x in rs), 2),
               "cpu_s": round(statistics.median(x["cpu_s"] for x in rs), 2),
               "stages_s": {k: round(statistics.median(x["stages"][k] for x in rs), 2) for k in rs[0]["stages"]}}
        base = base or row
        row["speedup_vs_fp32"] = round(base["wall_s"] / row["wall_s"], 3)
        row["cpu_speedup_vs_fp32"] = round(base["cpu_s"] / row["cpu_s"], 3)
        row["stage_speedup_vs_fp32"] = {k: round(base["stages_s"][k] / v, 3) if v else None
                                        for k, v in row["stages_s"].items()}
        report[requested] = row
    (f32, l32), (fa, la) = outputs["float32"], outputs["auto"]
    report["auto_vs_fp32"] = {"frame_psnr_db": round(psnr(torch.from_numpy(fa) / 255., torch.from_numpy(f32) / 255.), 2),
                              "max_abs_latents": round(float((la.float() - l32.float()).abs().max()), 4)}
    del pipe
    return report


def decoder_formats(arch: str, rounds: int) -> dict:
    """The VAE decoder alone (the preset's, random weights) on 4 latents of a 256 px frame in fp32, bf16 autocast
    and bf16 autocast + channels_last, interleaved: the channels_last choice of ``precision.CHANNELS_LAST``."""
    from diffusers import AutoencoderKL

    from avatar_cli.models.presets import preset
    from avatar_cli.precision import NetworkPrecision, run_in_format

    torch.manual_seed(0)
    vae = AutoencoderKL(**preset(arch)["vae"]).eval()
    z = torch.randn(4, 4, SIZE // 8, SIZE // 8)
    formats = {"float32": NetworkPrecision(), "bf16-autocast": NetworkPrecision(autocast=torch.bfloat16),
               "bf16-autocast+channels_last": NetworkPrecision(autocast=torch.bfloat16, channels_last=True)}
    times = {k: [] for k in formats}
    for _ in range(rounds):
        for name, prec in formats.items():
            run_in_format(vae.decoder, "forward", prec, torch.device("cpu"))
            wall, cpu = time.perf_counter(), time.process_time()
            vae.decode(z)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    run_in_format(vae.decoder, "forward", formats["float32"], torch.device("cpu"))
    base = statistics.median(t[0] for t in times["float32"])
    base_cpu = statistics.median(t[1] for t in times["float32"])
    return {name: {"wall_s": round(statistics.median(t[0] for t in ts), 3),
                   "speedup_vs_fp32": round(base / statistics.median(t[0] for t in ts), 3),
                   "cpu_speedup_vs_fp32": round(base_cpu / statistics.median(t[1] for t in ts), 3)}
            for name, ts in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="unet")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="osa-lcm,echomimic-acc")
    parser.add_argument("--echomimic-steps", type=int, default=1)
    parser.add_argument("--native-bf16", action="store_true", help="apply the native-bf16 policy on any CPU")
    parser.add_argument("--arch", default="full", help="full (the measurement) or tiny (a quick check of the script)")
    parser.add_argument("--decoder-rounds", type=int, default=3, help="rounds of the VAE-decoder-alone comparison")
    args = parser.parse_args(argv)
    native = True if args.native_bf16 else cpu_native_bf16()
    start, load = time.perf_counter(), os.getloadavg()
    cases = {"osa-lcm": (RenderOptions(model="osa-lcm", size=SIZE, seed=1, clip_frames=16), 16 / 25),
             "echomimic-acc": (RenderOptions(model="echomimic-acc", method="echomimic-acc", size=SIZE, seed=1,
                                             num_inference_steps=args.echomimic_steps), 12 / 25)}
    report = {"arch": args.arch, "size": SIZE, "rounds": args.rounds, "threads": torch.get_num_threads(), "native_bf16": native,
              "loadavg_before": [round(x, 2) for x in load], "models": {}}
    with torch.no_grad():
        report["vae_decoder_alone"] = decoder_formats(args.arch, args.decoder_rounds)
        for model in filter(None, args.models.split(",")):
            options, seconds = cases[model]
            report["models"][model] = measure(model, options, seconds, args.rounds, native, args.arch)
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["script_wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
