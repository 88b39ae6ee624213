"""EchoMimic's context windows (sampling/context_windows.py) against EchoMimic's own scheduler and
denoising loops, recorded in tests/data/echomimic_parts.{json,safetensors} (tests/data/README.md)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from avatar_cli.models.presets import HALLO_SCHEDULER
from avatar_cli.models.whisper_features import frame_tokens
from avatar_cli.sampling.context_windows import (average_over_windows, echomimic_windows, ordered_halving,
                                                 sample_over_windows, uniform_windows)
from avatar_cli.sampling.guidance import cfg
from avatar_cli.sampling.methods import METHODS
from tests.conftest import DATA


@pytest.fixture(scope="module")
def recorded():
    return json.loads((DATA / "echomimic_parts.json").read_text()), load_file(str(DATA / "echomimic_parts.safetensors"))


def test_ordered_halving():
    assert [ordered_halving(s) for s in range(6)] == [0.0, 0.5, 0.25, 0.75, 0.125, 0.625]


def test_uniform_windows_equal_echomimics_context_py(recorded):
    cases = recorded[0]["windows"]
    assert len(cases) == 120
    for case in cases:
        got = uniform_windows(case["step"], case["num_frames"], case["context_size"], case["context_stride"],
                              case["context_overlap"], case["closed_loop"])
        assert got == case["windows"], case


def test_echomimic_windows_by_hand():
    # 29 frames, 12 per window, overlap 3: starts 0, 9, 18, 27 (closed loop: the last ones wrap)
    assert echomimic_windows(0, 29) == [list(range(12)), list(range(9, 21)), list(range(18, 29)) + [0],
                                        [27, 28] + list(range(10))]
    # each step shifts every window by 2 frames
    assert echomimic_windows(1, 29)[0] == list(range(2, 14))
    assert echomimic_windows(5, 29)[3] == [(i + 10) % 29 for i in [27, 28] + list(range(10))]
    # a video no longer than a window: one window, rotated by the shift
    assert echomimic_windows(0, 10) == [list(range(10))]
    assert echomimic_windows(1, 10) == [[2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]
    with pytest.raises(ValueError, match="smaller than context_size"):
        uniform_windows(0, 30, 12, 1, 12)


def test_echomimic_windows_equal_the_pipelines_windows(recorded):
    for name, loop in recorded[0]["loops"].items():
        assert loop["num_frames"] == 29
        for i, windows in enumerate(loop["windows"]):
            assert echomimic_windows(i, 29) == windows, (name, i)


def test_average_over_windows_by_hand():
    latents = torch.zeros(1, 1, 5, 1, 1)
    # the prediction is the position in the window: frame 3 is at position 3 of [0..3] and 0 of [3, 4, 0]
    out = average_over_windows(lambda x, w: torch.arange(len(w), dtype=torch.float32)[None, None, :, None, None]
                               .expand_as(x), latents, [[0, 1, 2, 3], [3, 4, 0]])
    assert out.flatten().tolist() == [(0 + 2) / 2, 1, 2, (3 + 0) / 2, 1]
    with pytest.raises(ValueError, match="without a prediction"):
        average_over_windows(lambda x, w: x, latents, [[0, 1, 2]])


class _FakeUNet:
    """The recorder's stand-in for EchoMimic's denoising U-Net (tests/data/README.md):
    0.9 x + 0.05 roll(x, 1, frames) + 0.2 a_f + 0.3 mean(locator features) + 0.001 t + 0.02 k,
    a_f the mean of frame f's audio tokens, k the position in the window."""

    def __init__(self, frame_audio, locator):
        self.frame_audio, self.locator = frame_audio, locator

    def __call__(self, x, t, window, conditional=True):
        a = (self.frame_audio[window] if conditional else torch.zeros(len(window), dtype=torch.float64)).to(x.dtype)
        face = self.locator.mean().to(x.dtype) if conditional else torch.zeros((), dtype=x.dtype)
        k = torch.arange(x.shape[2], dtype=x.dtype)[None, None, :, None, None]
        return (0.9 * x + 0.05 * x.roll(1, dims=2) + 0.2 * a[None, None, :, None, None] + 0.3 * face
                + 0.001 * torch.tensor(float(t), dtype=x.dtype) + 0.02 * k)


@pytest.mark.parametrize("name,method", [("acc_cfg1", "echomimic-acc"), ("acc_cfg2.5", "echomimic-acc"),
                                         ("base_cfg2.5", "echomimic")])
def test_the_loop_equals_echomimics_pipeline(recorded, name, method):
    loops, tensors = recorded
    loop = loops["loops"][name]
    audio = torch.randn(56, 5, 384, generator=torch.Generator().manual_seed(5))
    assert float(audio.double().sum()) == pytest.approx(float(tensors["loop.audio_feature_checksum"][0]), abs=1e-6)
    frame_audio = frame_tokens(audio, 29, 24).double().mean(dim=(1, 2))
    unet = _FakeUNet(frame_audio, tensors["loop.locator_features"])
    scale = loop["cfg"]

    def model(x, t, window):
        if scale <= 1:
            return unet(x, t, window)
        return cfg(unet(x, t, window, conditional=False), unet(x, t, window), scale)

    sampling = METHODS[method]
    scheduler = sampling.make_scheduler(HALLO_SCHEDULER)
    assert sampling.set_timesteps(scheduler, loop["steps"]) == loop["timesteps"]
    out = sample_over_windows(model, tensors[f"loop.{name}.init"].clone(), scheduler)
    torch.testing.assert_close(out, tensors[f"loop.{name}.out"], rtol=0, atol=1e-5)
