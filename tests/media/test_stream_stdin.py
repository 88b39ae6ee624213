"""Speech on standard input (``avatar render portrait.png - --stream``): the first chunk comes out while
the speech is still arriving, and the samples are the input's (``media/stream_input.py:pcm_chunks``)."""

import io
import os
import subprocess
import threading
import time
import wave

import imageio_ffmpeg
import numpy as np
import pytest

from avatar_cli.media.stream import pcm_chunks, wav_stream_header


def _wav(pcm: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def _slow_read(data: bytes, first: int, piece: int, gap: float = 0.1, **kwargs):
    """pcm_chunks("-") on a pipe a thread writes ``data`` into: ``first`` bytes, then ``piece`` bytes every
    ``gap`` s. Returns (seconds from the first write to the first chunk, seconds the writing took, samples)."""
    r, w = os.pipe()
    times = {}

    def writer():
        with os.fdopen(w, "wb", buffering=0) as f:
            times["start"] = time.perf_counter()
            f.write(data[:first])
            for at in range(first, len(data), piece):
                time.sleep(gap)
                f.write(data[at:at + piece])
            times["end"] = time.perf_counter()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    chunks, first_out = [], None
    with os.fdopen(r, "rb") as stdin:
        for chunk in pcm_chunks("-", stdin=stdin, **kwargs):
            first_out = time.perf_counter() if first_out is None else first_out
            chunks.append(chunk)
    thread.join(30)
    return first_out - times["start"], times["end"] - times["start"], np.concatenate(chunks)


@pytest.mark.parametrize("input_format", [None, "wav"])
def test_wav_on_stdin_comes_out_while_it_arrives(input_format):
    """A WAV header + 0.1 s of samples, then 0.1 s every 0.1 s (2 s in all): before, ffmpeg held the first
    samples back for its probe and S/PDIF check (64 KiB = 2 s of 16 kHz speech); now the first 80 ms chunk
    leaves with the first write, and the samples are the input's, bit for bit."""
    pcm = (np.random.default_rng(0).standard_normal(32000) * 3000).astype("<i2")
    data = _wav(pcm, 16000)
    first, written, samples = _slow_read(data, 44 + 3200, 3200, input_format=input_format)
    assert written > 1.8
    assert first < 0.5 * written  # measured: ~0.01 s (before this change: ~3.6 s of a 6 s input)
    np.testing.assert_array_equal(samples, pcm / 32768.0)


def test_wav_at_48k_stereo_and_flac_decode_as_from_a_file(tmp_path):
    """Other PCM layouts go to ffmpeg's raw demuxer after the header read here; a FLAC goes to ffmpeg whole
    (the bytes read to look for a WAV header first): both decode to the samples the file path gives."""
    t = np.arange(48000 * 2) / 48000
    tone = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 8000
    wav48 = _wav(tone.astype("<i2").reshape(-1), 48000, channels=2)
    (tmp_path / "a.wav").write_bytes(wav48)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(tmp_path / "a.wav"),
                    str(tmp_path / "a.flac")], check=True)
    for name in ("a.wav", "a.flac"):
        data = (tmp_path / name).read_bytes()
        expected = np.concatenate(list(pcm_chunks(tmp_path / name)))
        first, written, samples = _slow_read(data, 4000, 19200)
        np.testing.assert_array_equal(samples, expected)
        if name == "a.wav":
            assert first < written  # measured: ~0.5 s of 6 s (before: ~5.5 s, after the whole input)


def test_wav_stream_header_reads_exactly_the_header():
    pcm = np.arange(100, dtype="<i2")
    data = _wav(pcm, 22050, channels=1)
    stream = io.BytesIO(data)
    head, layout = wav_stream_header(stream.read)
    assert head == data[:44] and stream.tell() == 44
    assert layout == {"format": "s16le", "rate": 22050, "channels": 1, "data_bytes": 200}
    stream = io.BytesIO(b"ID3\x03" + bytes(100))  # an MP3: the bytes read go on to ffmpeg
    head, layout = wav_stream_header(stream.read)
    assert layout is None and head == b"ID3\x03" + bytes(8)
