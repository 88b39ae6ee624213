"""wav2vec2 audio features at the video frame rate (DESIGN sec. 2; Hallo's audio path).

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
