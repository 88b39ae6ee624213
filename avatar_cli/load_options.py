"""How a pipeline is loaded: one object that render, streaming, preview, batch, bench and the library
API pass around (issue 24), built once by the CLI from its flags.

``LoadOptions`` says *which weights and how to run them* (where from, random or not and of which
architecture, device, number format, compile); ``RenderOptions`` (``options.py``) says *what to
render*. ``LoadOptions.load(model)`` is :func:`avatar_cli.pipelines.load_pipeline` with these settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import InputError


@dataclass(frozen=True)
class LoadOptions:
    """Where a model's weights come from and how it runs.

    Attributes:
        weights: a weights folder (as ``save_pretrained`` / ``avatar weights convert`` write it); None =
            the installed weights of the model, or random ones with ``random_weights``.
        random_weights: build the real architecture with seeded random weights (tests, demos, speed).
        arch: the architecture of random weights: a preset name (``full``, ``tiny``), or a path to a JSON
            config of any width (``models/configs.py``; e.g. ``{"base": "tiny", "dit": {"latent_dim": 48}}``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        dtype: ``auto``, ``float32``, ``float16``, ``bfloat16`` or a ``torch.dtype``.
        compile: ``torch.compile`` the networks: True, False, or None (auto: ``compiling.py``'s measured
            policy; Ditto's warp and decoder for offline CPU renders of >= 100 frames, nothing else).
        add_cfg_layers: give weights without FADA's CFG-token layers zero-initialised ones.
        requested_dtype: the ``dtype`` as given before :meth:`resolved` (``"auto"`` lets ``precision.py``
            choose per network); None: ``dtype``.
        render_batch: Ditto's frames per warp + decoder call; 0: sized by free memory on CUDA, 4 on the
            CPU (``graph_renderer.py``).
        cuda_graph: Ditto's warp + decoder replayed as a CUDA graph (CUDA only, not with ``compile``).
    """

    weights: Path | None = None
    random_weights: bool = False
    arch: str = "full"
    device: str | torch.device = "auto"
    dtype: str | torch.dtype = "auto"
    compile: bool | None = None
    add_cfg_layers: bool = False
    requested_dtype: str | torch.dtype | None = None
    render_batch: int = 0
    cuda_graph: bool = False

    def resolved(self) -> "LoadOptions":
        """A copy with ``device`` and ``dtype`` resolved to torch objects (``runtime.py``'s policy).

        Raises:
            InputError: an unknown device or dtype name, or a CUDA device this machine lacks; renderer
                options that cannot run (``graph_renderer.check_renderer_options``: ``--cuda-graph`` off
                CUDA or with ``--compile``, ``--render-batch`` outside 0..32).
        """
        from .graph_renderer import check_renderer_options
        from .runtime import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        check_renderer_options(device, self.render_batch, self.cuda_graph, self.compile)
        requested = self.dtype if self.requested_dtype is None else self.requested_dtype
        return replace(self, device=device, dtype=resolve_dtype(self.dtype, device), requested_dtype=requested)

    def checked(self, model: str) -> "LoadOptions":
        """:meth:`resolved`, after refusing what cannot run for ``model`` (a ``--model`` name): ``--render-batch``
        or ``--cuda-graph`` with a model that is not Ditto's. No model is built.

        Raises:
            InputError: naming the flag and the fix; see :meth:`resolved`.
        """
        from .models.catalog import MODELS

        if (self.render_batch or self.cuda_graph) and MODELS[model].family != "ditto":
            flag = "--cuda-graph" if self.cuda_graph else "--render-batch"
            raise InputError(f"{flag} applies to --model ditto, not --model {model}; leave it out")
        return self.resolved()

    def load(self, model: str, method: str | None = None,
             note: Callable[[str], None] = lambda message: None):
        """The pipeline of ``model`` (a ``--model`` name) with these settings; see
        :func:`avatar_cli.pipelines.load_pipeline` for ``method``, ``note`` and the errors raised, and
        :meth:`checked`."""
        from .pipelines import load_pipeline

        load = self.checked(model)
        pipe = load_pipeline(model, load.weights, load.random_weights, load.arch, load.device, load.dtype,
                             compile=load.compile, add_cfg_layers=load.add_cfg_layers, method=method, note=note)
        if hasattr(pipe, "set_precision"):  # the per-network formats of the --dtype as given (precision.py)
            pipe.set_precision(load.requested_dtype)
        if hasattr(pipe, "set_renderer"):  # Ditto's warp + decoder batch and CUDA graph (graph_renderer.py)
            pipe.set_renderer(load.render_batch, load.cuda_graph)
        return pipe
