"""Progress events of a render: which stage runs, how far it is, and the time left, from the first
measured step.

The library reports; a front end (the CLI's rich display, ``cli/common.py``) shows. A render goes
through these stages, in this order (a family skips those it has not):

| stage | what runs | unit of ``done`` / ``total`` |
|---|---|---|
| inputs | reading the portrait and the speech (the CLI) | - |
| models | building the networks, downloading the default model (the CLI) | - |
| portrait | once per portrait: face crop / face conditions, appearance features | - |
| audio features | wav2vec2 / Whisper / HuBERT over the speech | - |
| motion | Ditto's motion DiT over its 80-frame windows | DiT evaluations (2 per step with CFG) |
| sampling | the U-Net family's denoiser (per clip, or EchoMimic's context windows) | U-Net evaluations (per batch element) |
| frames | warp / decode / paste of the frames (Ditto, EchoMimic's windows) | frames |
| writing | the encoder finishing, the speech muxed, the file renamed | - |

The time left is measured, not assumed: the current stage's seconds per unit so far (per denoiser
evaluation in ``motion`` / ``sampling``, per frame in ``frames``) times its units left, plus the
stages declared ahead (:meth:`Progress.expect`) whose pace was measured or given. A stage ahead
whose pace is unknown makes the estimate ``partial`` (a lower bound); an expected total (e.g. a
kept ``--preview`` calibration, ``preview.py``) fills that gap.

Python use::

    from avatar_cli.progress import Progress
    result = pipe.render_job(job, progress=Progress(lambda event: print(event.stage, event.seconds_left)))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("inputs", "models", "portrait", "audio features", "motion", "sampling", "frames", "writing")


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a render's progress.

    Attributes:
        stage: the stage running now (one of :data:`STAGES`).
        done, total: units of the stage done and in all (total None: a stage without units).
        unit: what ``done`` counts ("evaluations", "frames" or "").
        frames_done, frames_total: video frames handed to the writer / in the video (None: not known yet).
        elapsed_s: seconds since the :class:`Progress` was made.
        seconds_left: expected seconds to the end of the render; None before the first measured step.
        partial: ``seconds_left`` leaves out stages ahead whose pace is not known yet (a lower bound).
    """

    stage: str
    done: int
    total: int | None
    unit: str
    frames_done: int
    frames_total: int | None
    elapsed_s: float
    seconds_left: float | None
    partial: bool = False


@dataclass
class _Stage:
    name: str
    total: int | None
    unit: str
    started: float | None = None
    done: int = 0
    seconds_per_unit: float | None = None  # measured when started and done > 0, or given ahead


class Progress:
    """Collects a render's progress and sends a :class:`ProgressEvent` to ``on_event`` at every
    change: a stage begins (:meth:`stage`), units of work end (:meth:`advance`), frames are done
    (:meth:`frames`). The cost is one small object and one call per event (per denoiser
    evaluation at most).

    Args:
        on_event: receives each event (None: bookkeeping only).
        expected_s: the render's expected seconds from now (e.g. a ``--preview`` calibration), used
            while stages ahead have no measured pace.
        clock: seconds, monotonic (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, on_event: Callable[[ProgressEvent], None] | None = None, expected_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.on_event = on_event
        self.clock = clock
        self.start = clock()
        self.expected_s = expected_s
        self.current: _Stage | None = None
        self.ahead: dict[str, _Stage] = {}
        self.frames_done = 0
        self.frames_total: int | None = None
        self.last: ProgressEvent | None = None

    # ------------------------------------------------------------ what a pipeline calls
    def stage(self, name: str, total: int | None = None, unit: str = "") -> None:
        """Begin stage ``name`` (``total`` units of ``unit``; a stage declared with :meth:`expect`
        keeps its declared total and pace when ``total`` is None)."""
        declared = self.ahead.pop(name, None)
        if declared is not None and total is None:
            total, unit = declared.total, declared.unit or unit
        self.current = _Stage(name, total, unit, started=self.clock(),
                              seconds_per_unit=None if declared is None else declared.seconds_per_unit)
        self._emit()

    def expect(self, name: str, total: int | None, unit: str = "", seconds_per_unit: float | None = None) -> None:
        """Declare a stage ahead of the current one with ``total`` units (for the time left);
        ``seconds_per_unit``: its pace where known (else the estimate is partial until it runs)."""
        self.ahead[name] = _Stage(name, total, unit, seconds_per_unit=seconds_per_unit)

    def advance(self, n: int = 1) -> None:
        """``n`` units of the current stage are done."""
        stage = self.current
        if stage is None:
            return
        stage.done += n
        stage.seconds_per_unit = (self.clock() - stage.started) / stage.done
        self._emit()

    def frames(self, done: int, total: int | None = None) -> None:
        """``done`` frames of ``total`` (None: unchanged) are ready."""
        self.frames_done = done
        if total is not None:
            self.frames_total = total
        self._emit()

    def expect_seconds(self, seconds: float) -> None:
        """The rest of the work is expected to take ``seconds`` from now (a calibration)."""
        self.expected_s = self.clock() - self.start + seconds

    def set_frames_total(self, total: int) -> None:
        """The video's frame count, once the speech is known (no event)."""
        self.frames_total = total

    # ------------------------------------------------------------ the estimate
    def seconds_left(self) -> tuple[float | None, bool]:
        """(expected seconds to the end, partial): see the module docstring."""
        stage, now = self.current, self.clock()
        measured, partial = None, False
        if stage is not None and stage.total is not None and stage.seconds_per_unit is not None and stage.done:
            measured = stage.seconds_per_unit * max(stage.total - stage.done, 0)
            for ahead in self.ahead.values():
                if ahead.total is None:
                    continue
                if ahead.seconds_per_unit is None:
                    partial = True
                else:
                    measured += ahead.seconds_per_unit * ahead.total
        if self.expected_s is not None:
            planned = max(self.expected_s - (now - self.start), 0.0)
            if measured is None or partial:
                return (planned if measured is None else max(measured, planned)), False
        return measured, partial

    def event(self) -> ProgressEvent:
        """The progress now, as an event."""
        stage = self.current
        left, partial = self.seconds_left()
        return ProgressEvent(stage.name if stage else "", stage.done if stage else 0, stage.total if stage else None,
                             stage.unit if stage else "", self.frames_done, self.frames_total,
                             self.clock() - self.start, left, partial)

    def _emit(self) -> None:
        if self.on_event is not None:
            self.last = self.event()
            self.on_event(self.last)


class CountedDenoiser:
    """A denoiser ``(latents, t) -> prediction`` that advances a :class:`Progress` by the
    evaluations each call makes (the wrapped denoiser's ``evaluations`` count, else ``per_call``).

    Args:
        denoiser: e.g. a :class:`~avatar_cli.sampling.guidance.GuidedDenoiser`.
        progress: advanced after every call.
        per_call: evaluations per call where the denoiser does not count them.
    """

    def __init__(self, denoiser: Callable, progress: Progress, per_call: int = 1):
        self.denoiser, self.progress, self.per_call = denoiser, progress, per_call

    @property
    def evaluations(self) -> int:
        return getattr(self.denoiser, "evaluations", 0)

    def __call__(self, *args, **kwargs):
        before = getattr(self.denoiser, "evaluations", None)
        out = self.denoiser(*args, **kwargs)
        after = getattr(self.denoiser, "evaluations", None)
        self.progress.advance(self.per_call if before is None else after - before)
        return out
