"""The clip loop: frame counts, trimming, determinism, what is computed once, motion frames."""

import numpy as np
import pytest
import torch

import avatar_cli.pipelines.unet as pipeline_module
from avatar_cli import RenderOptions
from avatar_cli.errors import InputError
from avatar_cli.media.image import load_portrait

OPTS = RenderOptions(size=64)


@pytest.fixture(scope="module")
def portrait(test_data):
    return load_portrait(test_data / "astronaut.png", 64)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def _run(pipe, image, wave, **kw):
    clips = list(pipe.generate(image, wave, RenderOptions(size=64, **kw)))
    return clips, np.concatenate(clips)


def test_frames_match_the_audio_and_the_last_clip_is_trimmed(tiny_pipeline, portrait):
    clips, frames = _run(tiny_pipeline, portrait, _speech(1.0))
    assert [len(c) for c in clips] == [16, 9]
    assert frames.shape == (25, 64, 64, 3) and frames.dtype == np.uint8
    clips, frames = _run(tiny_pipeline, portrait, _speech(0.7), fps=30)
    assert frames.shape[0] == 21


def test_same_seed_same_frames_other_seed_other_frames(tiny_pipeline, portrait):
    wave = _speech(0.8)
    _, a = _run(tiny_pipeline, portrait, wave, seed=3)
    _, b = _run(tiny_pipeline, portrait, wave, seed=3)
    _, c = _run(tiny_pipeline, portrait, wave, seed=4)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_reference_features_once_per_portrait_motion_features_once_per_clip(portrait):
    from avatar_cli import UNetPipeline

    pipe = UNetPipeline.from_preset("tiny", device="cpu", dtype="float32")
    clips, _ = _run(pipe, portrait, _speech(2.0))  # 50 frames -> 4 clips
    assert len(clips) == 4
    assert pipe.reference_net_calls == 1 + 4
    _run(pipe, portrait, _speech(1.0))            # the same portrait again (a batch): only motion features
    assert pipe.reference_net_calls == 1 + 4 + 2
    _run(pipe, portrait[:, ::-1].copy(), _speech(1.0))  # another portrait
    assert pipe.reference_net_calls == 1 + 4 + 2 + 1 + 2


def test_motion_frames_are_the_previous_clips_last_latents(portrait, monkeypatch):
    from avatar_cli import UNetPipeline

    tiny_pipeline = UNetPipeline.from_preset("tiny", device="cpu", dtype="float32")
    seen_motion, sampled = [], []
    extract = tiny_pipeline.models.reference_net.extract_features
    sample = pipeline_module.sample

    def record_extract(latents, tokens):
        seen_motion.append(latents.clone())
        return extract(latents, tokens)

    def record_sample(*args, **kwargs):
        out = sample(*args, **kwargs)
        sampled.append(out.clone())
        return out

    monkeypatch.setattr(tiny_pipeline.models.reference_net, "extract_features", record_extract)
    monkeypatch.setattr(pipeline_module, "sample", record_sample)
    _run(tiny_pipeline, portrait, _speech(1.2))  # 30 frames, 2 clips
    portrait_latent, motion0, motion1 = seen_motion
    assert portrait_latent.shape == (1, 4, 8, 8)
    assert motion0.shape == (4, 4, 8, 8) and motion0.abs().max() == 0           # zeros for clip 0
    expected = sampled[0][0, :, -4:].permute(1, 0, 2, 3)
    torch.testing.assert_close(motion1, expected)                              # latents, no VAE re-encode


def test_init_modes_change_what_later_clips_start_from(tiny_pipeline, portrait):
    wave = _speech(1.0)
    gauss, g = _run(tiny_pipeline, portrait, wave, init="gaussian")
    combined, c = _run(tiny_pipeline, portrait, wave, init="combined-rolling", start_timestep=900)
    rolling, r = _run(tiny_pipeline, portrait, wave, init="rolling", start_timestep=900)
    assert np.array_equal(gauss[0], combined[0])           # clip 0 of combined-rolling is gaussian
    assert not np.array_equal(gauss[1], combined[1])       # later clips roll
    assert not np.array_equal(gauss[0], rolling[0])        # rolling's clip 0 starts from the portrait


def test_silent_short_and_multi_step_audio_render(tiny_pipeline, portrait):
    _, silent = _run(tiny_pipeline, portrait, np.zeros(16000, np.float32))
    assert silent.shape[0] == 25
    _, short = _run(tiny_pipeline, portrait, _speech(0.01))  # shorter than wav2vec2's window
    assert short.shape[0] == 1
    _, two = _run(tiny_pipeline, portrait, _speech(0.5), num_inference_steps=2)
    assert two.shape[0] == 13  # 12.5 frames round half up


@pytest.mark.parametrize("options,words", [
    (dict(size=100), "multiple of 64"), (dict(fps=0), "--fps"), (dict(num_inference_steps=0), "--steps"),
    (dict(start_timestep=1000), "--start-timestep"), (dict(clip_frames=30), "at most 32"),
    (dict(init="nope"), "--init"), (dict(motion_frames=20), "--motion-frames"),
])
def test_out_of_range_options_are_refused(tiny_pipeline, portrait, options, words):
    with pytest.raises(InputError, match=words):
        list(tiny_pipeline.generate(portrait, _speech(0.2), RenderOptions(**{"size": 64, **options})))


@pytest.mark.parametrize("model,nfe", [("osa-lcm", 1), ("adv-lcm", 2), ("fada", 6), ("fada-balanced", 18),
                                       ("teacher", 75)])
def test_every_method_counts_its_nfe(portrait, model, nfe):
    from avatar_cli import UNetPipeline
    from avatar_cli.pipelines.unet import RenderStats

    pipe = UNetPipeline.from_preset("tiny", device="cpu", dtype="float32",
                                      cfg_tokens=4 if model == "fada" else 0)
    stats = RenderStats(pipe.device)
    frames = np.concatenate(list(pipe.generate(portrait, _speech(0.8), RenderOptions(size=64, model=model),
                                               stats=stats)))
    assert frames.shape == (20, 64, 64, 3)
    assert stats.evaluations == nfe * 2  # 2 clips
    # multi-CFG needs the null reference features (a zero latent) once per video
    assert pipe.reference_net_calls == 1 + 2 + (1 if model in ("fada-balanced", "teacher") else 0)


def test_fada_without_cfg_layers_is_refused(tiny_pipeline, portrait):
    with pytest.raises(InputError, match="CFG-token layers"):
        list(tiny_pipeline.generate(portrait, _speech(0.2), RenderOptions(size=64, model="fada")))


@pytest.mark.parametrize("options,words", [
    (dict(model="fada", init="rolling"), "PeRFlow"),
    (dict(model="hallo"), "Hallo's weights"),
    (dict(model="teacher", guidance_scale=2.0), "--guidance-scale"),
    (dict(model="hallo", guidance_audio=2.0), "--guidance-audio"),
    (dict(model="osa-lcm", window_steps=(2, 2, 1, 1)), "PeRFlow"),
    (dict(model="fada", window_steps=(2, 2, 1)), "4 counts"),
    (dict(model="fada", num_inference_steps=3), "4..100"),
    (dict(model="osa-lcm", guidance_audio=3.0), "without guidance"),
    (dict(model="nope"), "--model"),
])
def test_method_option_errors(tiny_pipeline, portrait, options, words):
    with pytest.raises(InputError, match=words):
        list(tiny_pipeline.generate(portrait, _speech(0.2), RenderOptions(size=64, **options)))


def test_an_interrupt_swallowed_in_a_finalizer_still_stops_at_the_next_chunk(tiny_pipeline, test_data, tmp_path):
    """A Ctrl-C whose KeyboardInterrupt Python swallowed (it landed in a __del__) was only recorded:
    the render stops at its first chunk, and no output or temporary file is left."""
    from avatar_cli import interrupt

    interrupt.request()
    with pytest.raises(KeyboardInterrupt):
        tiny_pipeline.render(test_data / "astronaut.png", test_data / "speech_espeak.wav", tmp_path / "o.mp4",
                             RenderOptions(size=64))
    assert list(tmp_path.iterdir()) == []
    interrupt.check()  # the request was acted on once, not again
