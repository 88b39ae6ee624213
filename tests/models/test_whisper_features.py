"""Whisper features (models/whisper_features.py) against EchoMimic's own Whisper code, recorded in
tests/data/echomimic_parts.safetensors (provenance: tests/data/README.md)."""

import json
import pickle
import wave
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avatar_cli.models.whisper_features import (TEST_DIMS, WHISPER_TINY_DIMS, WhisperFeatures, echomimic_num_frames,
                                                frame_step_indices, frame_tokens, map_openai_encoder_state)
from tests.conftest import DATA

FIXTURE = DATA / "echomimic_parts.safetensors"
LONG_GAINS = (1.0, 0.8, 0.9, 1.0, 0.7, 1.0, 0.9, 1.0)


@pytest.fixture(scope="module")
def recorded():
    with safe_open(str(FIXTURE), "pt") as f:
        dims = json.loads(f.metadata()["dims"])
    return load_file(str(FIXTURE)), dims


def _speech() -> np.ndarray:
    with wave.open(str(DATA / "speech_espeak.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def _decoder_state(dims) -> dict:
    """A few keys of OpenAI's text decoder (not loaded; reported as skipped)."""
    d = dims["n_text_state"]
    return {"decoder.positional_embedding": torch.zeros(4, d), "decoder.blocks.0.attn.query.weight": torch.zeros(d, d),
            "decoder.ln.weight": torch.ones(d)}


def _checkpoint(tmp_path, recorded, extra=None, drop=None):
    tensors, dims = recorded
    state = {k[len("ckpt."):]: v for k, v in tensors.items() if k.startswith("ckpt.")}
    state.update(_decoder_state(dims))
    state.update(extra or {})
    if drop:
        del state[drop]
    path = tmp_path / "whisper_tiny_layout.pt"
    torch.save({"dims": dict(dims), "model_state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def features(tmp_path_factory, recorded):
    return WhisperFeatures.from_openai_checkpoint(_checkpoint(tmp_path_factory.mktemp("w"), recorded))


def test_checkpoint_loads_strictly_and_reports_the_decoder_keys(tmp_path, recorded, features):
    tensors, dims = recorded
    assert dims == TEST_DIMS                                          # the fixture was recorded at the test dims
    assert sorted(features.skipped_keys) == sorted(_decoder_state(dims))
    assert (features.num_states, features.dim, features.window_frames) == (3, 32, 3000)
    # every encoder parameter came from the file (float16 there, float32 here)
    loaded = features.encoder.state_dict()
    torch.testing.assert_close(loaded["layers.1.fc2.weight"], tensors["ckpt.encoder.blocks.1.mlp.2.weight"].float(),
                               rtol=0, atol=0)
    torch.testing.assert_close(loaded["layers.0.self_attn_layer_norm.bias"],
                               tensors["ckpt.encoder.blocks.0.attn_ln.bias"].float(), rtol=0, atol=0)
    assert "layers.0.self_attn.k_proj.bias" not in loaded   # Whisper's key projection has no bias
    with pytest.raises(ValueError, match="unknown keys"):
        WhisperFeatures.from_openai_checkpoint(
            _checkpoint(tmp_path, recorded, extra={"encoder.extra.weight": torch.ones(1)}))
    with pytest.raises(ValueError, match="missing"):
        WhisperFeatures.from_openai_checkpoint(_checkpoint(tmp_path, recorded, drop="encoder.ln_post.bias"))


@dataclass
class _Dims:  # a pickled object, as older whisper checkpoints could hold: weights_only must refuse it
    n_mels: int = 80


def test_weights_only_refuses_code_objects(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"dims": _Dims(), "model_state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError):
        WhisperFeatures.from_openai_checkpoint(path)
    torch.save({"weights": {}}, path)
    with pytest.raises(ValueError, match="not an OpenAI Whisper checkpoint"):
        WhisperFeatures.from_openai_checkpoint(path)


def test_log_mel_is_whispers(features, recorded):
    mel = features.log_mel(_speech())
    assert mel.shape == (80, 400)                                   # 4 s at 100 frames per second
    ref = recorded[0]["short.mel_every5"]
    # A float32 STFT's error is absolute (a fraction of the peak power), so in the log domain it grows as a
    # bin's power falls: the FFT kernels differ by CPU (MKL / pocketfft dispatch), and on a Xeon with
    # AVX512 the recording itself is 2.5e-5 from a float64 STFT in the quietest bins (power < 1e-6).
    # Hence: 1e-5 in the log domain wherever the power is >= 1e-6 (70 % of the bins here), and everywhere
    # the powers (Whisper: log10 p = 4 x - 4) within 1e-6 of the peak power (measured 2.8e-7).
    loud = 10 ** (4 * ref.double() - 4) >= 1e-6
    assert loud.float().mean() > 0.5
    torch.testing.assert_close(mel[:, ::5][loud], ref[loud], rtol=0, atol=1e-5)
    power, ref_power = (10 ** (4 * x.double() - 4) for x in (mel[:, ::5], ref))
    assert float((power - ref_power).abs().max()) <= 1e-6 * float(ref_power.max())


def test_features_equal_echomimics_encoder(features, recorded):
    ours = features.encode(_speech())
    expected = recorded[0]["short.features"]
    assert ours.shape == expected.shape == (200, 3, 32)              # 4 s at 50 steps per second, embed + 2 blocks
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    # transformers' own hidden_states end with the final layer norm applied; EchoMimic's last state has none
    mel = torch.nn.functional.pad(features.log_mel(_speech()), (0, 2600))
    with torch.no_grad():
        hidden = features.encoder(mel[None], output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden[0][0, :200], expected[:, 0], rtol=0, atol=1e-4)
    assert (hidden[-1][0, :200] - expected[:, -1]).abs().max() > 0.1


def test_long_audio_is_encoded_in_30_s_windows_of_the_whole_log_mel(features, recorded):
    speech = _speech()
    wave_ = np.concatenate([speech * g for g in LONG_GAINS] + [speech[:24000] * 0.02])   # 33.5 s
    ours = features.encode(wave_)
    tensors = recorded[0]
    assert ours.shape == (1675, 3, 32)                               # 1500 steps from the first window, 175 then
    torch.testing.assert_close(ours.sum(-1), tensors["long.features_sum"], rtol=0, atol=1e-4)
    torch.testing.assert_close(ours[1490:1510], tensors["long.features_1490_1510"], rtol=0, atol=1e-4)
    torch.testing.assert_close(ours[-20:], tensors["long.features_tail"], rtol=0, atol=1e-4)
    # the quiet tail (the last 1.5 s) is floored at max - 8 (log10) of the *whole* recording, whose
    # loud part is in the first window: the tail's log-mel alone would go lower
    mel, tail = features.log_mel(wave_), features.log_mel(wave_[512000:])
    assert float(mel[:, 3200:].min()) == pytest.approx(float(mel.max()) - 2.0, abs=1e-6)   # (x + 4) / 4 scale
    assert float(tail.min()) < float(mel[:, 3200:].min()) - 0.1


def test_frame_tokens_are_echomimics_slices():
    cases = json.loads((DATA / "echomimic_parts.json").read_text())["slices"]
    assert len(cases) == 5
    for key, expected in cases.items():
        steps, fps = map(int, key.split("_"))
        assert echomimic_num_frames(steps, fps) == len(expected)
        # features that name their own (step, state): value = 10 step + state, in both channels
        code = (torch.arange(steps)[:, None] * 10 + torch.arange(5)[None]).double()[..., None].repeat(1, 1, 2)
        tokens = frame_tokens(code, len(expected), fps)
        assert tokens.shape == (len(expected), 50, 2)
        got = torch.stack([tokens[..., 0] // 10, tokens[..., 0] % 10], dim=-1).long()
        assert got.tolist() == expected, key


def test_frame_window_by_hand():
    # fps 24, frame 12: centre int(12 * 50 / 24) = 25 -> steps 21..30; frame 0 clamps at 0; T = 27 clamps at 26
    index = frame_step_indices(13, 27, 24)
    assert index[12].tolist() == [21, 22, 23, 24, 25, 26, 26, 26, 26, 26]
    assert index[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert echomimic_num_frames(200, 24) == 98     # 4 s: int(97 * 50 / 24) = 202 > 200 is the last frame
    assert echomimic_num_frames(200, 25) == 102


def test_state_dict_mapping_names():
    state = {"encoder.blocks.3.mlp.0.weight": 1, "encoder.blocks.3.attn.key.weight": 2, "encoder.ln_post.bias": 3,
             "encoder.positional_embedding": 4, "decoder.token_embedding.weight": 5}
    mapped, skipped = map_openai_encoder_state(state)
    assert mapped == {"layers.3.fc1.weight": 1, "layers.3.self_attn.k_proj.weight": 2, "layer_norm.bias": 3,
                      "embed_positions.weight": 4}
    assert skipped == ["decoder.token_embedding.weight"]


def test_tiny_shapes_and_seeded_random_encoders():
    speech = _speech()[:16000]                                        # 1 s
    tiny = WhisperFeatures.from_dims(WHISPER_TINY_DIMS)
    steps = tiny.encode(speech)
    assert steps.shape == (50, 5, 384)                                # embedding + 4 blocks of 384
    assert frame_tokens(steps, 24, 24).shape == (24, 50, 384)         # EchoMimic's 50 x 384 per frame
    state = torch.get_rng_state()
    a, b = WhisperFeatures.from_dims(TEST_DIMS, seed=3), WhisperFeatures.from_dims(TEST_DIMS, seed=3)
    assert torch.equal(torch.get_rng_state(), state)                  # the global generator is left alone
    torch.testing.assert_close(a.encoder.state_dict(), b.encoder.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="400-sample"):
        a.encode(np.zeros(399, np.float32))
