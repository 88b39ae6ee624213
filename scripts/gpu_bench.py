"""The prepared GPU benchmark behind ``scripts/gpu-bench.sh`` (issue 25): one JSON for one card.

Runs, on ``cuda`` in ``--dtype bfloat16`` (the DiT and stitching stay fp32) with random full-size
weights, each with a wall-clock budget (an entry that would start after ``BUDGET_S`` is recorded as
skipped, so the whole stays under about 8 minutes on one H100 / H200):

- ditto: 10 and 5 DiT steps offline (RTF, fps, first-frame delay, seconds per stage) with the warp +
  decoder batch sized by free GPU memory (``--render-batch 0``; each entry's ``"renderer"`` says the batch
  and the measured bytes per frame, ``ditto_render_batch`` the first one), ``--cuda-graph`` (warp + decoder
  replayed as a CUDA graph at that batch), ``--stream`` at real-time pacing (first-frame delay, per-frame
  delay p50 / p95), ``--compile`` (torch.compile of warp + decoder, compile time in the cold start), and
  last, when time is left, the former fixed batch of 4 for comparison;
- echomimic-acc, osa-lcm, fada at 512 px; hallo on a short clip (40 DDIM steps with CFG);
- peak GPU memory per entry (``torch.cuda.max_memory_allocated``), and the ``cuda``-marked tests.

Without a CUDA GPU it prints one line and exits 0. Usage: ``scripts/gpu-bench.sh [OUT.json]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 420.0  # start no new entry after 7 minutes
SECONDS = 4.0  # speech per entry (100 frames at 25 fps)

# (label, kind, keyword arguments of avatar_cli.bench.bench / bench_stream)
ENTRIES = [
    ("ditto-10-steps", "offline", dict(model="ditto", steps=10)),
    ("ditto-10-steps-cuda-graph", "offline", dict(model="ditto", steps=10, cuda_graph=True)),
    ("ditto-5-steps", "offline", dict(model="ditto", steps=5)),
    ("ditto-stream", "stream", dict(model="ditto")),
    ("ditto-10-steps-compile", "offline", dict(model="ditto", steps=10, compile=True)),
    ("echomimic-acc", "offline", dict(model="echomimic-acc")),
    ("osa-lcm", "offline", dict(model="osa-lcm")),
    ("fada", "offline", dict(model="fada")),
    ("hallo-short", "offline", dict(model="hallo", seconds=1.0)),
    ("ditto-10-steps-batch-4", "offline", dict(model="ditto", steps=10, render_batch=4)),
]


def entry_arguments(kind: str, kwargs: dict) -> dict:
    """The keyword arguments of ``avatar_cli.bench.bench`` (``kind`` "offline") or ``bench_stream``
    ("stream") for one entry: full size, ``SECONDS`` of speech, cuda, bfloat16, one warm run."""
    args = {"arch": "full", "size": 512, "seconds": SECONDS, "device": "cuda", "dtype": "bfloat16", "repeat": 1,
            **kwargs}
    if kind == "stream":
        args.pop("compile", None)
    else:
        args["count_flops"] = False
    return args


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-bench: no CUDA GPU here (torch.cuda.is_available() is False); nothing was run")
        return 0
    from avatar_cli import bench

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-bench.json")
    start = time.perf_counter()
    report = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "weights": "random, full size", "entries": {}}
    for label, kind, kwargs in ENTRIES:
        if time.perf_counter() - start > BUDGET_S:
            report["entries"][label] = {"skipped": "over the time budget"}
            continue
        kwargs = entry_arguments(kind, kwargs)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            if kind == "stream":
                entry = bench.bench_stream(**kwargs, command=f"gpu-bench {label}")
            else:
                entry = bench.bench(**kwargs, command=f"gpu-bench {label}")
        except Exception as error:  # one failing entry must not lose the others' numbers
            entry = {"error": f"{type(error).__name__}: {error}"}
        entry["entry_wall_s"] = round(time.perf_counter() - t0, 2)
        entry["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        report["entries"][label] = entry
        print(f"gpu-bench: {label} done in {entry['entry_wall_s']} s", file=sys.stderr)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    report["cuda_tests"] = {"returncode": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
    report["ditto_render_batch"] = (report["entries"]["ditto-10-steps"].get("renderer") or {}).get("render_batch")
    report["wall_s"] = round(time.perf_counter() - start, 2)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print(f"gpu-bench: wrote {out} ({report['card']}, {report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
