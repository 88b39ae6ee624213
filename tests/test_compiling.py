"""torch.compile where it pays (``avatar_cli/compiling.py``, issue 25): the auto policy's decision, the eager
fallback when a compile fails, and that a Ditto render the policy compiles really runs its warp and
decoder through the compiled callables with the frames of the eager render.

The tests trace with dynamo's ``eager`` backend (the same FX graph, no C++ build: seconds, not the ~40 s of
inductor); inductor's speed and error are measured by ``scripts/compile_speed.py`` (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_cli import compiling
from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.cli import main
from avatar_cli.compiling import AUTO_MIN_FRAMES, CompiledNetwork, wants_compile
from avatar_cli.options import RenderOptions
from avatar_cli.pipelines.ditto import DittoPipeline

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("requested, device, frames, stream, compiler, expected", [
    (None, CPU, AUTO_MIN_FRAMES, False, True, True),        # long enough offline CPU render
    (None, CPU, AUTO_MIN_FRAMES - 1, False, True, False),   # too short to pay for the compile
    (None, CPU, 10 * AUTO_MIN_FRAMES, True, True, False),   # --stream: the compile would delay the first frame
    (None, CUDA, 10 * AUTO_MIN_FRAMES, False, True, False),  # CUDA: unmeasured, opt-in
    (None, CPU, 10 * AUTO_MIN_FRAMES, False, False, False),  # no C++ compiler for inductor
    (True, CPU, 1, True, False, True),                       # --compile forces it
    (False, CPU, 10 * AUTO_MIN_FRAMES, False, True, False),  # --no-compile
])
def test_auto_policy(monkeypatch, requested, device, frames, stream, compiler, expected):
    monkeypatch.setattr(compiling, "compiler_available", lambda: compiler)
    assert wants_compile(requested, device, frames, stream) is expected


def test_a_failed_compile_runs_the_network_eagerly_and_says_so_once(monkeypatch):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compiling, "BACKEND", broken_backend)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    notes = []
    wrapped = CompiledNetwork(net, "decoder", notes.append)
    with torch.no_grad():
        first, second = wrapped(x), wrapped(x)
        expected = net(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert wrapped.compiled is None and wrapped.calls == 0
    assert len(notes) == 1 and "decoder" in notes[0] and "no C++ compiler found" in notes[0]


@pytest.fixture(scope="module")
def portrait_and_speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile-media")
    portrait = synthetic_portrait(folder / "portrait.png", 128)
    image = np.asarray(Image.open(portrait).convert("RGB"))
    return image, synthetic_speech(folder / "speech.wav", 0.4), folder


def _frames(pipe, image, seconds=0.4):
    t = np.arange(int(16000 * seconds)) / 16000
    waveform = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    source = pipe.source_state(image, (32, 16, 64, 72))
    return np.concatenate(list(pipe.generate(image, waveform, RenderOptions(model="ditto", num_inference_steps=2,
                                                                            seed=0), source=source)))


def test_auto_compiles_a_long_enough_render_and_its_networks_run_compiled(monkeypatch, portrait_and_speech):
    image = portrait_and_speech[0]
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    monkeypatch.setattr(compiling, "compiler_available", lambda: True)
    eager = DittoPipeline.from_preset("tiny", device="cpu", dtype="float32", seed=1, compile=False)
    expected = _frames(eager, image)  # 10 frames
    assert eager.compiled == []

    monkeypatch.setattr(compiling, "AUTO_MIN_FRAMES", 11)
    short = DittoPipeline.from_preset("tiny", device="cpu", dtype="float32", seed=1, compile=None)
    _frames(short, image)
    assert short.compiled == [], "10 frames are below the threshold: nothing compiled"

    monkeypatch.setattr(compiling, "AUTO_MIN_FRAMES", 10)
    auto = DittoPipeline.from_preset("tiny", device="cpu", dtype="float32", seed=1, compile=None)
    frames = _frames(auto, image)
    assert auto.compiled == ["warp", "decoder"]
    chunks = -(-10 // auto.render_batch)
    assert [auto._compiled[n].calls for n in ("warp", "decoder")] == [chunks, chunks]
    np.testing.assert_array_equal(frames, expected)


def test_cli_json_names_the_compiled_networks(monkeypatch, portrait_and_speech, tmp_path, capsys):
    _, speech, folder = portrait_and_speech
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    monkeypatch.setattr(compiling, "compiler_available", lambda: True)
    monkeypatch.setattr(compiling, "AUTO_MIN_FRAMES", 5)
    results = {}
    for flag in ("--compile", "--no-compile"):
        out = tmp_path / f"{flag}.mp4"
        code = main(["render", str(folder / "portrait.png"), str(speech), "--model", "ditto", "--random-weights",
                     "--arch", "tiny", "--face-box", "32,16,64,72", "--steps", "2", "--device", "cpu",
                     "--dtype", "float32", flag, "-o", str(out), "--json", "--quiet"])
        assert code == 0, capsys.readouterr().err
        results[flag] = json.loads(capsys.readouterr().out)
        assert Path(out).is_file()
    assert results["--compile"]["compiled"] == ["warp", "decoder"]
    assert results["--no-compile"]["compiled"] == []
