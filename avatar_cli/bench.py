"""`avatar bench`: time the real render path (the same ``Pipeline.render_job`` as `render`).

For each model (or method): build the pipeline through :meth:`LoadOptions.load` (the cold start: model building or loading plus the
first render), then ``repeat`` warm renders of the same inputs into a temporary folder, and report
the median and the minimum of: RTF (wall seconds / video seconds), first-frame delay (start of
sampling to the first frames handed to the encoder), frames per second, seconds per stage and
"other" (wall minus the stages: pipeline overhead, shown, never hidden). Also: NFE, the model FLOPs
of one clip counted with ``torch.utils.flop_counter`` (TFLOP per video second and the achieved
TFLOP/s), peak memory (CUDA max allocated, or the CPU process's peak RSS), and the family's own
quality checks (``Pipeline.quality_checks``: with ``--decoder taesd`` the PSNR of TAESD's frames
against the full VAE decoder's on the same latents). Bench knows no family's internals.

The median is the upper median (one run's value; of an even number of runs, the slower of the two
middle ones), so the figures derived from the wall time agree with it whatever the runs' spread:
median RTF = median wall / video seconds, median fps = frames / median wall, and min fps = frames /
max wall (the slowest run).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import tempfile
import time
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .flops import BF16_PEAK_TFLOPS, bf16_peak_tflops, flop_counter_mode  # noqa: F401 (bench's API)
from .load_options import LoadOptions
from .options import RenderOptions, prepare_job


def synthetic_speech(path: Path, seconds: float, sample_rate: int = 16000, seed: int = 0) -> Path:
    """A speech-like test signal (voiced syllables: harmonics of a wandering pitch, 4 Hz envelope)
    written as 16-bit mono WAV. Speed does not depend on the sound; the file keeps runs reproducible."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    signal = 0.3 * voice * envelope + 0.01 * rng.standard_normal(t.shape)
    pcm = np.clip(signal / np.abs(signal).max() * 0.8 * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def synthetic_portrait(path: Path, size: int = 512) -> Path:
    """A smooth colour portrait-sized test image (PNG)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    face = np.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2) / 0.05)
    rgb = np.stack([0.4 + 0.5 * face, 0.3 + 0.4 * face, 0.5 - 0.2 * face], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: write 5 to /proc/self/clear_refs), so that each method
    of a multi-method bench reports its own peak. Returns False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset (VmHWM), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _summary(values: list[float]) -> dict:
    """{"median": the upper median (one run's value, ``statistics.median_high``), "min"}, rounded to
    1e-4. A figure that grows with the wall time (RTF) keeps the wall time's median run this way."""
    return {"median": round(statistics.median_high(values), 4), "min": round(min(values), 4)}


def bench(model: str = "osa-lcm", arch: str = "full", size: int = 512, seconds: float = 10.0,
          audio: str | Path | None = None, image: str | Path | None = None, device: str = "auto",
          dtype: str = "auto", decoder: str = "vae", compile: bool | None = None, repeat: int = 3,
          weights: str | Path | None = None, count_flops: bool = True, overlap: bool = True,
          log=lambda message: None, command: str | None = None, method: str | None = None,
          evaluate=None, load: "LoadOptions | None" = None, steps: int | None = None, render_batch: int = 0,
          cuda_graph: bool = False) -> dict:
    """Benchmark one model (and sampling method). Returns the report (see module docstring); times
    in seconds.

    Args:
        model: ``--model`` (shorthands such as adv-lcm accepted). method: ``--method`` override.
        arch: preset for random weights (when ``weights`` is None).
        seconds: synthetic speech length when ``audio`` is None. image: portrait (default synthetic).
        repeat: warm runs (median and min over them); the cold start is reported separately.
        count_flops: count one chunk's FLOPs (one extra, untimed chunk).
        log: progress notes. command: the command line to record (None: ``avatar`` + sys.argv).
        evaluate: ``video path -> dict`` run on the last warm render (``avatar bench --eval``: Sync-C /
            Sync-D of ``eval/run.py``); its result is the report's ``"eval"`` (None without).
        load: how to load the model (``load_options.py``); when given it replaces ``weights``, ``arch``,
            ``device``, ``dtype`` and ``compile``.
        steps: sampling steps (None: the method's; ``scripts/gpu-bench.sh`` runs Ditto at 10 and 5).
        render_batch, cuda_graph: Ditto's warp + decoder (``graph_renderer.py``); the report's ``"renderer"``
            says the batch used (None for other families).
    """
    if load is not None:
        dtype = load.dtype if load.requested_dtype is None else load.requested_dtype
    return bench_dtypes(model, arch, size, seconds, audio, image, device, [dtype], decoder, compile, repeat, weights,
                        count_flops, overlap, log, command, method, evaluate, load, steps, render_batch, cuda_graph)[0]


def bench_dtypes(model: str = "osa-lcm", arch: str = "full", size: int = 512, seconds: float = 10.0,
                 audio: str | Path | None = None, image: str | Path | None = None, device: str = "auto",
                 dtypes=("auto",), decoder: str = "vae", compile: bool | None = None, repeat: int = 3,
                 weights: str | Path | None = None, count_flops: bool = True, overlap: bool = True,
                 log=lambda message: None, command: str | None = None, method: str | None = None,
                 evaluate=None, load: "LoadOptions | None" = None, steps: int | None = None, render_batch: int = 0,
                 cuda_graph: bool = False) -> list[dict]:
    """Benchmark one model in each of ``dtypes`` (``avatar bench --dtype auto,float32``), rounds
    interleaved: every dtype's pipeline is loaded and cold-rendered first, then warm round i renders
    dtype A, dtype B, ... in turn, so that a change in the machine's load hits every dtype alike.

    Args:
        dtypes: ``--dtype`` values (``auto``, ``float32``, ``float16``, ``bfloat16`` or torch dtypes), each
            measured as given (``auto`` lets ``precision.py`` pick per network).
        load: when given, its weights, device and compile setting (its dtype replaced by each of ``dtypes``).
        the rest: as :func:`bench`.

    Returns:
        one report per dtype, in ``dtypes``' order (the keys of :func:`bench`, plus ``dtype_requested``:
        the ``--dtype`` as given). With several dtypes every pipeline stays loaded for the whole run, so
        ``peak_memory_scope`` is ``process``: the peak of all of them together.

    Raises:
        InputError: an unknown dtype or device (``LoadOptions.resolved``).
    """
    from . import __version__
    from .runtime import dtype_name

    import diffusers
    import transformers

    options = RenderOptions(model=model, method=method, size=size, decoder=decoder, overlap=overlap,
                            face_embedding="none", num_inference_steps=steps)
    label = options.model if options.method is None else f"{options.model}/{options.method_name}"
    base = load or LoadOptions(weights, weights is None, arch, device, "auto", compile, render_batch=render_batch,
                               cuda_graph=cuda_graph)
    loads = [replace(base, dtype=d, requested_dtype=None).resolved() for d in dtypes]
    names = [d if isinstance(d, str) else dtype_name(d) for d in dtypes]
    label_of = [f"{label} --dtype {n}" for n in names] if len(loads) > 1 else [label]
    dev = loads[0].device
    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        tmp = Path(tmp)
        audio_path = Path(audio) if audio else synthetic_speech(tmp / "speech.wav", seconds)
        image_path = Path(image) if image else synthetic_portrait(tmp / "portrait.png", size)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        reset = dev.type == "cuda" or reset_peak_rss()
        peak_scope = "method" if reset and len(loads) == 1 else "process"
        pipes, colds, load_ss, cold_start_ss = [], [], [], []
        for k, ld in enumerate(loads):
            cold_start = time.perf_counter()
            pipes.append(ld.load(options.model, method=options.method))
            load_ss.append(time.perf_counter() - cold_start)
            log(f"{label_of[k]}: models ready in {load_ss[-1]:.1f} s; cold render")
            job = prepare_job(image_path, audio_path, tmp / f"cold{k}.mp4", options)
            colds.append(pipes[-1].render_job(job))
            cold_start_ss.append(time.perf_counter() - cold_start)
        runs: list[list] = [[] for _ in loads]
        jobs: list = [None] * len(loads)
        for i in range(repeat):
            for k, pipe in enumerate(pipes):  # interleaved: A B A B ...
                log(f"{label_of[k]}: warm render {i + 1}/{repeat}")
                jobs[k] = prepare_job(image_path, audio_path, tmp / f"warm{k}-{i}.mp4", options)
                runs[k].append(pipe.render_job(jobs[k]))
        peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                else peak_rss_bytes())
        chunk_s = options.clip_frames / options.fps
        extras = []
        for k, pipe in enumerate(pipes):
            flops = None
            if count_flops:
                log(f"{label_of[k]}: counting the FLOPs of one chunk")
                flops = pipe.count_flops(jobs[k].image, options, chunk_s)
            checks = pipe.quality_checks(jobs[k].image, options)
            evaluation = None
            if evaluate is not None:
                log(f"{label_of[k]}: evaluating the last warm render")
                evaluation = evaluate(jobs[k].output)
            extras.append((flops, checks, evaluation, pipe.sampling_stage))

    reports = []
    for k, ld in enumerate(loads):
        flops, checks, evaluation, sampling = extras[k]
        report = _report(options, ld, runs[k], colds[k], load_ss[k], cold_start_ss[k], flops, chunk_s, checks,
                         evaluation, sampling, peak, peak_scope, size, decoder, repeat)
        report["dtype_requested"] = names[k]
        report["versions"] = {"avatar-cli": __version__, "torch": torch.__version__,
                              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                              "python": platform.python_version()}
        report["command"] = command if command is not None else " ".join(["avatar", *sys.argv[1:]])
        reports.append(report)
    return reports


def _report(options, load, runs, cold, load_s, cold_start_s, flops, chunk_s, checks, evaluation, sampling, peak,
            peak_scope, size, decoder, repeat) -> dict:
    """One (model, dtype)'s report from its runs (see the module docstring)."""
    from .runtime import dtype_name

    dev, dt, weights, arch = load.device, load.dtype, load.weights, load.arch
    video_s = runs[0].duration_s
    walls = [r.wall_s for r in runs]
    others = [r.wall_s - sum(r.stages.values()) for r in runs]
    stages = {stage: _summary([r.stages[stage] for r in runs]) for stage in runs[0].stages}
    stages["other"] = _summary(others)
    rtf = _summary([w / video_s for w in walls])
    ffd = [r.first_frame_delay_s for r in runs if r.first_frame_delay_s is not None]
    tflop_per_video_s = None if flops is None else flops / chunk_s / 1e12
    tflops = None if tflop_per_video_s is None else tflop_per_video_s / rtf["median"]
    device_name = _device_name(dev)
    peak_tflops = bf16_peak_tflops(device_name) if dev.type == "cuda" else None
    evaluations = runs[0].evaluations
    return {
        "model": options.model, "method": options.method_name, "arch": arch if weights is None else None,
        "weights": str(weights) if weights is not None else f"random:{arch}",
        "size": size, "video_fps": options.fps, "video_s": round(video_s, 4), "frames": runs[0].frames,
        "decoder": decoder, "repeat": repeat,
        "rtf": rtf, "wall_s": _summary(walls),
        "first_frame_delay_s": _summary(ffd) if ffd else None,
        # frames rendered per wall second, from the same runs as wall_s (fps falls as the wall time grows)
        "fps": {"median": round(runs[0].frames / statistics.median_high(walls), 4),
                "min": round(runs[0].frames / max(walls), 4)},
        "stages": stages,
        "nfe": runs[0].nfe,
        "evaluations": evaluations,
        "sampling_per_nfe_s": _summary([r.stages[sampling] / max(r.evaluations, 1) for r in runs]),
        "tflop_per_video_s": None if tflop_per_video_s is None else round(tflop_per_video_s, 4),
        "tflops_achieved": None if tflops is None else round(tflops, 4),
        "bf16_peak_tflops": peak_tflops,
        "tflops_share_of_peak": None if tflops is None or peak_tflops is None else round(tflops / peak_tflops, 4),
        "cold_start_s": round(cold_start_s, 4), "cold_render_s": round(cold.wall_s, 4), "load_s": round(load_s, 4),
        "peak_memory_bytes": int(peak), "peak_memory_scope": peak_scope,
        "taesd_psnr_db": checks.get("taesd_psnr_db"), **{k: v for k, v in checks.items() if k != "taesd_psnr_db"},
        "eval": evaluation,
        "device": device_name, "dtype": dtype_name(dt), "precision": runs[0].precision, "renderer": runs[0].renderer,
        "compiled": runs[0].compiled,
    }


def compare_dtypes(reports: list[dict]) -> dict:
    """The speed of one model's dtypes side by side (``avatar bench --dtype A,B``): each dtype's median
    fps and its ratio to the **first listed** dtype's (``fps_ratio``: fps / the first's fps, so > 1 is
    faster than the first; ``--dtype auto,float32`` gives float32's ratio to auto, and auto's speed-up
    over float32 is its inverse, ``first_speedup``).

    Args:
        reports: :func:`bench_dtypes`'s reports of one model, first listed first.

    Returns:
        ``{"compare": "dtype", "model", "method", "baseline": first dtype, "dtypes": [{"dtype" (as given),
        "run_dtype" (resolved), "precision", "fps", "rtf", "fps_ratio", "first_speedup"}]}`` (medians over the
        warm runs).
    """
    first = reports[0]["fps"]["median"]
    rows = []
    for r in reports:
        fps = r["fps"]["median"]
        rows.append({"dtype": r["dtype_requested"], "run_dtype": r["dtype"], "precision": r["precision"], "fps": fps,
                     "rtf": r["rtf"]["median"], "fps_ratio": round(fps / first, 4) if first else None,
                     "first_speedup": round(first / fps, 4) if fps else None})
    return {"compare": "dtype", "model": reports[0]["model"], "method": reports[0]["method"],
            "baseline": reports[0]["dtype_requested"], "dtypes": rows}


def plot(reports: list[dict], path: str | Path) -> None:
    """A PNG with each method's per-stage split of the median wall time and its RTF (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({r.get("dtype_requested") for r in reports}) > 1
    names = [r["model"] + (f"\n{r['dtype_requested']}" if several else "") for r in reports]
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(reports), 4.5))
    bottom = np.zeros(len(reports))
    for stage in reports[0]["stages"]:
        values = np.array([r["stages"][stage]["median"] for r in reports])
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    for i, r in enumerate(reports):
        ax.text(i, bottom[i], f"RTF {r['rtf']['median']:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"avatar bench: {reports[0]['device']}, {reports[0]['dtype']}, {reports[0]['size']} px, "
                 f"{reports[0]['video_s']:.1f} s video", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def bench_stream(model: str = "ditto", arch: str = "full", size: int = 512, seconds: float = 10.0,
                 audio: str | Path | None = None, image: str | Path | None = None, device: str = "auto",
                 dtype: str = "auto", repeat: int = 1, weights: str | Path | None = None,
                 log=lambda message: None, command: str | None = None, steps: int | None = None,
                 motion_overlap: int | None = None, load: "LoadOptions | None" = None, render_batch: int = 0,
                 cuda_graph: bool = False) -> dict:
    """``avatar bench --stream``: stream the speech at real-time pacing (``--realtime``: each 80 ms chunk
    handed over no earlier than its last sample's time) through ``pipeline.stream`` into the live writer
    (fragmented MP4), and measure what a viewer sees (``media/stream.py:render_stream``): first-frame delay
    (first audio chunk to first frames out), per-frame delay p50 / p95 (a frame's audio complete to the
    frame out), frames late (out after ``first frame out + i / 25``), RTF (wall / speech seconds). Median and
    min over ``repeat`` runs after one warm-up second of speech. Times in seconds.
    """
    from . import __version__
    from .media.image import load_portrait, load_source
    from .media.stream import pcm_chunks, render_stream
    from .models.catalog import MODELS
    from .runtime import dtype_name

    options = RenderOptions(model=model, size=size, face_embedding="none", num_inference_steps=steps,
                            motion_overlap=motion_overlap)
    options.validate()
    load = (load or LoadOptions(weights, weights is None, arch, device, dtype, render_batch=render_batch,
                                cuda_graph=cuda_graph)).resolved()
    dev, dt, weights, arch = load.device, load.dtype, load.weights, load.arch
    ditto = MODELS[options.model].family == "ditto"
    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        tmp = Path(tmp)
        audio_path = Path(audio) if audio else synthetic_speech(tmp / "speech.wav", seconds)
        image_path = Path(image) if image else synthetic_portrait(tmp / "portrait.png", size)
        picture = load_source(image_path) if ditto else load_portrait(image_path, size, options.fit)
        pipe = load.load(options.model, method=options.method)
        pipe.warn = log
        warm = synthetic_speech(tmp / "warm.wav", 1.0)
        log(f"{options.model} --stream: warm-up")
        render_stream(pipe, picture, pcm_chunks(warm), tmp / "warm.mp4", options)
        runs = []
        for i in range(repeat):
            log(f"{options.model} --stream: run {i + 1}/{repeat} at real-time pacing")
            runs.append(render_stream(pipe, picture, pcm_chunks(audio_path, realtime=True), tmp / f"run{i}.mp4",
                                      options))
    keys = ("first_frame_delay_s", "frame_delay_p50_s", "frame_delay_p95_s", "rtf", "wall_s")
    report = {"model": options.model, "method": options.method_name, "stream": True, "pacing": "realtime",
              "weights": str(weights) if weights is not None else f"random:{arch}",
              "frames": runs[0]["frames"], "video_s": runs[0]["duration_s"], "repeat": repeat,
              **{k: _summary([r[k] for r in runs if r[k] is not None]) for k in keys},
              "frames_late": _summary([r["frames_late"] for r in runs]),
              "device": _device_name(dev), "dtype": dtype_name(dt),
              "versions": {"avatar-cli": __version__, "torch": torch.__version__, "python": platform.python_version()},
              "command": command if command is not None else " ".join(["avatar", *sys.argv[1:]])}
    if ditto:
        report.update(pipe.describe(options, stream=True))
    return report
