"""Ditto's warp + decoder at a fixed batch (issue 25): the batch sized by free GPU memory, and a
CUDA-graph renderer (``--cuda-graph``).

Ditto renders ``render_batch`` frames per warp + decoder call (``pipelines/ditto.py``). On CUDA with
``--render-batch 0`` (auto, the default) the batch is what fits in the free device memory: one probe
frame's peak activation bytes are measured (:func:`measure_frame_bytes`) and
:func:`render_batch_for_memory` turns them and the free bytes into a batch (``headroom`` of the free
memory, at most ``cap`` frames, at least one). On the CPU auto is :data:`DEFAULT_RENDER_BATCH`.

:class:`StaticRenderer` runs warp + decoder on static input buffers of ``batch`` frames: the source
features f_s (1, C, D, H, W) and keypoints x_s (1, 21, 3), copied in when the source changes, and the
driving keypoints x_d (batch, 21, 3), a partial last chunk padded with its last row and the output
trimmed. With ``capture=True`` (CUDA) the call is captured once into a ``torch.cuda.CUDAGraph`` after a
warm-up on a side stream (torch's "CUDA Graphs" notes, ``torch.cuda.graph``) and replayed per chunk,
which removes the per-kernel launch cost of the two networks' ~hundreds of small kernels; with
``capture=False`` the same static-buffer path runs eagerly, so that the CPU tests check it against the
default path. The output is copied out of the graph's static buffer, since the next replay overwrites
it while the paste-back of this chunk may still run (``render_loop.pipelined``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError

DEFAULT_RENDER_BATCH = 4  # frames per warp + decoder call where the batch is not sized by memory
MAX_RENDER_BATCH = 32
HEADROOM = 0.7  # share of the free device memory the batch's activations may take
WARMUP_CALLS = 3  # eager calls on a side stream before a capture (torch's CUDA-graph notes use 3)


def render_batch_for_memory(free_bytes: int, per_frame_bytes: int, default: int = DEFAULT_RENDER_BATCH,
                            cap: int = MAX_RENDER_BATCH, headroom: float = HEADROOM) -> int:
    """Frames per warp + decoder call whose activations fit ``headroom`` of ``free_bytes``.

    Args:
        free_bytes: device memory free for activations, bytes (:func:`free_device_bytes`).
        per_frame_bytes: peak activation bytes of one frame through warp + decoder, bytes
            (:func:`measure_frame_bytes`).
        default: returned when ``per_frame_bytes`` is not positive (nothing measured).
        cap: the most frames (beyond ~32 a bigger batch no longer raises a GPU's throughput).
        headroom: the share of ``free_bytes`` the batch may use (the rest: the allocator's
            fragmentation, the paste-back's frames, cuDNN workspaces).

    Returns:
        ``clamp(floor(free_bytes * headroom / per_frame_bytes), 1, cap)``.
    """
    if per_frame_bytes <= 0:
        return default
    return max(1, min(cap, int(free_bytes * headroom) // per_frame_bytes))


def free_device_bytes(device: torch.device) -> int:
    """Bytes a CUDA ``device`` can still give to tensors: the driver's free memory
    (``torch.cuda.mem_get_info``) plus what torch's caching allocator holds but no tensor uses."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def measure_frame_bytes(run_one: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on CUDA ``device`` by ``run_one()`` (one frame through warp + decoder)
    above what was allocated before it: ``torch.cuda.max_memory_allocated`` after a peak reset. The
    frame's fixed costs (cuDNN workspaces) are in it, so the estimate errs on the large side. The peak
    statistics are reset: a later ``max_memory_allocated`` (``avatar bench``'s peak) counts from here, with
    everything still allocated (the weights) in it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_one()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def size_render_batch(device: torch.device, run_one: Callable[[], object], default: int = DEFAULT_RENDER_BATCH,
                      cap: int = MAX_RENDER_BATCH) -> dict:
    """The render batch for ``device``: sized by free memory on CUDA, ``default`` elsewhere.

    Returns:
        {"render_batch", "sized_by": "memory" | "default", "per_frame_bytes", "free_bytes"} (the
        bytes are None where nothing was measured).
    """
    if device.type != "cuda":
        return {"render_batch": default, "sized_by": "default", "per_frame_bytes": None, "free_bytes": None}
    per_frame = measure_frame_bytes(run_one, device)
    free = free_device_bytes(device)
    return {"render_batch": render_batch_for_memory(free, per_frame, default, cap), "sized_by": "memory",
            "per_frame_bytes": per_frame, "free_bytes": free}


def check_renderer_options(device: torch.device, render_batch: int = 0, cuda_graph: bool = False,
                           compile: bool = False) -> None:
    """Refuse renderer flags that cannot run, before any model loads.

    Raises:
        InputError: ``--render-batch`` negative or above :data:`MAX_RENDER_BATCH`; ``--cuda-graph`` on a
            device that is not CUDA, or with ``--compile`` (torch.compile's own graphs and a capture of
            its kernels are not combined here: ``--compile`` alone already fuses the kernels).
    """
    if not 0 <= render_batch <= MAX_RENDER_BATCH:
        raise InputError(f"--render-batch must be 0..{MAX_RENDER_BATCH} (0: sized by free GPU memory on CUDA, "
                         f"{DEFAULT_RENDER_BATCH} on the CPU); got {render_batch}")
    if cuda_graph and compile:
        raise InputError("--cuda-graph and --compile exclude each other; pick one (--compile fuses the kernels, "
                         "--cuda-graph replays them without launch costs)")
    if cuda_graph and device.type != "cuda":
        raise InputError(f"--cuda-graph needs a CUDA GPU (the device is {device}); leave --cuda-graph out, "
                         f"or pass --device cuda on a machine with one")


class StaticRenderer:
    """Warp + decoder on static buffers of ``batch`` frames, captured as a CUDA graph when ``capture``.

    Args:
        render: ``(features (n, C, D, H, W), x_s (n, 21, 3), x_d (n, 21, 3)) -> renders (n, ...)``, the
            pipeline's warp + decoder (Ditto: ``(n, 512, 512, 3)`` float32 in [0, 255]); it must not
            synchronise with the host (no ``.item()``, no data-dependent shapes) when captured.
        batch: frames per call (the pipeline's ``render_batch``).
        capture: capture ``render`` into a ``torch.cuda.CUDAGraph`` on the first call and replay it
            (CUDA only); False: call ``render`` eagerly on the same static buffers (any device).

    Raises:
        ValueError: ``batch`` < 1, or ``capture`` with inputs not on a CUDA device (at the first call).
    """

    def __init__(self, render: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], batch: int,
                 capture: bool = False):
        if batch < 1:
            raise ValueError(f"batch must be >= 1 (got {batch})")
        self.render, self.batch, self.capture = render, batch, capture
        self.features: torch.Tensor | None = None  # (1, C, D, H, W)
        self.x_s: torch.Tensor | None = None  # (1, 21, 3)
        self.x_d: torch.Tensor | None = None  # (batch, 21, 3)
        self.output: torch.Tensor | None = None  # the captured graph's output
        self.graph = None
        self._source: tuple | None = None  # (features, x_s) whose values the buffers hold
        self.replays = 0  # graph replays (or eager calls) so far

    def _static_call(self) -> torch.Tensor:
        n = self.batch
        return self.render(self.features.expand(n, -1, -1, -1, -1), self.x_s.expand(n, -1, -1), self.x_d)

    def _buffers(self, features: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> None:
        """(Re)allocate the static buffers when a shape, dtype or device changes (a new capture then)."""
        layout = lambda t: (tuple(t.shape), t.dtype, t.device)  # noqa: E731
        wanted = (layout(features[:1]), layout(x_s[:1]), ((self.batch, *x_d.shape[1:]), x_d.dtype, x_d.device))
        if self.features is not None and (layout(self.features), layout(self.x_s), layout(self.x_d)) == wanted:
            return
        self.features = torch.empty_like(features[:1], memory_format=torch.contiguous_format)
        self.x_s = torch.empty_like(x_s[:1], memory_format=torch.contiguous_format)
        self.x_d = torch.empty((self.batch, *x_d.shape[1:]), dtype=x_d.dtype, device=x_d.device)
        self.graph, self.output, self._source = None, None, None

    def __call__(self, features: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """Render ``n <= batch`` frames.

        Args:
            features: f_s (1, C, D, H, W), the source's appearance features.
            x_s: (1, 21, 3) source keypoints.
            x_d: (n, 21, 3) driving keypoints, 1 <= n <= ``batch``; fewer rows are padded with the last one.

        Returns:
            the first ``n`` rows of ``render``'s output, a tensor of its own (not the static buffer).
        """
        n = x_d.shape[0]
        if not 1 <= n <= self.batch:
            raise ValueError(f"x_d has {n} frames; the static batch holds 1..{self.batch}")
        self._buffers(features, x_s, x_d)
        if self._source is None or self._source[0] is not features or self._source[1] is not x_s:
            self.features.copy_(features[:1])
            self.x_s.copy_(x_s[:1])
            self._source = (features, x_s)
        self.x_d[:n].copy_(x_d)
        if n < self.batch:  # pad with a real pose (zeros could give a degenerate warp); trimmed below
            self.x_d[n:].copy_(x_d[-1:].expand(self.batch - n, -1, -1))
        self.replays += 1
        if not self.capture:
            return self._static_call()[:n]
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.output[:n].clone()

    def _capture(self) -> None:
        """Warm up on a side stream, then capture one call (``torch.cuda.graph``)."""
        if self.x_d.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs CUDA tensors (got {self.x_d.device})")
        side = torch.cuda.Stream(self.x_d.device)
        side.wait_stream(torch.cuda.current_stream(self.x_d.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._static_call()
        torch.cuda.current_stream(self.x_d.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the paste-back and writer threads may run while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.output = self._static_call()
        self.graph = graph


class RendererSettings:
    """How a pipeline runs its warp + decoder (``--render-batch``, ``--cuda-graph``), and what the JSON
    reports of it (:meth:`describe`).

    The memory-sized batch is for offline renders only (:meth:`offline_batch`): a stream renders as soon
    as a few frames are ready, so a larger batch there would only add delay; it keeps the pipeline's
    ``render_batch`` (:data:`DEFAULT_RENDER_BATCH`, or the flag's).

    Args:
        device: the pipeline's device.
        render_batch: frames per call; 0: offline renders on CUDA sized by free memory (once, at the first
            render), :data:`DEFAULT_RENDER_BATCH` otherwise.
        cuda_graph: run warp + decoder through a :class:`StaticRenderer` per batch size.
        capture: with ``cuda_graph``, capture it as a CUDA graph (False: the static path eagerly, any device).

    Raises:
        InputError: see :func:`check_renderer_options`.
    """

    def __init__(self, device: torch.device, render_batch: int = 0, cuda_graph: bool = False, capture: bool = True):
        check_renderer_options(device, render_batch, cuda_graph and capture)
        self.device, self.requested, self.cuda_graph, self.capture = device, render_batch, cuda_graph, capture
        self.render_batch = render_batch or DEFAULT_RENDER_BATCH
        self.memory_batch: int | None = None  # the batch sized by free memory, once measured
        self.per_frame_bytes: int | None = None
        self.free_bytes: int | None = None
        self._static: dict[int, StaticRenderer] = {}

    @property
    def request(self) -> tuple[int, bool, bool]:
        """The arguments these settings were made from (to make them again, e.g. after a format change)."""
        return self.requested, self.cuda_graph, self.capture

    @property
    def sizes_by_memory(self) -> bool:
        """True where offline batches are sized by free memory: ``render_batch`` 0 on CUDA."""
        return self.requested == 0 and self.device.type == "cuda"

    def offline_batch(self, current: int, run_one: Callable[[], object]) -> int:
        """The batch of an offline render: on CUDA with ``render_batch`` 0, measured once with ``run_one()``
        (one frame through warp + decoder; :func:`size_render_batch`); otherwise ``current`` (the
        pipeline's ``render_batch``)."""
        if not self.sizes_by_memory:
            return current
        if self.memory_batch is None:
            sizing = size_render_batch(self.device, run_one)
            self.memory_batch = sizing["render_batch"]
            self.per_frame_bytes, self.free_bytes = sizing["per_frame_bytes"], sizing["free_bytes"]
        return self.memory_batch

    def static(self, render: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               batch: int) -> StaticRenderer:
        """The :class:`StaticRenderer` of ``render`` at ``batch`` frames (kept per batch size: an offline
        render and a stream each capture their own)."""
        if batch not in self._static:
            self._static[batch] = StaticRenderer(render, batch, self.cuda_graph and self.capture)
        return self._static[batch]

    def describe(self, current: int, stream: bool = False) -> dict:
        """The JSON's ``"renderer"``: {"render_batch" (the batch an offline render, or with ``stream`` a
        stream, uses; ``current``: the pipeline's), "sized_by" ("flag", "memory" or "default"),
        "per_frame_bytes" and "free_bytes" (measured, or None), "cuda_graph" (a captured graph),
        "static_buffers" (the static-buffer path, captured or not)}."""
        memory = not stream and self.memory_batch is not None
        sized_by = "memory" if memory else "flag" if self.requested else "default"
        return {"render_batch": self.memory_batch if memory else current, "sized_by": sized_by,
                "per_frame_bytes": self.per_frame_bytes if memory else None,
                "free_bytes": self.free_bytes if memory else None,
                "cuda_graph": self.cuda_graph and self.capture, "static_buffers": self.cuda_graph}
