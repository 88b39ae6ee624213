"""HuBERT windowing against Ditto's wav2feat.py / inference.py (fixture), around a stand-in encoder."""

import sys

import numpy as np
import pytest

from avatar_cli.errors import WeightsError
from avatar_cli.motion.hubert_windows import (
    OnnxHubert,
    StreamChunker,
    num_frames,
    offline_features,
    offline_window_starts,
    silence_features,
    stream_windows,
    window_features,
)
from tests.motion.ditto_fakes import fake_encoder, load_fixture

FX = load_fixture()


def ramp(n):
    """Sample k = (k + 1) * 2^-21: every sample distinct and exact in float32, so a window's start is readable."""
    return ((np.arange(n, dtype=np.float64) + 1) * 2.0 ** -21).astype(np.float32)


def test_offline_windows_and_features_match_ditto():
    audio = ramp(1620 * 640 + 123)
    starts = []

    def enc(w):
        k = int(np.argmax(w != 0))
        starts.append(int(round(float(w[k]) * 2 ** 21)) - 1 + 2000 - k)
        return fake_encoder(w)

    f = offline_features(audio, enc)
    assert f.shape == (int(FX["hubert_num_f"]), 1024) == (1621, 1024)
    np.testing.assert_array_equal(starts, FX["hubert_starts"])
    assert starts[323] == 1033599 == 640 * 1615 - 1  # int(1615 * 0.04 * 16000): the float expression's off-by-one
    np.testing.assert_array_equal(offline_window_starts(1621), FX["hubert_starts"])
    np.testing.assert_allclose(f.astype(np.float64).sum(1), FX["hubert_feat_rowsum"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(f[1610:1625, :64], FX["hubert_feat_1610"], atol=1e-6)


def short_audio():
    return (np.random.default_rng(21).standard_normal(7777) * 0.1).astype(np.float32)


def test_short_clip_and_silence():
    f = offline_features(short_audio(), fake_encoder)
    assert f.shape == (num_frames(7777), 1024) == (13, 1024)
    np.testing.assert_allclose(f[:, :32], FX["hubert_short"], atol=1e-6)
    s = silence_features(fake_encoder, 70)
    assert s.shape == (70, 1024) and not s.any()


def test_window_features_by_hand():
    enc = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 1024), np.float32)
    np.testing.assert_array_equal(window_features(enc)[:, 0], [6.5, 8.5, 10.5, 12.5, 14.5])  # rows 6..15 paired


def test_stream_windows_match_ditto():
    wins = list(stream_windows(short_audio()))
    assert len(wins) == len(FX["stream_chunks_sub"]) == 4  # starts 0, 3200, 6400, 9600 of 1920 + 7777 samples
    np.testing.assert_array_equal(np.stack(wins)[:, ::37], FX["stream_chunks_sub"])
    np.testing.assert_allclose(np.stack([window_features(fake_encoder(w))[:, :32] for w in wins]),
                               FX["stream_chunk_feats"], atol=1e-6)


def test_chunker_equals_stream_windows():
    audio = short_audio()
    ch = StreamChunker()
    got, ready_after = [], []
    for i in range(0, len(audio), 1000):
        new = ch.push(audio[i:i + 1000])
        got += new
        ready_after += [i + 1000] * len(new)
    got += ch.flush()
    ref = list(stream_windows(audio))
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    assert ready_after[0] == 5000  # first window needs 6480 - 1920 = 4560 samples (in 1000-sample pushes)


def test_onnx_hubert_errors(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found"):
        OnnxHubert(tmp_path / "missing.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(WeightsError, match="pip install onnxruntime") as e:
        OnnxHubert(tmp_path / "missing.onnx")
    assert "\n" not in str(e.value)


def test_onnx_hubert_runs_a_graph_with_the_interface():
    pytest.importorskip("onnxruntime")
    from pathlib import Path

    enc = OnnxHubert(Path(__file__).resolve().parents[1] / "data" / "tiny_hubert_interface.onnx",
                     providers=["CPUExecutionProvider"])
    w = np.random.default_rng(1).standard_normal(6480).astype(np.float32)
    out = enc(w)
    # the tiny graph: window[:6400] as (20, 320), tiled to 1024 columns, times 2
    ref = np.tile(w[:6400].reshape(20, 320), (1, 4))[:, :1024] * 2
    assert out.shape == (20, 1024) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    f = offline_features(np.zeros(1000, np.float32), enc)
    assert f.shape == (2, 1024)
