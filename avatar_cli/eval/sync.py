"""Sync-C and Sync-D (Wav2Lip's LSE-C and LSE-D): how well a video's lips follow its speech, by SyncNet.

Re-implemented from the reading of joonson/syncnet_python @ 6efbb1c (``SyncNetInstance.py:evaluate``,
``calc_pdist``; ``run_pipeline.py:crop_video``) and Wav2Lip @ 5c90fa9
(``evaluation/scores_LSE/SyncNetInstance_calc_scores.py``, ``calculate_scores_LRS.py``); no code copied.

For window i (video frames i..i+4, MFCC steps 4i..4i+19) SyncNet gives a video embedding v_i and an
audio embedding a_i. For each shift s in -V..V (V = ``vshift`` = 15 frames, 0.6 s):

    d_i(s)  = || v_i - a_{i+s} + 1e-6 ||_2      (a_j = 0 outside the track: the audio is zero-padded)
    D(s)    = mean_i d_i(s)
    Sync-D  = min_s D(s)                        (``minval``; Wav2Lip's LSE-D, lower is better)
    Sync-C  = median_s D(s) - min_s D(s)        (``conf``;  Wav2Lip's LSE-C, higher is better)
    offset  = -argmin_s D(s)                    (syncnet_python's ``vshift - minidx``, in frames)

Sign of the offset (syncnet_python's convention): the best match pairs video frame i with audio frame
i - offset. A positive offset means the sound of a frame comes ``offset`` frames *before* it (audio
leads); audio that lags the picture by k frames gives offset -k. A lip-synced video gives 0.

Inputs as syncnet_python prepares them: 25 fps video, 16 kHz mono speech as 16-bit PCM values (not
scaled to [-1, 1]: the MFCC's first coefficient and energy depend on the scale), MFCC of
``python_speech_features.mfcc`` defaults (:func:`mfcc`), windows = min(frames, floor(samples / 640)) - 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .syncnet import AUDIO_STEPS, CROP_SIZE, WINDOW_FRAMES

SAMPLE_RATE = 16_000
FPS = 25
VSHIFT = 15
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
CROP_SCALE = 0.40  # run_pipeline.py --crop_scale
CROP_PAD_VALUE = 110  # run_pipeline.py pads frames with grey 110 before cropping
SMOOTH_KERNEL = 13  # run_pipeline.py: scipy.signal.medfilt(..., kernel_size=13) of box size and centre


# =========================================================================== MFCC
def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = 26, nfft: int = 512, sample_rate: int = SAMPLE_RATE, low_hz: float = 0.0,
                   high_hz: float | None = None) -> np.ndarray:
    """(nfilt, nfft // 2 + 1) triangular filters on FFT bins, python_speech_features'
    ``get_filterbanks``: nfilt + 2 points equally spaced in mel (2595 log10(1 + f / 700)), each mapped to
    bin floor((nfft + 1) f / sample_rate); filter j rises linearly from bin b_j to b_{j+1} and falls to b_{j+2}."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    points = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(points) / sample_rate).astype(np.int64)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(bins[j], bins[j + 1]):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(bins[j + 1], bins[j + 2]):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def _dct2_ortho(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix: X_k = s_k sum_m x_m cos(pi k (2m + 1) / 2n), s_0 = sqrt(1/n),
    s_k = sqrt(2/n) (scipy.fftpack.dct(type=2, norm="ortho"))."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    matrix = np.cos(np.pi * k * (2 * m + 1) / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, numcep: int = 13, nfilt: int = 26, nfft: int = 512,
         winlen: float = 0.025, winstep: float = 0.01, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """MFCC exactly as ``python_speech_features.mfcc(signal, sample_rate)`` with its defaults (the front end
    of syncnet_python; formula from python_speech_features 0.6 ``base.py`` / ``sigproc.py``, Lyons):

    1. pre-emphasis y[0] = x[0], y[n] = x[n] - 0.97 x[n-1];
    2. frames of 400 samples every 160 (25 ms / 10 ms), rectangular window, the last frame zero-padded:
       1 + ceil((len - 400) / 160) frames (1 when len <= 400);
    3. power spectrum |rfft(frame, 512)|^2 / 512; energy = its sum per frame (0 -> float eps);
    4. 26 mel filters (:func:`mel_filterbank`, 0..8 kHz), 0 -> eps, natural log;
    5. orthonormal DCT-II, first 13 coefficients, lifter 1 + (22 / 2) sin(pi n / 22);
    6. coefficient 0 replaced by log(energy).

    Args:
        signal: (samples,) mono; syncnet_python passes int16 PCM values (not scaled to [-1, 1]).

    Returns:
        (frames, numcep) float64.
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    x = np.append(x[:1], x[1:] - preemph * x[:-1])
    frame_len = int(math.floor(winlen * sample_rate + 0.5))  # round half up, as sigproc.round_half_up
    frame_step = int(math.floor(winstep * sample_rate + 0.5))
    n = len(x)
    count = 1 if n <= frame_len else 1 + int(math.ceil((n - frame_len) / frame_step))
    padded = np.concatenate([x, np.zeros(max(0, (count - 1) * frame_step + frame_len - n))])
    index = np.arange(frame_len)[None, :] + frame_step * np.arange(count)[:, None]
    frames = padded[index]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = np.log(feat) @ _dct2_ortho(nfilt).T[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    cep = cep * lift
    cep[:, 0] = np.log(energy)
    return cep


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> the int16 PCM values ffmpeg's pcm_s16le writes (x 32768, rounded,
    clipped), as float64: what syncnet_python's ``wavfile.read`` returns."""
    x = np.asarray(samples, dtype=np.float64)
    return np.clip(np.rint(x * 32768.0), -32768, 32767)


# =========================================================================== face track and crop
def medfilt(values: np.ndarray, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """``scipy.signal.medfilt(values, kernel)``: running median with **zero padding** at both ends (so
    the first and last kernel // 2 values lean towards 0, as in syncnet_python's crop)."""
    v = np.asarray(values, dtype=np.float64)
    half = kernel // 2
    padded = np.concatenate([np.zeros(half), v, np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    return np.median(windows, axis=1)


def fill_boxes(boxes: np.ndarray) -> np.ndarray:
    """(T, 4) x1, y1, x2, y2 with NaN rows for frames without a face -> every row filled by linear
    interpolation between detections (held constant before the first and after the last), as
    syncnet_python's track interpolates (``interp1d``) between the frames it detected.

    Raises:
        ValueError: no frame has a box.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    have = ~np.isnan(boxes).any(axis=1)
    if not have.any():
        raise ValueError("no face box in any frame")
    t = np.arange(len(boxes))
    return np.stack([np.interp(t, t[have], boxes[have, j]) for j in range(4)], axis=1)


def track_crops(boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """Crop windows from per-frame face boxes, syncnet_python's ``crop_video`` rule.

    s = max(w, h) / 2 and the box centre (x, y), each median-filtered over 13 frames (:func:`medfilt`);
    the crop is rows y - s .. y + s (1 + 2 cs), columns x - s (1 + cs) .. x + s (1 + cs) (cs = 0.4): a
    square of side 2 s (1 + cs) from the box top down past the chin, cut from the frame padded by
    int(s (1 + 2 cs)) pixels of grey 110, with int() truncation of each edge as there.

    Args:
        boxes: (T, 4) x1, y1, x2, y2 in pixels, every row filled (:func:`fill_boxes`).

    Returns:
        (T, 5) int64: pad, top, bottom, left, right, in the padded frame's pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    s = medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2)
    y = medfilt((boxes[:, 1] + boxes[:, 3]) / 2)
    x = medfilt((boxes[:, 0] + boxes[:, 2]) / 2)
    pad = (s * (1 + 2 * crop_scale)).astype(np.int64)
    my, mx = y + pad, x + pad
    top = (my - s).astype(np.int64)
    bottom = (my + s * (1 + 2 * crop_scale)).astype(np.int64)
    left = (mx - s * (1 + crop_scale)).astype(np.int64)
    right = (mx + s * (1 + crop_scale)).astype(np.int64)
    return np.stack([pad, top, bottom, left, right], axis=1)


def crop_frame(frame: np.ndarray, window: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """One (H, W, 3) uint8 frame -> its (size, size, 3) uint8 crop (a :func:`track_crops` row), resized
    bilinearly as ``cv2.resize`` (``media.face_crop.resize_linear``)."""
    from ..media.face_crop import resize_linear

    pad, top, bottom, left, right = (int(v) for v in window)
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=CROP_PAD_VALUE)
    face = padded[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)]
    if face.size == 0:
        face = padded
    return resize_linear(np.ascontiguousarray(face), (size, size))


# =========================================================================== scores
@dataclass
class SyncResult:
    """What SyncNet says about one face track.

    Attributes:
        offset: frames, syncnet_python's sign (module docstring); in -vshift..vshift.
        min_dist: Sync-D (LSE-D), the smallest mean distance over the shifts.
        confidence: Sync-C (LSE-C), median minus smallest mean distance.
        mean_dists: (2 vshift + 1,) D(s) for shifts s = -vshift..vshift (index vshift - offset is the minimum).
        windows: the number of 5-frame windows compared.
    """

    offset: int
    min_dist: float
    confidence: float
    mean_dists: np.ndarray = field(repr=False)
    windows: int = 0

    def to_dict(self) -> dict:
        return {"sync_c": round(float(self.confidence), 4), "sync_d": round(float(self.min_dist), 4),
                "offset_frames": int(self.offset), "sync_windows": int(self.windows)}


def shift_distances(video_feat: torch.Tensor, audio_feat: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """(N, 2 vshift + 1) distances d_i(s) = || v_i - a_{i+s} + 1e-6 ||, a zero outside 0..N-1
    (``calc_pdist``: audio features zero-padded by vshift rows, ``F.pairwise_distance``).

    Args:
        video_feat, audio_feat: (N, D) embeddings of the same windows.
    """
    n = video_feat.shape[0]
    padded = torch.nn.functional.pad(audio_feat, (0, 0, vshift, vshift))
    index = torch.arange(n)[:, None] + torch.arange(2 * vshift + 1)[None, :]
    return torch.nn.functional.pairwise_distance(video_feat[:, None, :].expand(-1, 2 * vshift + 1, -1),
                                                 padded[index])


def scores_from_distances(dists: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """Offset, Sync-D and Sync-C from (N, 2 vshift + 1) distances (``evaluate``'s arithmetic:
    ``torch.min`` takes the first minimum, ``torch.median`` the lower middle value)."""
    mean = dists.mean(dim=0)
    minval, minidx = torch.min(mean, 0)
    conf = torch.median(mean) - minval
    return SyncResult(int(vshift - int(minidx)), float(minval), float(conf), mean.numpy().astype(np.float64),
                      int(dists.shape[0]))


def embed(net, crops: np.ndarray, audio_pcm: np.ndarray, batch_size: int = 20,
          device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet embeddings of every window, as syncnet_python's ``evaluate`` batches them.

    Args:
        net: :class:`~avatar_cli.eval.syncnet.SyncNetV2` (or any module with ``forward_lip`` and
            ``forward_aud`` of the same shapes).
        crops: (T, 224, 224, 3) uint8 **BGR** face crops at 25 fps.
        audio_pcm: (samples,) 16 kHz speech as int16 PCM values (:func:`pcm16`).

    Returns:
        (video (N, D), audio (N, D)) float32 on the CPU, N = min(T, floor(samples / 640)) - 5.

    Raises:
        ValueError: fewer than 6 frames (or 0.24 s of speech) -- no window to compare.
    """
    cc = torch.from_numpy(mfcc(audio_pcm).T.astype(np.float32))[None, None]  # (1, 1, 13, steps)
    n = min(len(crops), math.floor(len(audio_pcm) / SAMPLES_PER_FRAME)) - WINDOW_FRAMES
    if n <= 0:
        raise ValueError(f"{len(crops)} frames and {len(audio_pcm) / SAMPLE_RATE:.2f} s of speech: SyncNet needs "
                         f"at least {WINDOW_FRAMES + 1} frames (0.24 s) of both")
    video_out, audio_out = [], []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            clip = np.stack([crops[i:i + WINDOW_FRAMES] for i in idx])  # (B, 5, H, W, 3)
            lip = torch.from_numpy(clip).to(torch.float32).permute(0, 4, 1, 2, 3)
            aud = torch.cat([cc[..., MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + AUDIO_STEPS] for i in idx])
            video_out.append(net.forward_lip(lip.to(device)).float().cpu())
            audio_out.append(net.forward_aud(aud.to(device)).float().cpu())
    return torch.cat(video_out), torch.cat(audio_out)


def sync_scores(net, crops: np.ndarray, audio_pcm: np.ndarray, vshift: int = VSHIFT, batch_size: int = 20,
                device: str | torch.device = "cpu") -> SyncResult:
    """Sync-C, Sync-D and the offset of one face track (:func:`embed`, :func:`shift_distances`,
    :func:`scores_from_distances`). Inputs as :func:`embed`."""
    video_feat, audio_feat = embed(net, crops, audio_pcm, batch_size, device)
    return scores_from_distances(shift_distances(video_feat, audio_feat, vshift), vshift)
