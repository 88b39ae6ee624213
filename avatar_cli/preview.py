"""``--preview``: the fastest real path installed on this device, and what it will cost here.

Each candidate model (every installed one of ``AUTO_ORDER`` with ``--model auto``; else the one
named) gets its family's preview settings (:meth:`Pipeline.preview_options`: the U-Net family at
256 px with TAESD and at most 10 DDIM steps, Ditto with 5 DiT steps), then a quick calibration on
this device (:meth:`Pipeline.calibrate`: one clip's worth at the fewest steps, extrapolated from the
measured time per denoiser evaluation). The model with the least expected wall time per video
second renders. Calibrations are kept in ``$AVATAR_HOME/calibration.json``, keyed by model, weights,
settings, device, dtype, torch version and thread count, so the next preview only loads the winner.

Python use::

    from avatar_cli.preview import plan_preview
    plan = plan_preview(["ditto", "hallo"], job_for, load)   # see plan_preview's arguments
    plan.pipeline.render_job(plan.job)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .options import RenderJob, RenderOptions
from .pipelines import Pipeline, pipeline_class
from .models.catalog import MODELS
from .runtime import dtype_name
from .weights import avatar_home


@dataclass
class Candidate:
    """One model considered by ``--preview``.

    Attributes:
        model: the ``--model`` name.
        options: its preview options. settings: what the preview changed, in words.
        seconds_per_video_second: expected wall seconds per second of video (the RTF) on this device.
        once_s: the per-portrait work before the first clip (face, reference), seconds.
        cached: the estimate came from an earlier calibration (``calibration.json``), not this run.
    """

    model: str
    options: RenderOptions
    settings: str
    seconds_per_video_second: float
    once_s: float
    cached: bool

    def to_dict(self) -> dict:
        return {"model": self.model, "settings": self.settings, "method": self.options.method_name,
                "size": self.options.size, "decoder": self.options.decoder, "steps": self.options.steps,
                "expected_rtf": round(self.seconds_per_video_second, 4), "once_s": round(self.once_s, 3),
                "cached": self.cached}


@dataclass
class PreviewPlan:
    """The chosen model, ready to render: its pipeline, the job (inputs read at the preview's size)
    and every candidate's estimate, fastest first."""

    pipeline: Pipeline
    job: RenderJob
    chosen: Candidate
    candidates: list[Candidate]

    def expected_wall_s(self) -> float:
        """Expected seconds for this job's speech (once-per-portrait work included)."""
        seconds = self.job.waveform.shape[0] / 16000
        return self.chosen.once_s + self.chosen.seconds_per_video_second * seconds

    def to_dict(self) -> dict:
        return {**self.chosen.to_dict(), "expected_wall_s": round(self.expected_wall_s(), 2),
                "candidates": [c.to_dict() for c in self.candidates]}


def cache_path() -> Path:
    """Where calibrations are kept: ``$AVATAR_HOME/calibration.json``."""
    return avatar_home() / "calibration.json"


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def cache_key(model: str, source: str, options: RenderOptions, device: str, dtype: str) -> str:
    """What a calibration depends on: model, weights, the settings that change the work, device,
    dtype, torch version and CPU threads."""
    fields = (model, source, options.method_name, options.steps, options.size, options.decoder, options.fps,
              options.clip_frames, device, dtype, torch.__version__, torch.get_num_threads())
    return "|".join(str(f) for f in fields)


def kept_calibration(model: str, source: str, options: RenderOptions, device: str,
                     dtype: torch.dtype) -> dict | None:
    """The calibration kept for exactly these settings (``cache_key``), or None: what a render's
    progress display uses for its time left before anything is measured. ``source``: the
    pipeline's (``random:<arch>`` counts as "random", as :func:`plan_preview` keys it)."""
    source = "random" if source.startswith("random") else source
    entry = _read_cache().get(cache_key(model, source, options, device, dtype_name(dtype)))
    return entry if isinstance(entry, dict) and "seconds_per_video_second" in entry else None


def plan_preview(models: list[str], job_for: Callable[[RenderOptions], RenderJob],
                 load: Callable[[str], Pipeline], base: RenderOptions, explicit: frozenset[str] = frozenset(),
                 weights_of: Callable[[str], str | Path | None] = lambda model: None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32,
                 note: Callable[[str], None] = lambda message: None, recalibrate: bool = False) -> PreviewPlan:
    """Pick the fastest of ``models`` on this device at their preview settings.

    Args:
        models: candidate ``--model`` names (installed, or the one named).
        job_for: options -> the job's checked inputs at those options (the portrait is read at the
            preview's size).
        load: model name -> its pipeline (called for the models that need calibrating, and the winner).
        base: the user's render options; ``explicit``: the fields the user set (kept as given).
        weights_of: model -> its weights folder (None: random weights), where TAESD may lie.
        device, dtype: what the pipelines run on (part of the cache key).
        recalibrate: measure again even where a calibration is cached.

    Raises:
        InputError / WeightsError: from ``job_for`` and ``load``.
    """
    from dataclasses import replace

    cache = _read_cache()
    loaded: dict[str, Pipeline] = {}
    candidates: list[Candidate] = []
    jobs: dict[str, RenderJob] = {}
    device_name = str(device)
    for model in models:
        spec = MODELS[model]
        options = replace(base, model=model, method=base.method if model == base.model or "method" in explicit else None)
        options, settings = pipeline_class(spec.family).preview_options(options, explicit, weights_of(model))
        jobs[model] = job_for(options)
        source = str(weights_of(model) or "random")
        key = cache_key(model, source, options, device_name, dtype_name(dtype))
        if key in cache and not recalibrate:
            entry = cache[key]
            candidates.append(Candidate(model, options, settings, entry["seconds_per_video_second"],
                                        entry["once_s"], cached=True))
            continue
        note(f"note: --preview: calibrating {model} ({settings}) on {device_name}")
        pipe = loaded[model] = load(model)
        measured = pipe.calibrate(jobs[model], options)
        cache[key] = {**measured, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        candidates.append(Candidate(model, options, settings, measured["seconds_per_video_second"],
                                    measured["once_s"], cached=False))
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(cache, indent=1) + "\n")
        os.replace(partial, path)  # never a half-written cache
    except OSError:  # a read-only home: the calibration is simply not kept
        pass
    candidates.sort(key=lambda c: c.seconds_per_video_second)
    chosen = candidates[0]
    for model in list(loaded):
        if model != chosen.model:
            del loaded[model]  # free the others before rendering
    pipeline = loaded.get(chosen.model) or load(chosen.model)
    return PreviewPlan(pipeline, jobs[chosen.model], chosen, candidates)


def describe_plan(plan: PreviewPlan) -> str:
    """One line: what ``--preview`` chose, why, and the expected time on this device."""
    c = plan.chosen
    seconds = plan.job.waveform.shape[0] / 16000
    others = ", ".join(f"{o.model} {o.seconds_per_video_second:.3g} s" for o in plan.candidates[1:])
    why = f"fastest here; {others} per video second" if others else "the only candidate"
    measured = "calibrated earlier" if c.cached else "calibrated now"
    return (f"note: --preview: {c.model} with {c.settings} ({why}); expected {c.seconds_per_video_second:.3g} s "
            f"per video second on {plan.pipeline.device} ({measured}), about {plan.expected_wall_s():.0f} s for "
            f"these {seconds:.1f} s of speech")
