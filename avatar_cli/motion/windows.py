"""Windowing of Ditto's motion DiT (LMDM) over 80-frame windows: offline and streaming.

Re-implemented from Ditto's ``core/atomic_components/audio2motion.py`` (``Audio2Motion._fuse``, ``_smo``,
``_update_kp_cond``, ``cvt_fmt``), ``stream_pipeline_offline.py:_audio2motion_offline`` and
``stream_pipeline_online.py:_audio2motion_worker`` (antgroup/ditto-talkinghead @ e9191cf).

The DiT itself is a callable ``sample_window(cond (80, 1103), kp_cond (265,)) -> (80, 265)`` (one full
sampling run for one window), so the windowing is testable without a network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avatar_cli.motion.condition import MOTION_DIM, POSE_DIMS

SampleWindow = Callable[[np.ndarray, np.ndarray], np.ndarray]
CondFn = Callable[[np.ndarray, int], np.ndarray]


def smooth(seq: np.ndarray, start: int, end: int, k: int = 3) -> np.ndarray:
    """Centred moving mean over frames ``start..end-1`` of dims 0:202 (Ditto's ``Audio2Motion._smo``).

    The window (``k`` frames, ``k // 2`` each side) shrinks at the sequence edges; all means read the input
    as it was before the call. Dims 202: (expression) are untouched. ``k <= 1`` is a no-op.

    Args:
        seq: (n, 265) float32; modified in place and returned.
    """
    if k <= 1:
        return seq
    src = seq[:, :POSE_DIMS].copy()
    n = seq.shape[0]
    half = k // 2
    for i in range(start, end):
        seq[i, :POSE_DIMS] = src[max(0, i - half) : min(n, i + half + 1)].mean(0)
    return seq


def fuse(res: np.ndarray, pred: np.ndarray, *, seq_frames: int, valid: int, fuse_len: int) -> np.ndarray:
    """Cross-fade a new window into the result so far (Ditto's ``Audio2Motion._fuse``).

    The last ``fuse_len`` frames of ``res`` become ``res*(1-a) + pred[seq_frames-valid-fuse_len :
    seq_frames-valid]*a`` with ``a = arange(fuse_len)/fuse_len``; ``pred[seq_frames-valid:]`` (``valid``
    frames) is appended.

    Returns:
        (len(res) + valid, 265) float32 (a new array).
    """
    alpha = (np.arange(fuse_len, dtype=np.float32) / np.float32(fuse_len))[:, None]
    r2_end = seq_frames - valid
    out = res.copy()
    out[len(res) - fuse_len :] = res[len(res) - fuse_len :] * (1 - alpha) + pred[r2_end - fuse_len : r2_end] * alpha
    return np.concatenate([out, pred[r2_end:]], 0)


class _Windows:
    """The state Ditto's ``Audio2Motion`` keeps across windows: result so far, kp_cond, window counter."""

    def __init__(self, sample_window, kp_source, *, seq_frames, overlap, fuse_len, fix_kp_cond,
                 fix_kp_cond_dim, smo_k):
        if not 1 <= overlap < seq_frames:
            raise ValueError(f"overlap must be in 1..{seq_frames - 1}, got {overlap}")
        self.sample_window = sample_window
        self.seq_frames = seq_frames
        self.overlap = overlap
        self.valid = seq_frames - overlap
        self.fuse_len = fuse_len
        self.fix_kp_cond = fix_kp_cond
        self.fix_kp_cond_dim = fix_kp_cond_dim
        self.smo_k = smo_k
        self.kp_source = np.asarray(kp_source, dtype=np.float32).reshape(MOTION_DIM).copy()
        self.kp_cond = self.kp_source.copy()
        self.window_idx = 0

    def step(self, cond: np.ndarray, res: np.ndarray | None) -> np.ndarray:
        pred = np.asarray(self.sample_window(cond, self.kp_cond.copy()), dtype=np.float32)
        if pred.shape != (self.seq_frames, MOTION_DIM):
            raise ValueError(f"sample_window returned {pred.shape}, expected ({self.seq_frames}, {MOTION_DIM})")
        if res is None:
            res = smooth(pred.copy(), 0, self.seq_frames, self.smo_k)
        else:
            res = fuse(res, pred, seq_frames=self.seq_frames, valid=self.valid, fuse_len=self.fuse_len)
            n = len(res)
            res = smooth(res, n - self.valid - self.fuse_len, n - self.valid + 1, self.smo_k)
        self.window_idx += 1
        # kp_cond for the next window: the result frame just before the next window's first new frame.
        last = res[len(res) - self.overlap - 1]
        if self.fix_kp_cond > 0 and self.window_idx % self.fix_kp_cond == 0:
            self.kp_cond = self.kp_source.copy()
            if self.fix_kp_cond_dim is not None:
                ds, de = self.fix_kp_cond_dim
                self.kp_cond[ds:de] = last[ds:de]
        else:
            self.kp_cond = last.copy()
        return res


def _clip(seq: np.ndarray, v_min_max) -> np.ndarray:
    if v_min_max is None:
        return seq
    v = np.asarray(v_min_max, dtype=np.float32)
    return np.clip(seq, v[0], v[1])


def offline_motion(
    cond: np.ndarray,
    kp_source: np.ndarray,
    sample_window: SampleWindow,
    *,
    seq_frames: int = 80,
    overlap: int = 10,
    fix_kp_cond: int = 0,
    fix_kp_cond_dim: tuple[int, int] | None = None,
    smo_k: int = 3,
    v_min_max: np.ndarray | None = None,
) -> np.ndarray:
    """Motion for a whole clip: DiT windows, cross-fade fusion, smoothing (Ditto's offline path).

    Windows start at 0, valid, 2*valid, ... (valid = seq_frames - overlap) while start < N; a short last window
    is padded by repeating its last condition row. The first window is smoothed over all its frames; each
    later one is cross-faded over ``overlap`` frames (:func:`fuse`) and smoothed around the seam. After each
    window the next ``kp_cond`` is the result frame ``len(res) - overlap - 1``, or, with ``fix_kp_cond = k > 0``,
    every k-th window the source motion (with dims ``fix_kp_cond_dim = (ds, de)`` from that frame). Finally the
    result is cut to N frames and dims 0:202 smoothed once more over all frames, then optionally clipped
    to ``v_min_max[0] .. v_min_max[1]`` per dim.

    Args:
        cond: (N, 1103) float32 condition rows (:class:`~avatar_cli.motion.condition.AudioConditions`).
        kp_source: (265,) the source motion vector (:func:`~avatar_cli.motion.condition.motion_to_vector`).
        sample_window: ``(cond (seq_frames, 1103), kp_cond (265,)) -> (seq_frames, 265)``.
        v_min_max: Ditto's ``v_min_max_for_clip`` (4, 265); rows 0 and 1 are used.

    Returns:
        (N, 265) float32 motion vectors.
    """
    cond = np.asarray(cond, dtype=np.float32)
    n = len(cond)
    if n == 0:
        return np.zeros((0, MOTION_DIM), dtype=np.float32)
    win = _Windows(sample_window, kp_source, seq_frames=seq_frames, overlap=overlap, fuse_len=overlap,
                   fix_kp_cond=fix_kp_cond, fix_kp_cond_dim=fix_kp_cond_dim, smo_k=smo_k)
    res = None
    for start in range(0, n, win.valid):
        c = cond[start : start + seq_frames]
        if len(c) < seq_frames:
            c = np.concatenate([c, np.repeat(c[-1:], seq_frames - len(c), 0)], 0)
        res = win.step(c, res)
    res = smooth(res[:n].copy(), 0, n, smo_k)
    return _clip(res, v_min_max)


class OnlineMotion:
    """Streaming motion generation (Ditto's ``_audio2motion_worker`` with ``online_mode``).

    Feed HuBERT features as they come (:meth:`push`), then call :meth:`flush` at the end of the stream. The
    feature buffer starts with ``overlap`` frames of features of silence (:func:`avatar_cli.motion.hubert_windows.
    silence_features`), whose condition indices are ``-overlap .. -1``. New features are held until at least
    ``valid`` of them have arrived; then every full 80-frame window is sampled. The first window emits nothing:
    it only sets :attr:`d0` (the relative-motion anchor for :class:`~avatar_cli.motion.stitch.MotionStitch`)
    and the fusion state; each later window emits ``valid`` frames, the cross-faded tail of the previous one
    (fuse length ``min(overlap, valid)``). At the end of the stream the remaining features form one padded
    window that emits as many frames as the features it holds (context included), so Ditto emits more frames
    than audio frames; with ``num_frames`` the output is trimmed to that total. Buffers keep at most
    ``2 * seq_frames`` frames.

    Args:
        sample_window: ``(cond (seq_frames, 1103), kp_cond (265,)) -> (seq_frames, 265)``.
        kp_source: (265,) source motion vector.
        cond_fn: ``(audio (n, 1024), start_idx) -> (n, 1103)``, e.g. a
            :class:`~avatar_cli.motion.condition.AudioConditions`.
        prefill: (overlap, 1024) features of ``overlap * 640`` samples of silence.
        num_frames: total frames to emit (Ditto's ``num_f``), or None to emit all that Ditto emits.
        overlap: Ditto's ``overlap_v2`` (70 in the official online cfg).

    Attributes:
        d0: (265,) motion vector of the first frame of the first window (clipped like the output), or None.
        emitted: frames emitted so far.
    """

    def __init__(
        self,
        sample_window: SampleWindow,
        kp_source: np.ndarray,
        cond_fn: CondFn,
        prefill: np.ndarray,
        *,
        num_frames: int | None = None,
        seq_frames: int = 80,
        overlap: int = 70,
        fix_kp_cond: int = 0,
        fix_kp_cond_dim: tuple[int, int] | None = None,
        smo_k: int = 3,
        v_min_max: np.ndarray | None = None,
    ):
        valid = seq_frames - overlap
        self._win = _Windows(sample_window, kp_source, seq_frames=seq_frames, overlap=overlap,
                             fuse_len=min(overlap, valid), fix_kp_cond=fix_kp_cond,
                             fix_kp_cond_dim=fix_kp_cond_dim, smo_k=smo_k)
        self.cond_fn = cond_fn
        self.seq_frames = seq_frames
        self.valid = valid
        self.v_min_max = v_min_max
        self.num_frames = num_frames
        self.feats = np.asarray(prefill, dtype=np.float32).reshape(-1, prefill.shape[-1])
        self.cond_idx_start = -len(self.feats)
        self.pending = np.zeros((0, self.feats.shape[1]), dtype=np.float32)
        self.res: np.ndarray | None = None
        self.valid_start: int | None = None
        self.local_idx = 0
        self.global_idx = 0
        self.d0: np.ndarray | None = None
        self.emitted = 0
        self.ended = False

    def _emit(self, frames: np.ndarray) -> np.ndarray:
        if self.num_frames is not None:
            frames = frames[: max(0, self.num_frames - self.emitted)]
        self.emitted += len(frames)
        return _clip(frames, self.v_min_max)

    def _run(self, is_end: bool) -> np.ndarray:
        self.feats = np.concatenate([self.feats, self.pending], 0)
        self.pending = self.pending[:0]
        out = []
        while True:
            feat = self.feats[self.local_idx : self.local_idx + self.seq_frames]
            real_valid = self.valid
            if len(feat) == 0:
                break
            if len(feat) < self.seq_frames:
                if not is_end:
                    break
                real_valid = len(feat)
                feat = np.concatenate([feat, np.repeat(feat[-1:], self.seq_frames - len(feat), 0)], 0)
            cond = self.cond_fn(feat, self.global_idx + self.cond_idx_start)
            self.res = self._win.step(cond, self.res)
            self.local_idx += real_valid
            self.global_idx += real_valid
            if self.valid_start is None:  # first window: anchor only
                self.valid_start = len(self.res) - self._win.fuse_len
                self.d0 = _clip(self.res[0], self.v_min_max).copy()
                continue
            out.append(self._emit(self.res[self.valid_start : self.valid_start + real_valid].copy()))
            self.valid_start += real_valid
            if len(self.res) > 2 * self.seq_frames:
                cut = len(self.res) - 2 * self.seq_frames
                self.res = self.res[cut:]
                self.valid_start -= cut
            if self.local_idx >= len(self.feats):
                break
        if len(self.feats) > 2 * self.seq_frames:
            cut = len(self.feats) - 2 * self.seq_frames
            self.feats = self.feats[cut:]
            self.local_idx -= cut
        return np.concatenate(out, 0) if out else np.zeros((0, MOTION_DIM), dtype=np.float32)

    def push(self, features: np.ndarray) -> np.ndarray:
        """Add (n, 1024) features (one HuBERT chunk gives 5); returns the (k, 265) motion frames now ready."""
        if self.ended:
            raise RuntimeError("OnlineMotion.push after flush")
        self.pending = np.concatenate([self.pending, np.asarray(features, dtype=np.float32)], 0)
        if len(self.pending) < self.valid:
            return np.zeros((0, MOTION_DIM), dtype=np.float32)
        return self._run(is_end=False)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining (k, 265) motion frames (trimmed to ``num_frames`` in total if set)."""
        if self.ended:
            return np.zeros((0, MOTION_DIM), dtype=np.float32)
        self.ended = True
        return self._run(is_end=True)
