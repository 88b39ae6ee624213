"""Stand-ins for the EchoMimic pieces another branch provides (Whisper features, context windows, the
"echomimic" / "echomimic-acc" sampling methods), used by the tests only while those are absent.

They satisfy the interfaces the U-Net pipeline calls (docs/echomimic.md, "Interfaces"), nothing more:
the numbers they produce are not EchoMimic's. Where the real module is importable it is used instead,
so after the merge these tests run the real pieces.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import torch


class WhisperStandIn:
    """``WhisperFeatures``' interface: ``from_openai_checkpoint(path)``, ``encode(waveform_16k)`` ->
    (T_steps, L + 1, D) at 50 Hz. Each 20 ms step: the OpenAI checkpoint's ``conv1`` weights (D, 80, 3)
    applied to the step's 240 first samples, tanh, repeated over the L + 1 "layers" with a per-layer
    sign. Deterministic and waveform-dependent, not Whisper."""

    def __init__(self, dims: dict, conv: torch.Tensor):
        self.dims, self.conv = dims, conv.reshape(conv.shape[0], -1)

    @classmethod
    def from_openai_checkpoint(cls, path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return cls(checkpoint["dims"], checkpoint["model_state_dict"]["encoder.conv1.weight"].float())

    def encode(self, waveform: np.ndarray) -> torch.Tensor:
        hop = 320
        steps = max(1, -(-len(waveform) // hop))
        padded = np.zeros(steps * hop + self.conv.shape[1], np.float32)
        padded[:len(waveform)] = waveform
        frames = torch.from_numpy(np.stack([padded[i * hop:i * hop + self.conv.shape[1]] for i in range(steps)]))
        base = torch.tanh(frames @ self.conv.T)                                   # (T, D)
        layers = self.dims["n_audio_layer"] + 1
        signs = torch.tensor([(-1.0) ** k for k in range(layers)])
        return base[:, None, :] * signs[None, :, None]


def frame_tokens(features: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
    """(T, L + 1, D) -> (num_frames, 10 (L + 1), D): steps int(i * 50 / fps) - 4 .. + 5, clamped."""
    t = features.shape[0]
    rows = []
    for i in range(num_frames):
        centre = int(i * 50 / fps)
        index = torch.arange(centre - 4, centre + 6).clamp(0, t - 1)
        rows.append(features[index].reshape(-1, features.shape[-1]))
    return torch.stack(rows)


def uniform_windows(step: int, frames: int, context: int, overlap: int) -> list[list[int]]:
    """Windows of ``context`` frames every ``context - overlap``, wrapping around, shifted 2 a step."""
    if frames <= context:
        return [list(range(frames))]
    return [[(j + k + 2 * step) % frames for k in range(context)] for j in range(0, frames, context - overlap)]


def install(monkeypatch) -> dict[str, bool]:
    """Put the stand-ins where the real pieces are missing; returns which were stood in."""
    from avatar_cli.sampling import methods

    stood = {}
    if importlib.util.find_spec("avatar_cli.models.whisper_features") is None:
        module = types.ModuleType("avatar_cli.models.whisper_features")
        module.WhisperFeatures, module.frame_tokens = WhisperStandIn, frame_tokens
        monkeypatch.setitem(sys.modules, "avatar_cli.models.whisper_features", module)
        stood["whisper"] = True
    if importlib.util.find_spec("avatar_cli.sampling.context_windows") is None:
        module = types.ModuleType("avatar_cli.sampling.context_windows")
        module.uniform_windows = uniform_windows
        monkeypatch.setitem(sys.modules, "avatar_cli.sampling.context_windows", module)
        stood["windows"] = True
    for method in (methods.Method("echomimic", "EchoMimic (stand-in: DDIM, CFG)", "ddim", 30, "cfg", (2.5,),
                                  family="echomimic"),
                   methods.Method("echomimic-acc", "EchoMimic-acc (stand-in: plain DDIM)", "ddim", 6, "none",
                                  family="echomimic")):
        if method.name not in methods.METHODS:
            monkeypatch.setitem(methods.METHODS, method.name, method)
            stood[method.name] = True
    return stood
