"""EchoMimic's context windows: the whole video's latents denoised at once, window by window.

EchoMimic (antgroup/echomimic, ``src/pipelines/pipeline_echo_mimic.py`` and ``..._acc.py``) does
not chain clips with motion frames as Hallo does: every denoising step runs the U-Net over
overlapping windows of ``context_frames`` frames that cover all F frames of the video and
averages, per frame, the predictions of the windows that contain it. The windows come from
AnimateDiff's "uniform" context scheduler (EchoMimic's ``src/pipelines/context.py``, itself adapted
from the AnimateDiff CLI), re-implemented here:

- F <= context_size: one window, frames 0..F-1.
- else, for each context step c in 1, 2, 4, ... (``context_stride`` levels, at most
  ceil(log2(F / context_size)) + 1): windows start at j = int(h(step) c) + round(F h(step)) and
  advance by context_size c - context_overlap while j < F + pad (closed loop) or
  j < F + pad - context_overlap (open); window j holds frames (j + k c) mod F, k < context_size.
  h(step) is the "ordered halving" of the step number: its 64-bit binary representation read
  backwards as a fraction (0, 1/2, 1/4, 3/4, 1/8, ...).

Frames are taken modulo F, so the closed loop wraps: the last frames share windows with the first.

EchoMimic calls the scheduler once, with step 0 (so h = 0, no pad), ``context_stride=1`` and
``closed_loop=True`` (its default), context_frames 12, context_overlap 3 (``infer_audio2vid*.py``),
and at denoising step i shifts every window by 2 i frames modulo F: :func:`echomimic_windows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: EchoMimic's defaults (infer_audio2vid.py / infer_audio2vid_acc.py and the pipelines' __call__).
CONTEXT_FRAMES = 12
CONTEXT_OVERLAP = 3
CONTEXT_STRIDE = 1
SHIFT_PER_STEP = 2


def ordered_halving(step: int) -> float:
    """The step's 64-bit binary representation reversed, as a fraction of 2^64 (0, 0.5, 0.25, 0.75, ...)."""
    return int(f"{step:064b}"[::-1], 2) / (1 << 64)


def uniform_windows(step: int, num_frames: int, context_size: int, context_stride: int = 3,
                    context_overlap: int = 4, closed_loop: bool = True) -> list[list[int]]:
    """AnimateDiff's "uniform" context schedule for one step (EchoMimic ``src/pipelines/context.py``).

    Args:
        step: the step number that offsets the windows (EchoMimic always passes 0).
        num_frames: F, frames of the whole video.
        context_size: frames per window.
        context_stride: how many dilation levels (1, 2, 4, ...) to use, capped at
            ceil(log2(F / context_size)) + 1.
        context_overlap: frames shared by consecutive windows of one level.
        closed_loop: let the windows run past the end and wrap to the start.

    Returns:
        The windows, in order; each a list of frame indices in 0..F-1 (``context_size`` of them, or
        all F frames in one window when F <= context_size).

    Raises:
        ValueError: context_overlap >= context_size (the windows would not advance).
    """
    if num_frames <= context_size:
        return [list(range(num_frames))]
    if context_overlap >= context_size:
        raise ValueError(f"context_overlap {context_overlap} must be smaller than context_size {context_size}")
    levels = min(context_stride, math.ceil(math.log2(num_frames / context_size)) + 1)
    h = ordered_halving(step)
    pad = round(num_frames * h)  # Python's round (half to even), as upstream
    windows = []
    for level in range(levels):
        c = 1 << level
        end = num_frames + pad + (0 if closed_loop else -context_overlap)
        for j in range(int(h * c) + pad, end, context_size * c - context_overlap):
            windows.append([e % num_frames for e in range(j, j + context_size * c, c)])
    return windows


def echomimic_windows(step_index: int, num_frames: int, context_frames: int = CONTEXT_FRAMES,
                      context_overlap: int = CONTEXT_OVERLAP, context_stride: int = CONTEXT_STRIDE,
                      closed_loop: bool = True, shift_per_step: int = SHIFT_PER_STEP) -> list[list[int]]:
    """The windows EchoMimic's pipelines run at denoising step ``step_index`` (0 = first).

    :func:`uniform_windows` at step 0, every frame index shifted by ``shift_per_step * step_index``
    modulo F (``pipeline_echo_mimic.py``: ``(context[c_j][c_i] + t_i * 2) % video_length``). With
    F <= context_frames the one window is therefore a rotation of the frames (e.g. F = 10, step 1:
    2, 3, ..., 9, 0, 1): the U-Net sees them in that order, as in EchoMimic.

    Returns:
        list of windows, each a list of frame indices in 0..F-1.
    """
    base = uniform_windows(0, num_frames, context_frames, context_stride, context_overlap, closed_loop)
    shift = shift_per_step * step_index
    return [[(i + shift) % num_frames for i in window] for window in base]


def average_over_windows(model: Callable[["torch.Tensor", list[int]], "torch.Tensor"], latents: "torch.Tensor",
                         windows: list[list[int]]) -> "torch.Tensor":
    """Run ``model`` on each window's frames and average the predictions per frame.

    As EchoMimic's loop: a running sum and a per-frame counter, ``sum[:, :, w] += pred`` and
    ``count[:, :, w] += 1`` for each window w in order, then ``sum / count``.

    Args:
        model: (latents (B, C, f, h, w) of the window's frames, in the window's order; the window's
            frame indices) -> prediction of the same shape. It sees the frames of that window only
            (audio, masks etc. it must take from the indices).
        latents: (B, C, F, h, w).
        windows: frame-index lists covering every frame (e.g. :func:`echomimic_windows`).

    Returns:
        (B, C, F, h, w), in the dtype of the predictions.

    Raises:
        ValueError: a frame that no window covers (its average would be 0/0).
    """
    import torch

    total = None
    count = torch.zeros(latents.shape[2], device=latents.device)
    for window in windows:
        index = torch.tensor(window, device=latents.device)
        pred = model(latents[:, :, index], window)
        if total is None:
            total = torch.zeros(*latents.shape[:2], *latents.shape[2:], device=pred.device, dtype=pred.dtype)
        total[:, :, index] = total[:, :, index] + pred
        count[index] = count[index] + 1
    if total is None or bool((count == 0).any()):
        missing = [] if total is None else torch.nonzero(count == 0).flatten().tolist()[:5]
        raise ValueError(f"the context windows leave frames without a prediction (first: {missing})")
    return total / count.to(total.dtype)[None, None, :, None, None]


class WindowedDenoiser:
    """A denoiser over a whole video's latents made of denoisers over context windows, for
    :func:`~avatar_cli.sampling.methods.sample`.

    At sampling step k (its k-th call) the frames are split into the windows ``windows(k)`` (e.g.
    :func:`echomimic_windows`); each window's latents go through its own denoiser (``make(index)``,
    made once per distinct window) and every frame's prediction is the mean over the windows that
    hold it (:func:`average_over_windows`; EchoMimic's ``noise_pred / counter``).

    Args:
        make: frame indices -> a ``(latents (B, C, len, h, w), t) -> prediction`` denoiser, with an
            ``evaluations`` count where it has one (a ``GuidedDenoiser``).
        windows: step -> list of windows (lists of frame indices).

    Attributes:
        evaluations: denoiser evaluations so far, summed over windows (per batch element).
    """

    def __init__(self, make: Callable[[list[int]], Callable], windows: Callable[[int], list[list[int]]]):
        self.make, self.windows = make, windows
        self.step = 0
        self._denoisers: dict[tuple[int, ...], Callable] = {}

    @property
    def evaluations(self) -> int:
        return sum(getattr(d, "evaluations", 0) for d in self._denoisers.values())

    def __call__(self, latents: "torch.Tensor", t: int) -> "torch.Tensor":
        """latents (B, C, F, h, w) -> the averaged prediction, same shape.

        Raises:
            ValueError: a frame no window covers."""
        def run(x, window):
            key = tuple(int(i) for i in window)
            if key not in self._denoisers:
                self._denoisers[key] = self.make(list(key))
            return self._denoisers[key](x, t)

        out = average_over_windows(run, latents, self.windows(self.step))
        self.step += 1
        return out


def sample_over_windows(model: Callable[["torch.Tensor", int, list[int]], "torch.Tensor"], latents: "torch.Tensor",
                        scheduler, context_frames: int = CONTEXT_FRAMES, context_overlap: int = CONTEXT_OVERLAP,
                        context_stride: int = CONTEXT_STRIDE, closed_loop: bool = True,
                        shift_per_step: int = SHIFT_PER_STEP,
                        generator: "torch.Generator | None" = None) -> "torch.Tensor":
    """EchoMimic's denoising loop over a whole video: at step i, :func:`echomimic_windows` (i),
    :func:`average_over_windows`, then one ``scheduler.step``.

    Args:
        model: (window latents (B, C, f, h, w), t, window frame indices) -> prediction (e.g. v), the
            guidance already applied (EchoMimic averages each CFG branch over the windows and
            combines them after; the combination is affine with weights summing to 1 and every
            branch sees the same windows, so combining per window first gives the same result).
        latents: (B, C, F, h, w) at the first timestep (EchoMimic: N(0, I) clamped to [-1.5, 1.5]).
        scheduler: after ``set_timesteps`` (e.g. ``METHODS["echomimic-acc"]``'s).
        generator: passed to ``scheduler.step`` when it accepts one.

    Returns:
        (B, C, F, h, w), the latents after the last step.
    """
    from .methods import sample

    def windows(step: int) -> list[list[int]]:
        return echomimic_windows(step, latents.shape[2], context_frames, context_overlap, context_stride,
                                 closed_loop, shift_per_step)

    denoiser = WindowedDenoiser(lambda window: (lambda x, t: model(x, t, window)), windows)
    return sample(denoiser, latents, scheduler, generator)
