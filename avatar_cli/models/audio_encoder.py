"""wav2vec2 audio features at the video frame rate (Hallo's audio path; docs/architecture.md, "Data flow").

transformers' ``Wav2Vec2Model`` (facebook/wav2vec2-base-960h layout) with one change of time
base: the convolutional feature encoder's 50 Hz output is linearly interpolated to the number of
video frames *before* the feature projection and the transformer, so that every transformer
hidden state is one video frame. All transformer layers' outputs are kept (12 for the base model).
Then frame f sees the frames f-2..f+2, clamped at the edges (OSA-LCM sec. 3, m = 2).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

SAMPLE_RATE = 16_000


@contextmanager
def _conv_features_resampled_to(model: Wav2Vec2Model, num_frames: int):
    """Interpolate the conv feature encoder's output (B, 512, T_50Hz) to (B, 512, num_frames)."""

    def hook(_module, _inputs, output):
        return F.interpolate(output, size=num_frames, mode="linear", align_corners=True)

    handle = model.feature_extractor.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def encode_audio(model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor,
                 waveform: np.ndarray, num_frames: int, pad_samples: int = 0) -> torch.Tensor:
    """Per-video-frame wav2vec2 hidden states.

    Args:
        model: a ``Wav2Vec2Model`` (eval mode).
        feature_extractor: its ``Wav2Vec2FeatureExtractor`` (normalises the waveform).
        waveform: (samples,) mono float32 at 16 kHz.
        num_frames: video frames the audio spans (round(duration_s * fps)), padding included.
        pad_samples: silence appended after normalisation (Hallo pads the audio to whole clips).

    Returns:
        (num_frames, num_hidden_layers, hidden_size) float32 on the model's device.

    Raises:
        ValueError: if the waveform is shorter than the conv encoder's receptive field (400
            samples, 25 ms); callers pad short audio first.
    """
    if waveform.shape[0] + pad_samples < 400:
        raise ValueError(f"audio of {waveform.shape[0]} samples is shorter than wav2vec2's 400-sample window")
    inputs = feature_extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    input_values = inputs.input_values
    if pad_samples:
        input_values = F.pad(input_values, (0, pad_samples))
    input_values = input_values.to(model.device, model.dtype)
    with _conv_features_resampled_to(model, num_frames):
        out = model(input_values, output_hidden_states=True)
    # hidden_states[0] is the transformer's input; [1:] are the outputs of its layers.
    return torch.stack(out.hidden_states[1:], dim=2)[0].float()


def frame_windows(features: torch.Tensor, frame_indices: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Audio features of the frames around each requested frame, clamped at the edges.

    Args:
        features: (num_frames, layers, dim) from :func:`encode_audio`.
        frame_indices: (n,) long, video frame numbers (may exceed the last frame; clamped).
        radius: m in OSA-LCM sec. 3; the window has 2m + 1 frames.

    Returns:
        (n, 2*radius + 1, layers, dim).
    """
    offsets = torch.arange(-radius, radius + 1, device=frame_indices.device)
    index = (frame_indices[:, None] + offsets[None]).clamp(0, features.shape[0] - 1)
    return features[index.to(features.device)]


def _geometry(model: Wav2Vec2Model) -> tuple[int, int]:
    """(receptive field, stride) in samples of the convolutional feature encoder (400, 320 for base)."""
    field, stride = 1, 1
    for kernel, step in zip(model.config.conv_kernel, model.config.conv_stride):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


class _FixedNorm(torch.nn.Module):
    """The first conv layer's GroupNorm (one group per channel: a norm over time) with statistics of
    the whole recording instead of the window it sees."""

    def __init__(self, norm: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.norm, self.mean, self.std = norm, mean[None, :, None], (var[None, :, None] + norm.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std * self.norm.weight[None, :, None] + self.norm.bias[None, :, None]


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array backed by an unlinked temporary file (page cache, not resident memory)."""
    import os
    import tempfile

    fd, name = tempfile.mkstemp(prefix="avatar-features-", suffix=".f32")
    os.close(fd)
    try:
        return np.memmap(name, dtype=np.float32, mode="w+", shape=shape)
    finally:
        os.unlink(name)


@torch.no_grad()
def encode_audio_windowed(model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor,
                          waveform: np.ndarray, num_frames: int, pad_samples: int = 0,
                          window_frames: int = 750, margin_frames: int = 100,
                          chunk_samples: int = 320 * 500) -> torch.Tensor:
    """:func:`encode_audio` for long speech, with memory flat in the length.

    Everything up to the transformer is computed exactly as one pass would, window by window: the
    waveform normalised with the whole recording's mean and variance, the convolutional feature
    encoder on sample windows aligned to its stride (its first layer's GroupNorm with the whole
    recording's per-channel statistics, gathered in a first pass), the 50 Hz features interpolated
    at the global positions of the video frames. Only the transformer runs on windows of
    ``window_frames`` frames with ``margin_frames`` of context on each side, keeping each window's
    own frames; that is where the features can differ from one pass (tests measure it). Audio and
    features live in memory-mapped temporary files.

    Args:
        waveform: (samples,) mono float32 at 16 kHz (may be memory-mapped).
        num_frames: video frames, padding included.
        pad_samples: silence appended after normalisation (Hallo's padding to whole clips).

    Returns:
        (num_frames, num_hidden_layers, hidden_size) float32 on the CPU, memory-mapped.
    """
    device, dtype = model.device, model.dtype
    extractor = model.feature_extractor
    field, stride = _geometry(model)
    length = waveform.shape[0]
    total = length + pad_samples

    def samples(s0: int, s1: int) -> np.ndarray:  # the normalised, padded waveform [s0, s1)
        chunk = np.zeros(s1 - s0, np.float64)
        real = np.asarray(waveform[s0:min(s1, length)], np.float64)
        if feature_extractor.do_normalize:
            real = (real - mean) / np.sqrt(var + 1e-7)
        chunk[:real.shape[0]] = real
        return chunk

    # 1. the whole recording's mean and variance (Wav2Vec2FeatureExtractor's normalisation)
    acc, acc2 = 0.0, 0.0
    for s0 in range(0, length, chunk_samples):
        block = np.asarray(waveform[s0:s0 + chunk_samples], np.float64)
        acc, acc2 = acc + block.sum(), acc2 + (block ** 2).sum()
    mean = acc / length
    var = max(acc2 / length - mean ** 2, 0.0)

    # 2. per-channel statistics of the first conv layer's output (its GroupNorm normalises over time)
    first = extractor.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    fixed = None
    if isinstance(norm, torch.nn.GroupNorm):
        kernel, step = first.conv.kernel_size[0], first.conv.stride[0]
        positions = (total - kernel) // step + 1
        s_sum = torch.zeros(first.conv.out_channels, dtype=torch.float64)
        s_sq = torch.zeros_like(s_sum)
        per_chunk = chunk_samples // step
        for p0 in range(0, positions, per_chunk):
            p1 = min(p0 + per_chunk, positions)
            x = torch.from_numpy(samples(p0 * step, (p1 - 1) * step + kernel)).to(device, dtype)
            y = first.conv(x[None, None]).double().cpu()[0]
            s_sum += y.sum(dim=1)
            s_sq += (y ** 2).sum(dim=1)
        m = s_sum / positions
        fixed = _FixedNorm(norm, m.to(device, dtype), (s_sq / positions - m ** 2).clamp(min=0).to(device, dtype))

    # 3. the 50 Hz conv features, exact, by stride-aligned sample windows
    conv_frames = (total - field) // stride + 1
    per_chunk = max(1, chunk_samples // stride)
    conv = None
    if fixed is not None:
        first.layer_norm = fixed
    try:
        for j0 in range(0, conv_frames, per_chunk):
            j1 = min(j0 + per_chunk, conv_frames)
            x = torch.from_numpy(samples(j0 * stride, (j1 - 1) * stride + field)).to(device, dtype)
            y = extractor(x[None])[0].float().cpu()                  # (C, j1 - j0)
            if conv is None:
                conv = _scratch((conv_frames, y.shape[0]))
            conv[j0:j1] = y.T.numpy()
    finally:
        if fixed is not None:
            first.layer_norm = norm

    # 4. frames at their global positions, the transformer by windows with context
    scale = (conv_frames - 1) / (num_frames - 1) if num_frames > 1 else 0.0
    out = None
    dummy = torch.zeros(1, field, device=device, dtype=dtype)
    for f0 in range(0, num_frames, window_frames):
        f1 = min(f0 + window_frames, num_frames)
        a, b = max(0, f0 - margin_frames), min(num_frames, f1 + margin_frames)
        pos = torch.arange(a, b, dtype=torch.float64) * scale
        lo = pos.floor().long().clamp(max=conv_frames - 1)
        hi = (lo + 1).clamp(max=conv_frames - 1)
        base = int(lo[0])
        block = torch.from_numpy(np.asarray(conv[base:int(hi[-1]) + 1]))
        w = (pos - lo.double()).float()[:, None]
        frames = (1 - w) * block[lo - base] + w * block[hi - base]   # (b - a, C)
        frames = frames.T[None].to(device, dtype)

        def replace(_module, _inputs, _output, frames=frames):
            return frames

        handle = extractor.register_forward_hook(replace)
        try:
            hidden = model(dummy, output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        features = torch.stack(hidden[1:], dim=2)[0].float().cpu()
        if out is None:
            out = _scratch((num_frames, *features.shape[1:]))
        out[f0:f1] = features[f0 - a:f1 - a].numpy()
    return torch.from_numpy(out)

