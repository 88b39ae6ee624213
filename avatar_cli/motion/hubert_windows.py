"""Windowing of Ditto's streaming HuBERT encoder (``hubert_streaming_fix_kv.onnx``) into 25 fps features.

Re-implemented from Ditto's ``core/atomic_components/wav2feat.py`` (``Wav2FeatHubert.__call__`` and
``wav2feat``) and the chunking loop of ``inference.py:run`` (antgroup/ditto-talkinghead @ e9191cf); DITTO
notes section 5.

The encoder maps one window of 6480 samples at 16 kHz (3 past + 5 current + 2 future frames of 640 samples,
plus 80) to (20, 1024) features at 50 Hz; rows [-14:-4] averaged in pairs give the 5 current frames at 25 fps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from avatar_cli.errors import InputError, WeightsError

SAMPLE_RATE = 16000
FPS = 25
FRAME_SAMPLES = 640  # 16000 / 25
CHUNK = (3, 5, 2)  # past, current, future frames per window
WINDOW = int(sum(CHUNK) * 0.04 * 16000) + 80  # 6480
HOP = CHUNK[1] * FRAME_SAMPLES  # 3200 samples = 5 frames
FEATURE_DIM = 1024

Encoder = Callable[[np.ndarray], np.ndarray]


def num_frames(num_samples: int) -> int:
    """Video frames for ``num_samples`` of 16 kHz audio: ``ceil(samples / 16000 * 25)`` (Ditto's ``num_f``)."""
    return math.ceil(num_samples / SAMPLE_RATE * FPS)


def window_features(encoding: np.ndarray) -> np.ndarray:
    """(20, 1024) encoder output -> (5, 1024) features: rows [-14:-4] as (5, 2, 1024), mean over the pairs."""
    enc = np.asarray(encoding, dtype=np.float32)
    s, e = -sum(CHUNK[1:]) * 2, -CHUNK[2] * 2
    return enc[s:e].reshape(CHUNK[1], 2, enc.shape[-1]).mean(1)


def offline_window_starts(n_frames: int) -> list[int]:
    """Start samples of the offline windows in the padded audio: ``int(i * 0.04 * 16000)``, i = 0, 5, 10, ...

    The float expression is kept on purpose (it is what produced the training features): it gives
    ``640 * i - 1`` for some i (i = 1615, 3205, 3230, 3255, 6410, ...; i = 1615 starts at 1033599, not 1033600).
    """
    return [int(i * 0.04 * 16000) for i in range(0, n_frames, CHUNK[1])]


def offline_features(audio: np.ndarray, encode: Encoder) -> np.ndarray:
    """HuBERT features for a whole clip (Ditto's ``Wav2FeatHubert.wav2feat``).

    The audio is padded with ``6480 - 4480 = 2000`` zeros before and 6480 after; windows of 6480 samples start
    at :func:`offline_window_starts`; each gives 5 frames (:func:`window_features`); the result is cut to
    :func:`num_frames`.

    Args:
        audio: (S,) float32 mono speech at 16 kHz, raw (no normalisation).
        encode: ``window (6480,) float32 -> (20, 1024)``, e.g. :class:`OnnxHubert`.

    Returns:
        (ceil(S / 640), 1024) float32.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = num_frames(len(audio))
    pre = WINDOW - int(sum(CHUNK[1:]) * 0.04 * 16000)
    padded = np.concatenate([np.zeros(pre, np.float32), audio, np.zeros(WINDOW, np.float32)])
    feats = [window_features(encode(padded[s : s + WINDOW])) for s in offline_window_starts(n)]
    if not feats:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return np.concatenate(feats, 0)[:n]


def silence_features(encode: Encoder, n_frames: int) -> np.ndarray:
    """Features of ``n_frames * 640`` zero samples (the streaming buffer's prefill): (n_frames, 1024)."""
    return offline_features(np.zeros(n_frames * FRAME_SAMPLES, dtype=np.float32), encode)


def stream_windows(audio: np.ndarray) -> Iterator[np.ndarray]:
    """The 6480-sample windows Ditto's streaming mode sends (``inference.py:run`` with ``online_mode``).

    ``3 * 640`` zeros are prepended; windows start every 3200 samples while the start is inside the padded
    audio, and a window running past the end is zero-padded to 6480. Each window gives 5 frames.
    """
    padded = np.concatenate([np.zeros(CHUNK[0] * FRAME_SAMPLES, np.float32), np.asarray(audio, np.float32).reshape(-1)])
    for s in range(0, len(padded), HOP):
        w = padded[s : s + WINDOW]
        if len(w) < WINDOW:
            w = np.pad(w, (0, WINDOW - len(w)))
        yield w


class StreamChunker:
    """Incremental :func:`stream_windows`: push audio as it arrives, get the windows that are complete.

    The same windows as :func:`stream_windows` over the concatenated audio: a window is returned once its
    6480 samples are in (the first needs 6480 - 1920 = 4560 samples of audio), and :meth:`flush` returns the
    remaining zero-padded ones.
    """

    def __init__(self):
        self.buf = np.zeros(CHUNK[0] * FRAME_SAMPLES, np.float32)
        self.ended = False

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Add (n,) float32 samples at 16 kHz; returns the complete (6480,) windows, in order."""
        self.buf = np.concatenate([self.buf, np.asarray(samples, np.float32).reshape(-1)])
        out = []
        while len(self.buf) >= WINDOW:
            out.append(self.buf[:WINDOW].copy())
            self.buf = self.buf[HOP:]
        return out

    def flush(self) -> list[np.ndarray]:
        """The windows that start inside the remaining audio, zero-padded to 6480."""
        if self.ended:
            return []
        self.ended = True
        out = []
        while len(self.buf) > 0:
            w = self.buf[:WINDOW]
            out.append(np.pad(w, (0, WINDOW - len(w))))
            self.buf = self.buf[HOP:]
        return out


class OnnxHubert:
    """Ditto's ``hubert_streaming_fix_kv.onnx`` through onnxruntime: ``(6480,) float32 -> (20, 1024)``.

    Input ``input_values`` (1, 6480) float32 raw waveform, output ``encoding_out``.

    Args:
        path: the ONNX file.
        providers: onnxruntime providers (default: CUDA if available, then CPU).

    Raises:
        WeightsError: onnxruntime is missing or the file cannot be found/read.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeightsError("Ditto's HuBERT features need onnxruntime: pip install onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"HuBERT ONNX file not found: {path}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise WeightsError(f"cannot load HuBERT ONNX {path}: {str(e).splitlines()[0] if str(e) else e}") from e

    def __call__(self, window: np.ndarray) -> np.ndarray:
        w = np.asarray(window, dtype=np.float32).reshape(1, -1)
        if w.shape[1] != WINDOW:
            raise InputError(f"HuBERT window must have {WINDOW} samples, got {w.shape[1]}")
        return np.asarray(self.session.run(["encoding_out"], {"input_values": w})[0], dtype=np.float32).reshape(-1, FEATURE_DIM)


class RandomHubert:
    """A seeded random stand-in for the HuBERT encoder, for ``--random-weights`` (tests, benchmarks):
    ``(6480,) -> (20, 1024)``, the window's 20 hops of 320 samples through a fixed random projection
    and tanh. Its features depend on the speech (so the motion does), but carry no phonetics.

    Args:
        seed: seeds the projection.
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.projection = (rng.standard_normal((320, FEATURE_DIM)) / np.sqrt(320)).astype(np.float32)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        w = np.asarray(window, dtype=np.float32).reshape(-1)
        if w.shape[0] != WINDOW:
            raise InputError(f"HuBERT window must have {WINDOW} samples, got {w.shape[0]}")
        hops = w[: 20 * 320].reshape(20, 320)
        return np.tanh(10 * hops @ self.projection)
