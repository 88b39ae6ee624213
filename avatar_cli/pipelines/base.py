"""What every model family's pipeline is, and the parts they share.

A family (``pipelines/unet.py``: the EMO/Hallo-style dual U-Net) subclasses :class:`Pipeline` and
supplies how to build its models (``from_pretrained`` / ``from_preset``), what to compute once per
job (``prepare``) and the frames (``generate``). Reading a job's media, timing (:class:`RenderStats`),
the video writer and mux, the temporary-file rule and the :class:`RenderResult` are shared here, so
``render``, ``batch``, ``bench`` and the Python API run any family the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import interrupt
from ..media.video import BackgroundWriter, VideoWriter
from ..options import RenderJob, RenderOptions, RenderResult, prepare_job
from ..progress import Progress
from ..runtime import dtype_name


@dataclass
class RenderStats:
    """Seconds per stage (CUDA-synchronised), network evaluations of the sampler, and the
    first-frame delay (start of the first chunk's sampling to its frames handed to the writer).

    Attributes:
        stages: stage name -> seconds; the family's stages plus "write".
        evaluations: denoiser evaluations over the video (U-Net or DiT), counted per batch element.
        progress: where the family reports its stages, denoiser evaluations and frames
            (``progress.py``; a silent one unless ``render_job`` is given one).
    """

    device: torch.device
    stages: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    sampling_started: float | None = None
    first_frame_at: float | None = None
    sampling_stage: str = "sampling"
    progress: Progress = field(default_factory=Progress)

    @classmethod
    def of(cls, pipeline: "Pipeline") -> "RenderStats":
        return cls(pipeline.device, dict.fromkeys(pipeline.stages, 0.0), sampling_stage=pipeline.sampling_stage)

    @property
    def first_frame_delay_s(self) -> float | None:
        if self.sampling_started is None or self.first_frame_at is None:
            return None
        return self.first_frame_at - self.sampling_started

    @contextmanager
    def __call__(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start
        if stage == self.sampling_stage and self.sampling_started is None:
            self.sampling_started = start


class Pipeline:
    """Portrait + speech -> talking-head frames: the interface every model family implements.

    Subclasses set :attr:`family` and :attr:`stages` and implement :meth:`from_pretrained`,
    :meth:`from_preset`, :meth:`generate`; they may override :meth:`check`, :meth:`prepare`,
    :meth:`describe` and :meth:`quality_checks`.

    Attributes:
        device, dtype: where and in which precision the networks run.
        source: where the weights came from ("random:<arch>" or a folder).
        warn: prints a one-line note (the CLI routes it to stderr, quiet with --quiet).
    """

    family: str = ""
    stages: tuple[str, ...] = ("audio", "write")
    sampling_stage: str = "sampling"  # the first-frame delay is measured from this stage's start

    def __init__(self, device: torch.device, dtype: torch.dtype, source: str = ""):
        self.device, self.dtype, self.source = device, dtype, source
        self.warn: Callable[[str], None] = lambda message: print(f"avatar: {message}", file=sys.stderr)

    # ------------------------------------------------------------ what a family provides
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        **kwargs) -> "Pipeline":
        raise NotImplementedError

    @classmethod
    def from_preset(cls, arch: str = "tiny", device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    seed: int = 0, **kwargs) -> "Pipeline":
        raise NotImplementedError

    def check(self, options: RenderOptions) -> None:
        """Raise :class:`InputError` when ``options`` cannot run with these weights."""

    def prepare(self, job: RenderJob, stats: RenderStats) -> dict:
        """Per-job work before :meth:`generate` (face conditions, precomputed features...): the
        keyword arguments it returns are passed to :meth:`generate`; "waveform" and "image", when
        present, replace the job's speech (separated vocals) and portrait (EchoMimic's face crop,
        same size)."""
        return {}

    def generate(self, image: np.ndarray, waveform: np.ndarray, options: RenderOptions | None = None, *,
                 on_progress: Callable[[int, int], None] | None = None, stats: RenderStats | None = None,
                 **inputs) -> Iterator[np.ndarray]:
        """Yield the video's frames, (n, H, W, 3) uint8, chunk by chunk as soon as each is ready;
        ``round(duration_s * fps)`` frames in all. ``on_progress(done, total)`` after each chunk."""
        raise NotImplementedError

    def stream(self, image: np.ndarray, audio_chunks, options: RenderOptions | None = None, *,
               stats: "RenderStats | None" = None, face_box=None, lip_box=None, side=None,
               **inputs) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Frames for speech that arrives in chunks: ``(frames (n, H, W, 3) uint8, timestamps (n,) seconds)``.

        This default is NOT incremental (the U-Net family generates clips from the whole clip's audio
        features): it collects every chunk (float32 mono 16 kHz arrays), runs :meth:`prepare` on the
        collected speech (``face_box``, ``lip_box`` in frame pixels and ``side``, as :class:`RenderJob`
        holds them), then yields
        :meth:`generate`'s chunks with their timestamps (frame index / fps). ``inputs`` go to
        :meth:`generate` as well. Ditto's pipeline overrides it with its online mode.
        """
        opts = options or RenderOptions()
        stats = stats or RenderStats.of(self)
        parts = [np.asarray(c, dtype=np.float32).reshape(-1) for c in audio_chunks]
        waveform = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        job = RenderJob(image, waveform, Path("-"), Path("-"), opts, face_box=face_box, lip_box=lip_box, side=side)
        inputs = {**self.prepare(job, stats), **inputs}
        done = 0
        image = inputs.pop("image", image)
        for frames in self.generate(image, inputs.pop("waveform", waveform), opts, stats=stats, **inputs):
            yield frames, (done + np.arange(len(frames))) / opts.fps
            done += len(frames)

    def describe(self, options: RenderOptions) -> dict:
        """Report fields of a render with ``options``: nfe (the method's denoiser evaluations per
        clip or window), num_inference_steps, guidance."""
        return {"nfe": options.sampling.nfe(options.steps), "num_inference_steps": options.steps,
                "guidance": options.guidance}

    def quality_checks(self, image: np.ndarray, options: RenderOptions) -> dict:
        """Extra measurements ``avatar bench`` reports for this family (e.g. a fast decoder's PSNR)."""
        return {}

    # ------------------------------------------------------------ --preview: settings and cost
    @classmethod
    def preview_options(cls, options: RenderOptions, explicit: frozenset[str] = frozenset(),
                        weights: str | Path | None = None) -> tuple[RenderOptions, str]:
        """The fastest settings of this family that still render a real face (``--preview``), and a
        few words saying what changed. Fields named in ``explicit`` (set by the user) are kept.
        ``weights``: the folder the weights come from (a fast decoder may lie beside them)."""
        return options, "its usual settings"

    def sampling_units_per_second(self, options: RenderOptions) -> float:
        """Sampler runs (U-Net clips, Ditto windows) per video second: ``fps / clip_frames`` here."""
        return options.fps / options.clip_frames

    def calibrate(self, job: RenderJob, options: RenderOptions | None = None) -> dict:
        """Expected wall seconds per video second of ``options`` on this device, measured, not assumed.

        One probe renders one sampler run's worth of silence (a U-Net clip; Ditto: one window's
        motion and one render batch) with the method's fewest steps, after the per-portrait work of
        :meth:`prepare` (reported apart as ``once_s``). The sampler's time per denoiser
        evaluation times the evaluations the real options make per video second
        (``describe()["nfe"]`` x :meth:`sampling_units_per_second`), plus every other stage's time
        per probe video second, is the estimate. Cost: about one clip at one step.

        Returns:
            {"seconds_per_video_second", "once_s" (per portrait), "per_evaluation_s",
            "probe_wall_s"}.
        """
        from dataclasses import replace

        opts = options or job.options
        fewest = opts.sampling.step_range[0]
        probe_opts = replace(opts, num_inference_steps=fewest, window_steps=None)
        seconds = self.probe_frames(opts) / opts.fps
        silence = np.zeros(int(round(seconds * 16000)), np.float32)
        probe = RenderJob(job.image, silence, Path("-"), Path("-"), probe_opts, face_box=job.face_box,
                          lip_box=job.lip_box, side=job.side)
        start = time.perf_counter()
        once = RenderStats.of(self)
        inputs = self.prepare(probe, once)
        stats = RenderStats.of(self)
        image = inputs.pop("image", job.image)
        frames = sum(len(f) for f in self.generate(image, inputs.pop("waveform", silence), probe_opts,
                                                    stats=stats, **inputs))
        probe_wall = time.perf_counter() - start
        per_evaluation = stats.stages.pop(self.sampling_stage, 0.0) / max(stats.evaluations, 1)
        evaluations = self.describe(opts)["nfe"] * self.sampling_units_per_second(opts)
        rest = sum(stats.stages.values()) / (frames / opts.fps)
        return {"seconds_per_video_second": per_evaluation * evaluations + rest, "once_s": sum(once.stages.values()),
                "per_evaluation_s": per_evaluation, "probe_wall_s": probe_wall}

    def probe_frames(self, options: RenderOptions) -> int:
        """Frames of the calibration probe: one clip."""
        return options.clip_frames

    def count_flops(self, image: np.ndarray, options: RenderOptions, seconds: float) -> int:
        """Model FLOPs of rendering ``seconds`` of silence after the portrait's once-per-video work
        (warm caches), counted by ``torch.utils.flop_counter`` (see ``flops.py``)."""
        from ..flops import flop_counter_mode

        silence = np.zeros(int(round(seconds * 16000)), np.float32)
        counter = flop_counter_mode()
        with counter:
            for _ in self.generate(image, silence, options):
                pass
        return counter.get_total_flops()

    # ------------------------------------------------------------ shared: files in, file out
    def render(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path,
               options: RenderOptions | None = None, overwrite: bool = False,
               on_progress: Callable[[int, int], None] | None = None,
               progress: Progress | None = None) -> RenderResult:
        """Render a video file: read the inputs, run :meth:`generate`, write and mux the mp4.
        ``on_progress(chunks_done, chunks_total)`` after each chunk; ``progress`` gets every stage,
        denoiser evaluation and frame (:class:`~avatar_cli.progress.Progress`).

        Raises:
            InputError: bad image, audio, output path or options (nothing is written).
            AvatarError: ffmpeg failed.
        """
        return self.render_job(prepare_job(image_path, audio_path, output_path, options, overwrite), on_progress,
                               progress)

    def render_job(self, job: RenderJob, on_progress: Callable[[int, int], None] | None = None,
                   progress: Progress | None = None) -> RenderResult:
        """Render a job whose inputs :func:`prepare_job` has read and checked: frames from
        :meth:`generate` go to the video writer (in a background thread with ``options.overlap``),
        the speech is muxed, and the temporary file is renamed when complete (removed on error).

        ``on_progress(chunks_done, chunks_total)`` is called after each chunk; ``progress`` receives
        the stages ("portrait", "audio features", "motion" / "sampling", "frames", "writing"), each
        denoiser evaluation and the frames written, with the time left (``progress.py``)."""
        opts = job.options
        self.check(opts)
        start = time.perf_counter()
        stats = RenderStats.of(self)
        if progress is not None:
            stats.progress = progress
        stats.stages[self.stages[0]] += job.image_s  # reading the portrait: the first stage's input
        stats.stages["audio"] += job.decode_s  # decoding the speech
        stats.progress.stage("portrait")
        inputs = self.prepare(job, stats)
        written = 0
        height, width = job.image.shape[:2]
        with VideoWriter(job.output, (width, height), opts.fps, audio_path=job.audio_path, crf=opts.crf) as writer:
            sink = BackgroundWriter(writer) if opts.overlap else None
            try:
                for frames in self.generate(inputs.pop("image", job.image), inputs.pop("waveform", job.waveform), opts,
                                            on_progress=on_progress, stats=stats, **inputs):
                    interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops here
                    if stats.first_frame_at is None:
                        stats.first_frame_at = time.perf_counter()
                    with stats("write"):  # with overlap: only the time the queue makes us wait
                        if sink:
                            sink.put(frames)
                        else:
                            writer.write(frames)
                    written += len(frames)
                    stats.progress.frames(written)
                stats.progress.stage("writing")
                with stats("write"):
                    if sink:
                        sink.close()
                    finish = time.perf_counter()
            except BaseException:
                if sink:
                    sink.abort()
                raise
        stats.stages["write"] += time.perf_counter() - finish  # ffmpeg finishing, mux, rename
        wall = time.perf_counter() - start + job.decode_s + job.image_s
        duration = written / opts.fps
        ffd = stats.first_frame_delay_s
        return RenderResult(
            output=str(job.output), frames=written, fps=opts.fps, duration_s=duration, width=width, height=height,
            model=opts.model, method=opts.method_name, **self.describe(opts), evaluations=stats.evaluations,
            stages={k: round(v, 4) for k, v in stats.stages.items()}, wall_s=round(wall, 4),
            first_frame_delay_s=None if ffd is None else round(ffd, 4), rtf=round(wall / duration, 4),
            device=str(self.device), dtype=dtype_name(self.dtype), seed=opts.seed, init=opts.init,
            weights=self.source,
        )
