"""wav2vec2 at the video frame rate, checked against a hand composition of transformers' modules."""

import numpy as np
import torch
import torch.nn.functional as F

from avatar_cli.models.audio_encoder import encode_audio, frame_windows
from avatar_cli.models.bundle import AvatarModels


def _manual(model, input_values, num_frames):
    conv = model.feature_extractor(input_values)                         # (1, C, T50)
    conv = F.interpolate(conv, size=num_frames, mode="linear", align_corners=True).transpose(1, 2)
    hidden, _ = model.feature_projection(conv)
    enc = model.encoder
    hidden = enc.layer_norm(hidden + enc.pos_conv_embed(hidden))
    outs = []
    for layer in enc.layers:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
        outs.append(hidden)
    return torch.stack(outs, dim=2)[0]


def test_features_are_interpolated_before_the_transformer():
    models = AvatarModels.from_preset("tiny")
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)  # 2 s
    feats = encode_audio(models.audio_encoder, models.feature_extractor, wave, num_frames=50)
    assert feats.shape == (50, 2, 32)
    values = models.feature_extractor(wave, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        expected = _manual(models.audio_encoder, values, 50)
        torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
        # at the conv encoder's own rate (99 frames for 2 s) interpolation is the identity, so the
        # features are the library's plain forward pass
        plain = models.audio_encoder(values, output_hidden_states=True).hidden_states
        native = torch.stack(plain[1:], dim=2)[0]
        torch.testing.assert_close(encode_audio(models.audio_encoder, models.feature_extractor, wave, native.shape[0]),
                                   native, rtol=1e-4, atol=1e-5)


def test_frame_windows_clamp_at_the_edges():
    features = torch.arange(6.0)[:, None, None].expand(6, 2, 3)
    windows = frame_windows(features, torch.tensor([0, 1, 5, 7]))
    assert windows.shape == (4, 5, 2, 3)
    expected = [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [3, 4, 5, 5, 5], [5, 5, 5, 5, 5]]
    assert windows[:, :, 0, 0].tolist() == expected
