import wave

import numpy as np
import pytest

from avatar_cli.errors import InputError
from avatar_cli.media.audio import SAMPLE_RATE, load_speech, num_video_frames
from tests.conftest import ffmpeg


def _write_wav(path, samples: np.ndarray, rate: int, width: int, channels: int = 1):
    scale = {1: 127, 2: 32767, 4: 2147483647}[width]
    ints = np.round(samples * scale).astype({1: np.int16, 2: np.int16, 4: np.int32}[width])
    if width == 1:
        ints = (ints + 128).astype(np.uint8)
    data = np.repeat(ints[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


@pytest.mark.parametrize("rate,width,channels", [(48000, 2, 1), (44100, 2, 2), (22050, 1, 1), (16000, 4, 1)])
def test_wav_of_any_width_rate_and_channels_decodes_to_mono_16k(tmp_path, rate, width, channels):
    t = np.arange(int(rate * 1.5)) / rate
    _write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate, width, channels)
    out = load_speech(tmp_path / "a.wav")
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 1.5 * SAMPLE_RATE) <= 2
    assert abs(_dominant_hz(out) - 440) < 2
    assert abs(np.abs(out[2000:-2000]).max() - 0.5) < 0.03


@pytest.mark.parametrize("ext,codec", [("mp3", "libmp3lame"), ("flac", "flac"), ("ogg", "libopus"), ("m4a", "aac")])
def test_compressed_formats_decode(tmp_path, test_data, ext, codec):
    src = test_data / "speech_espeak.wav"
    reference = load_speech(src)
    encoded = tmp_path / f"speech.{ext}"
    ffmpeg("-i", str(src), "-c:a", codec, str(encoded))
    out = load_speech(encoded)
    assert abs(len(out) - len(reference)) < 0.06 * SAMPLE_RATE  # codec padding only
    n = min(len(out), len(reference))
    energy_ref = np.sqrt(np.mean(reference[:n] ** 2))
    assert abs(np.sqrt(np.mean(out[:n] ** 2)) - energy_ref) < 0.2 * energy_ref


def test_48k_speech_has_its_duration(test_data):
    out = load_speech(test_data / "speech_espeak_48k.wav")
    with wave.open(str(test_data / "speech_espeak_48k.wav")) as w:
        seconds = w.getnframes() / w.getframerate()
    assert abs(len(out) / SAMPLE_RATE - seconds) < 1e-3
    assert num_video_frames(len(out), 25) == round(seconds * 25)


def test_audio_track_of_a_video_file(tmp_path):
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=2", "-f", "lavfi",
           "-i", "sine=frequency=300:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-shortest", str(tmp_path / "clip.mp4"))
    out = load_speech(tmp_path / "clip.mp4")
    assert abs(len(out) / SAMPLE_RATE - 2.0) < 0.06
    assert abs(_dominant_hz(out[4000:-4000]) - 300) < 3


def test_bad_audio_raises_input_errors(tmp_path, test_data):
    (tmp_path / "empty.wav").write_bytes(b"")
    _write_wav(tmp_path / "zero.wav", np.zeros(0), 16000, 2)
    (tmp_path / "text.wav").write_text("hello, not audio at all" * 10)
    cases = {tmp_path / "missing.wav": "does not exist", tmp_path: "is a folder",
             tmp_path / "empty.wav": "empty file", tmp_path / "zero.wav": "no samples",
             tmp_path / "text.wav": "cannot read audio",
             test_data / "astronaut.png": "no audio stream"}
    for path, words in cases.items():
        with pytest.raises(InputError, match=words):
            load_speech(path)
