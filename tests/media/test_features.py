"""Audio-feature files: the safetensors layout, and `avatar audio encode` + `render --audio-features`."""

import json
import wave

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avatar_cli.cli import main
from avatar_cli.errors import InputError
from avatar_cli.media.features import load_features, save_features
from avatar_cli.models.bundle import AvatarModels
from tests.conftest import ffmpeg

TINY = ["--random-weights", "--arch", "tiny", "--quiet"]


def test_streamed_file_is_safetensors_and_maps_back(tmp_path):
    features = torch.randn(103, 2, 32)
    save_features(tmp_path / "f.safetensors", features, {"fps": 25.0, "model": "abc"}, chunk_frames=10)
    assert torch.equal(load_file(tmp_path / "f.safetensors")["features"], features)  # safetensors' reader
    with safe_open(tmp_path / "f.safetensors", "pt") as fh:
        assert fh.metadata() == {"fps": "25.0", "model": "abc"}
    mapped, meta = load_features(tmp_path / "f.safetensors")
    assert torch.equal(mapped, features) and meta["model"] == "abc"
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "f.safetensors").read_bytes()[:-100])
    with pytest.raises(InputError, match="not an audio-features file"):
        load_features(tmp_path / "cut.safetensors")


def test_encode_once_render_with_the_features(tmp_path, test_data, capsys):
    speech = test_data / "speech_espeak.wav"
    feats = tmp_path / "speech.safetensors"
    assert main(["audio", "encode", str(speech), "-o", str(feats), "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    with wave.open(str(speech)) as w:  # the speech's length in 25 fps video frames, from its header
        frames = round(w.getnframes() / w.getframerate() * 25)
    assert result["frames"] == frames and result["feature_shape"] == [frames, 2, 32] and result["fps"] == 25.0
    assert result["output"] == str(feats) and len(result["audio_sha256"]) == 64
    args = ["render", str(test_data / "astronaut.png"), str(speech), "--size", "64", *TINY]
    assert main([*args, "-o", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.mp4"), "--audio-features", str(feats)]) == 0
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_features_from_another_fps_model_or_speech_are_refused(tmp_path, test_data, capsys):
    speech = test_data / "speech_espeak.wav"
    feats = tmp_path / "speech.safetensors"
    assert main(["audio", "encode", str(speech), "-o", str(feats), *TINY]) == 0
    base = ["render", str(test_data / "astronaut.png"), "--size", "64", "--audio-features", str(feats), "-q"]
    assert main([*base[:2], str(speech), *base[2:], "--random-weights", "--arch", "tiny", "--fps", "30",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    assert "fps" in capsys.readouterr().err
    AvatarModels.from_preset("tiny", seed=1).save_pretrained(tmp_path / "other")
    assert main([*base[:2], str(speech), *base[2:], "--weights", str(tmp_path / "other"), "-o", str(tmp_path / "y.mp4")]) == 2
    assert "another audio encoder" in capsys.readouterr().err
    short = tmp_path / "short.wav"
    ffmpeg("-i", str(speech), "-t", "2", str(short))
    assert main([*base[:2], str(short), *base[2:], "--random-weights", "--arch", "tiny", "-o", str(tmp_path / "z.mp4")]) == 2
    assert "encode this speech" in capsys.readouterr().err
    assert not any(p.suffix == ".mp4" for p in tmp_path.iterdir())
