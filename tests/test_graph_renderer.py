"""Ditto's warp + decoder at a fixed batch (issue 25, ``graph_renderer.py``): the batch sized by free GPU
memory, and the static-buffer path that ``--cuda-graph`` captures, run eagerly here on the CPU and
compared with the default path. The captured path itself is checked in tests/test_cuda.py."""

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_cli import graph_renderer
from avatar_cli.bench import bench, bench_stream
from avatar_cli.cli import main
from avatar_cli.graph_renderer import RendererSettings, StaticRenderer, render_batch_for_memory
from avatar_cli.options import RenderOptions
from tests.pipelines.ditto_case import FACE_BOX, portrait, tiny_ditto

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def test_render_batch_for_memory():
    assert render_batch_for_memory(10 * GIB, GIB) == 7  # floor(0.7 * 10 GiB / 1 GiB)
    assert render_batch_for_memory(10 * GIB, GIB, headroom=0.5) == 5
    assert render_batch_for_memory(100 * GIB, GIB) == 32  # capped
    assert render_batch_for_memory(100 * GIB, GIB, cap=8) == 8
    assert render_batch_for_memory(GIB // 2, GIB) == 1  # at least one frame
    assert render_batch_for_memory(GIB, 0) == 4  # nothing measured: the default
    # an H100's ~75 GiB free and Ditto's full-size frame at ~1.5 GiB (bf16): 35 -> the cap
    assert render_batch_for_memory(75 * GIB, 3 * GIB // 2) == 32


def test_cuda_settings_size_the_batch_once_from_the_measured_frame(monkeypatch):
    calls = []

    def measure(run_one, device):
        run_one()
        calls.append(device.type)
        return 3 * GIB // 2

    monkeypatch.setattr(graph_renderer, "measure_frame_bytes", measure)
    monkeypatch.setattr(graph_renderer, "free_device_bytes", lambda device: 20 * GIB)
    settings = RendererSettings(torch.device("cuda"))  # no CUDA call until offline_batch() measures
    assert settings.render_batch == 4 and settings.describe(4)["sized_by"] == "default"
    assert settings.offline_batch(4, lambda: None) == 9  # floor(0.7 * 20 / 1.5)
    assert settings.offline_batch(4, lambda: None) == 9 and calls == ["cuda"]  # measured once
    assert settings.describe(4) == {"render_batch": 9, "sized_by": "memory", "per_frame_bytes": 3 * GIB // 2,
                                    "free_bytes": 20 * GIB, "cuda_graph": False, "static_buffers": False}
    assert settings.describe(4, stream=True)["render_batch"] == 4  # a stream keeps the small batch
    fixed = RendererSettings(torch.device("cuda"), render_batch=3)
    assert fixed.offline_batch(3, lambda: None) == 3 and fixed.describe(3)["sized_by"] == "flag" and calls == ["cuda"]
    cpu = RendererSettings(torch.device("cpu"))
    assert cpu.offline_batch(4, lambda: None) == 4 and cpu.describe(4)["sized_by"] == "default"


def test_static_renderer_pads_trims_and_copies_the_source_once():
    seen = []

    def render(features, x_s, x_d):  # a stand-in network: per-frame output, the batch it ran at recorded
        seen.append(x_d.shape[0])
        return features.flatten(1).sum(1, keepdim=True) + x_s.flatten(1).sum(1, keepdim=True) + x_d.flatten(1)

    static = StaticRenderer(render, batch=4)
    features, x_s = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 21, 3)
    x_d = torch.randn(6, 21, 3)
    out = torch.cat([static(features, x_s, x_d[:4]), static(features, x_s, x_d[4:])])
    torch.testing.assert_close(out, render(features.expand(6, -1, -1, -1, -1), x_s.expand(6, -1, -1), x_d))
    assert seen[:2] == [4, 4]  # the partial chunk ran at the static batch, trimmed to its 2 frames
    torch.testing.assert_close(static.x_d[2:], x_d[5:].expand(2, -1, -1))  # padded with its last pose
    other = torch.randn(1, 2, 3, 4, 4)
    torch.testing.assert_close(static(other, x_s, x_d[:1]), render(other, x_s, x_d[:1]))  # a new source copied in
    with pytest.raises(ValueError, match="1..4"):
        static(features, x_s, torch.randn(5, 21, 3))


@pytest.fixture(scope="module")
def tiny():
    pipe, image = tiny_ditto(), portrait()
    source = pipe.source_state(image, FACE_BOX)
    wave = (0.2 * np.sin(2 * np.pi * 200 * np.arange(3200) / 16000)).astype(np.float32)  # 0.2 s: 5 frames
    options = RenderOptions(model="ditto", num_inference_steps=2, seed=1)
    return pipe, image, source, wave, options


def _frames(tiny, render_batch=0, cuda_graph=False):
    pipe, image, source, wave, options = tiny
    pipe.set_renderer(render_batch, cuda_graph, capture=False)
    try:
        chunks = list(pipe.generate(image, wave, options, source=source))
        return [len(c) for c in chunks], np.concatenate(chunks), pipe.renderer
    finally:
        pipe.set_renderer()


@pytest.fixture(scope="module")
def batch_3_frames(tiny):
    return _frames(tiny, 3)


def test_frames_from_batch_1_3_and_the_default_are_equal(tiny, batch_3_frames):
    pipe = tiny[0]
    assert pipe.render_batch == 4 and pipe.describe(tiny[4])["renderer"]["sized_by"] == "default"  # CPU: 4
    sizes, frames, _ = _frames(tiny)
    assert sizes == [4, 1] and frames.shape == (5, 96, 128, 3)
    sizes3, frames3, _ = batch_3_frames
    sizes1, frames1, _ = _frames(tiny, 1)
    assert sizes3 == [3, 2] and sizes1 == [1] * 5
    # the same frames; a batch's size changes the kernels oneDNN picks (the stitching MLP's matmuls, batch-1
    # convolutions), whose sums round differently (renders within 1e-4 of 255): one 8-bit level at most, rarely
    for other in (frames3, frames1):
        diff = np.abs(other.astype(int) - frames.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999 and (frames != tiny[1][0, 0]).any()


def test_static_buffer_path_equals_the_default_path_bit_for_bit(tiny, batch_3_frames):
    sizes, frames, renderer = _frames(tiny, 3, cuda_graph=True)  # the last chunk (2 frames) padded to 3
    assert sizes == batch_3_frames[0] == [3, 2]
    np.testing.assert_array_equal(frames, batch_3_frames[1])
    static = renderer.static(None, 3)  # the one the render used, kept
    assert static.replays == 2 and static.x_d.shape == (3, 21, 3) and not static.capture
    torch.testing.assert_close(static.x_d[2], static.x_d[1], rtol=0, atol=0)  # padded with the last pose
    described = renderer.describe(3)
    assert described["static_buffers"] and not described["cuda_graph"] and described["render_batch"] == 3


@pytest.mark.parametrize("argv,words", [
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA GPU"),
    (["--cuda-graph", "--compile"], "--cuda-graph and --compile exclude each other"),
    (["--render-batch", "33"], "--render-batch must be 0..32"),
])
def test_renderer_flags_that_cannot_run_fail_in_one_line(tmp_path, capsys, argv, words):
    for command in (["render", str(tmp_path / "missing.png"), str(tmp_path / "missing.wav"), "--model", "ditto",
                     "--random-weights", "-o", str(tmp_path / "out.mp4")], ["bench", "--model", "ditto", "--arch", "tiny"]):
        assert main([*command, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and err[0].startswith("avatar: "), err
    assert list(tmp_path.iterdir()) == []


def test_renderer_flags_name_ditto_for_other_models(tmp_path, capsys):
    assert main(["render", str(tmp_path / "a.png"), str(tmp_path / "a.wav"), "--model", "osa-lcm", "--random-weights",
                 "--render-batch", "2"]) == 2
    assert "--render-batch applies to --model ditto" in capsys.readouterr().err


def test_gpu_bench_entries_bind_to_the_bench_functions():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts/gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no GPU needed to read the entries
    labels = [label for label, _, _ in module.ENTRIES]
    assert {"ditto-10-steps", "ditto-10-steps-cuda-graph", "ditto-10-steps-compile"} <= set(labels)
    assert any(kwargs.get("cuda_graph") for _, _, kwargs in module.ENTRIES)
    for label, kind, kwargs in module.ENTRIES:
        function = bench_stream if kind == "stream" else bench
        inspect.signature(function).bind(**module.entry_arguments(kind, kwargs))  # every keyword exists
