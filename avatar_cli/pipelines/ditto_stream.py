"""Ditto's streaming render (its online mode), a mixin of :class:`~avatar_cli.pipelines.ditto.DittoPipeline`
(moved from ``pipelines/ditto.py``): speech chunks -> HuBERT windows as they arrive -> the DiT's online
windows (:class:`~avatar_cli.motion.windows.OnlineMotion`) -> MotionStitch -> warp, decode, paste, a render
batch at a time (DITTO notes sec. 7 and 10; antgroup/ditto-talkinghead ``stream_pipeline_online.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError
from ..media.paste import PasteBack
from ..motion.condition import AudioConditions, motion_to_vector, vector_to_motion
from ..motion.hubert_windows import num_frames
from ..options import RenderOptions
from .base import RenderStats

if TYPE_CHECKING:
    from .ditto import SourceState

STREAM_OVERLAP = 70  # Ditto's online cfg: 10 new frames per DiT window


class DittoStreamMixin:
    """Ditto's online mode for :class:`DittoPipeline` (which supplies ``check``, ``controls``, ``source_state``,
    ``encoder``, ``config``, ``models``, ``window_sampler``, ``stitcher``, ``render_infos``, ``render_batch``
    and ``warn``)."""

    @torch.no_grad()
    def stream(self, image: np.ndarray, audio_chunks: Iterable[np.ndarray], options: RenderOptions | None = None, *,
               stats: RenderStats | None = None, source: SourceState | None = None,
               face_box=None, **_) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Frames while the speech is still arriving (Ditto's online mode, DITTO notes sec. 7 and 10).

        Each audio chunk goes through :class:`StreamChunker` (6480-sample HuBERT windows every 3200
        samples) -> the encoder (5 feature frames per window) -> :class:`OnlineMotion` (its buffer
        prefilled with the features of ``overlap`` frames of silence; the first DiT window only anchors
        ``d0``, which becomes MotionStitch's relative-motion anchor; every later window gives ``valid =
        80 - overlap`` frames) -> MotionStitch (per-frame ``--controls`` by frame index) -> warp, decode and
        paste, ``render_batch`` frames at a time. Memory is flat in the stream's length: the chunker keeps
        < 6480 samples, OnlineMotion at most 160 feature and motion frames, no frame is kept.

        End of stream: the chunker's last windows are zero-padded (silence), OnlineMotion's last window is
        padded by repeating its last condition row and emits all it holds; the output is cut to
        ``ceil(samples / 16000 * 25)`` frames, the offline count (a stream shorter than ``valid`` frames gets
        windows of silence first, so that it is not all anchor). Every frame is a generated one (the last ones are
        generated from the speech's end and the silence after it), none is repeated.

        Args:
            image: (H, W, 3) uint8 portrait (both sides even).
            audio_chunks: float32 mono 16 kHz arrays of any length, consumed lazily.
            options: ``--motion-overlap`` must be 40..79 here (70 when not given, Ditto's online cfg): with
                a smaller overlap Ditto's online windows do not start at the first audio frame.
            face_box: (x, y, w, h) in ``image`` pixels, or None.

        Yields:
            (frames (n, H, W, 3) uint8, timestamps (n,) float64 seconds = frame index / 25).

        Raises:
            InputError: options that do not apply, no face found.
        """
        from ..motion.hubert_windows import WINDOW, StreamChunker, silence_features, window_features
        from ..motion.windows import OnlineMotion

        opts = options or RenderOptions(model="ditto")
        self.check(opts)
        self.use_compile(0, stream=True)  # only an explicit --compile: it would add to the first-frame delay
        ctl = self.controls(opts, stream=True)
        if ctl.overlap < 40:
            raise InputError(f"--stream needs --motion-overlap 40..79 (got {ctl.overlap}): Ditto's online windows "
                             f"fuse min(overlap, 80 - overlap) frames and start at the first audio frame only then")
        stats = stats or RenderStats.of(self)
        if source is None:
            with stats("crop"):
                source = self.source_state(image, face_box)
        cfg = self.config
        with stats("audio"):
            prefill = silence_features(self.encoder, ctl.overlap)
        conditions = AudioConditions(ctl.emotion, source.eye_open, source.eye_ball, source.motion["kp"],
                                     hold_last=ctl.hold_last)
        online = OnlineMotion(self.window_sampler(opts, stats), motion_to_vector(source.motion), conditions, prefill,
                              seq_frames=self.models.dit.null_cond_embed.shape[1], overlap=ctl.overlap,
                              fix_kp_cond=cfg.fix_kp_cond, fix_kp_cond_dim=cfg.fix_kp_cond_dim, smo_k=cfg.smo_k_d,
                              v_min_max=cfg.v_min_max_for_clip)
        stitcher = self.stitcher(source, -1, opts, ctl)
        paste = PasteBack(source.crop.M_c2o, image.shape[:2])
        chunker = StreamChunker()
        samples = 0
        done = 0  # frames yielded
        pending: list[np.ndarray] = []  # motion frames not yet rendered (< render_batch, or the tail)

        def render(rows: list[np.ndarray], limit: int | None):
            nonlocal done
            if limit is not None:
                rows = rows[: max(0, limit - done)]
            for n in range(0, len(rows), self.render_batch):
                batch = rows[n : n + self.render_batch]
                with stats("warp"):
                    infos = [stitcher(vector_to_motion(m), **ctl.per_frame.get(done + i, {}))
                             for i, m in enumerate(batch)]
                frames = self.render_infos(infos, source, image, paste, stats)
                times = (done + np.arange(len(frames))) / 25.0
                done += len(frames)
                yield frames, times

        pushed = 0  # feature frames given to OnlineMotion

        def motion_from(windows: list[np.ndarray], end: bool) -> list[np.ndarray]:
            nonlocal pushed
            with stats("audio"):
                feats = [window_features(self.encoder(w)) for w in windows]
                if end:  # a stream shorter than one window's new frames: Ditto's first window would only
                    # anchor d0 and emit nothing; add windows of silence so that a second window runs
                    while pushed + sum(len(f) for f in feats) <= online.valid:
                        feats.append(window_features(self.encoder(np.zeros(WINDOW, np.float32))))
            with stats("motion"):
                out = [online.push(f) for f in feats]
                pushed += sum(len(f) for f in feats)
                if end:
                    out.append(online.flush())
            if online.d0 is not None and stitcher.d0 is None:
                stitcher.d0 = online.d0  # the first window's first frame anchors the relative motion
            return [row for block in out for row in block]

        for chunk in audio_chunks:
            chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
            samples += len(chunk)
            pending += motion_from(chunker.push(chunk), end=False)
            ready = len(pending) - len(pending) % self.render_batch
            if ready:
                yield from render(pending[:ready], None)
                pending = pending[ready:]
        pending += motion_from(chunker.flush(), end=True)
        total = num_frames(samples)
        yield from render(pending, total)
        if done < total:  # not expected (OnlineMotion emits all it holds); say so rather than freeze a frame
            self.warn(f"note: the stream ended with {done} of {total} frames")
