"""Whisper-tiny audio features as EchoMimic uses them (docs/echomimic.md, "Audio features").

EchoMimic (antgroup/echomimic) conditions its U-Net on OpenAI Whisper-tiny encoder states
(``src/models/whisper/audio2feature.py`` with its vendored ``src/models/whisper/whisper/``). This
module computes the same numbers with transformers' ``WhisperFeatureExtractor`` and
``WhisperEncoder``, loading OpenAI's checkpoint layout (``audio_processor/whisper_tiny.pt``: a dict
of ``dims`` and ``model_state_dict``) by key mapping:

- log-mel: whisper's ``log_mel_spectrogram`` (``whisper/audio.py``) of the *whole* recording (STFT
  400/160 with a periodic Hann window, last frame dropped, Slaney mel filters, log10, floor at
  max - 8 over the whole recording, (x + 4) / 4): 100 frames per second. transformers'
  extractor with ``padding="longest", truncation=False`` computes exactly this (measured: 1.2e-7
  on tests/data/speech_espeak.wav).
- 30 s windows (``whisper/transcribe.py`` as EchoMimic modified it): the log-mel is cut into
  windows of 3000 frames, the last one zero-padded *in log-mel space* (value 0.0, not silence
  re-analysed), each window encoded alone, and from a window of n real frames the first n // 2
  encoder steps are kept; windows are concatenated. 50 steps per second.
- per step: the embedding output (conv stem + positional embedding) and every block's output,
  **without** the final layer norm ``ln_post``: (L + 1, D), 5 x 384 for tiny. transformers'
  ``hidden_states`` differ on the last entry (it applies ``layer_norm`` to it), so the states are
  taken by hooks on the encoder layers instead.
- per video frame i at ``fps`` (EchoMimic's default 24): the steps int(i * 50 / fps) - 4 ...
  int(i * 50 / fps) + 5, each clamped to the recording, flattened step-major to
  10 (L + 1) tokens of D (50 x 384 for tiny; ``Audio2Feature.get_sliced_feature``).

EchoMimic runs the encoder in float16 on a GPU (``transcribe``'s default) and float32 on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

SAMPLE_RATE = 16_000
MEL_FRAMES_PER_SECOND = 100
STEPS_PER_SECOND = 50
#: EchoMimic's frame rate default (infer_audio2vid*.py --fps).
DEFAULT_FPS = 24
#: steps before / after the centre step in a frame's window (audio_feat_length=[2, 2]: 2*2 before,
#: 2*(2+1) - 1 after, 10 in all).
STEPS_BEFORE, STEPS_AFTER = 4, 5

#: OpenAI's Whisper-tiny dims (EchoMimic's ``audio_processor/whisper_tiny.pt``).
WHISPER_TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
                     "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}
#: A small encoder for tests (the recorded fixture's dims): width 32, 4 heads, 2 blocks; 30 s windows
#: need the full 1500 positions.
TEST_DIMS = {**WHISPER_TINY_DIMS, "n_audio_state": 32, "n_audio_head": 4, "n_audio_layer": 2,
             "n_text_state": 32, "n_text_head": 4, "n_text_layer": 1}

# OpenAI name (inside "encoder.") -> transformers WhisperEncoder name; {i} a block number.
_BLOCK_KEYS = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}
_STEM_KEYS = {"conv1": "conv1", "conv2": "conv2", "ln_post": "layer_norm"}


def whisper_config(dims: dict) -> WhisperConfig:
    """transformers' ``WhisperConfig`` for OpenAI's ``ModelDimensions`` (n_mels, n_audio_ctx,
    n_audio_state, n_audio_head, n_audio_layer, n_vocab, n_text_ctx, n_text_state, n_text_head,
    n_text_layer); MLP width 4 x state, exact GELU, no dropout, as in OpenAI's ``whisper/model.py``.

    Raises:
        KeyError: a dimension is missing.
    """
    return WhisperConfig(
        vocab_size=int(dims["n_vocab"]), num_mel_bins=int(dims["n_mels"]),
        max_source_positions=int(dims["n_audio_ctx"]), max_target_positions=int(dims["n_text_ctx"]),
        d_model=int(dims["n_audio_state"]), encoder_layers=int(dims["n_audio_layer"]),
        encoder_attention_heads=int(dims["n_audio_head"]), encoder_ffn_dim=4 * int(dims["n_audio_state"]),
        decoder_layers=int(dims["n_text_layer"]), decoder_attention_heads=int(dims["n_text_head"]),
        decoder_ffn_dim=4 * int(dims["n_text_state"]), activation_function="gelu",
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def map_openai_encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OpenAI Whisper ``model_state_dict`` -> (WhisperEncoder state dict, skipped decoder keys).

    ``encoder.positional_embedding`` -> ``embed_positions.weight``; ``encoder.conv1/conv2`` as they
    are; ``encoder.ln_post`` -> ``layer_norm``; ``encoder.blocks.{i}.attn.query/key/value/out`` ->
    ``layers.{i}.self_attn.q_proj/k_proj/v_proj/out_proj``, ``attn_ln`` -> ``self_attn_layer_norm``,
    ``mlp.0/mlp.2`` -> ``fc1/fc2``, ``mlp_ln`` -> ``final_layer_norm``. ``decoder.*`` keys are
    returned as skipped (the text decoder is not used).

    Raises:
        ValueError: a key that is neither a known encoder key nor a decoder key.
    """
    out, skipped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith("decoder."):
            skipped.append(key)
            continue
        name = key[len("encoder."):] if key.startswith("encoder.") else None
        mapped = None
        if name == "positional_embedding":
            mapped = "embed_positions.weight"
        elif name is not None:
            stem = re.fullmatch(r"(conv1|conv2|ln_post)\.(weight|bias)", name)
            block = re.fullmatch(r"blocks\.(\d+)\.(attn\.query|attn\.key|attn\.value|attn\.out|attn_ln"
                                 r"|mlp\.0|mlp\.2|mlp_ln)\.(weight|bias)", name)
            if stem:
                mapped = f"{_STEM_KEYS[stem[1]]}.{stem[2]}"
            elif block:
                mapped = f"layers.{block[1]}.{_BLOCK_KEYS[block[2]]}.{block[3]}"
        if mapped is None:
            unknown.append(key)
        else:
            out[mapped] = value
    if unknown:
        raise ValueError(f"not an OpenAI Whisper state dict: unknown keys {unknown[:5]}"
                         + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return out, skipped


class WhisperFeatures:
    """Whisper encoder states per 50 Hz step and per video frame, as EchoMimic computes them.

    Args:
        encoder: transformers' ``WhisperEncoder`` (any device and dtype; put in eval mode).
        feature_extractor: its ``WhisperFeatureExtractor`` (default: one for the encoder's mel bins).

    Attributes:
        skipped_keys: checkpoint keys not loaded (the text decoder's), set by
            :meth:`from_openai_checkpoint`.
    """

    def __init__(self, encoder: WhisperEncoder, feature_extractor: WhisperFeatureExtractor | None = None):
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor or WhisperFeatureExtractor(
            feature_size=encoder.config.num_mel_bins, sampling_rate=SAMPLE_RATE)
        self.skipped_keys: list[str] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_openai_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                               dtype: torch.dtype = torch.float32) -> "WhisperFeatures":
        """Load OpenAI's checkpoint layout (``{"dims": {...}, "model_state_dict": {...}}``, e.g.
        EchoMimic's ``audio_processor/whisper_tiny.pt``) without running code from the file
        (``torch.load(weights_only=True)``), strictly: every encoder key is used and every encoder
        parameter is set; the decoder keys are listed in ``skipped_keys``.

        Raises:
            ValueError: the file is not of that layout, or keys are missing / unexpected.
            pickle.UnpicklingError: the file holds objects that ``weights_only`` refuses.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= set(checkpoint):
            raise ValueError(f"{path}: not an OpenAI Whisper checkpoint (expected 'dims' and 'model_state_dict')")
        encoder = WhisperEncoder(whisper_config(dict(checkpoint["dims"])))
        state, skipped = map_openai_encoder_state(checkpoint["model_state_dict"])
        expected = set(encoder.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{path}: Whisper encoder keys missing {missing[:5]}, unexpected {unexpected[:5]}")
        encoder.load_state_dict(state, strict=True)
        features = cls(encoder.to(device, dtype))
        features.skipped_keys = skipped
        return features

    @classmethod
    def from_dims(cls, dims: dict, seed: int = 0) -> "WhisperFeatures":
        """A randomly initialised encoder of the given ``dims`` (e.g. :data:`TEST_DIMS`,
        :data:`WHISPER_TINY_DIMS`), seeded without touching the global RNG (tests, ``--random-weights``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(WhisperEncoder(whisper_config(dims)))

    # ------------------------------------------------------------------ properties
    @property
    def num_states(self) -> int:
        """L + 1: the embedding output and one per encoder block (5 for tiny)."""
        return self.encoder.config.encoder_layers + 1

    @property
    def dim(self) -> int:
        """D, the encoder width (384 for tiny)."""
        return self.encoder.config.d_model

    @property
    def window_frames(self) -> int:
        """Log-mel frames per encoder window: 2 x n_audio_ctx (3000 = 30 s)."""
        return self.encoder.config.max_source_positions * 2

    # ------------------------------------------------------------------ computation
    def log_mel(self, waveform: np.ndarray) -> torch.Tensor:
        """Whisper's log-mel spectrogram of the whole recording.

        Args:
            waveform: (samples,) mono float at 16 kHz.

        Returns:
            (n_mels, samples // 160) float32 on the CPU, 100 frames per second.

        Raises:
            ValueError: fewer than 400 samples (one STFT window, 25 ms).
        """
        waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if waveform.shape[0] < 400:
            raise ValueError(f"audio of {waveform.shape[0]} samples is shorter than Whisper's 400-sample window")
        out = self.feature_extractor(waveform, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                                     return_tensors="np")
        return torch.from_numpy(np.asarray(out["input_features"][0], dtype=np.float32))

    @torch.no_grad()
    def _encode_window(self, mel: torch.Tensor) -> torch.Tensor:
        """(n_mels, window_frames) -> (n_audio_ctx, L + 1, D): embedding and block outputs (no ln_post)."""
        states: list[torch.Tensor] = []

        def before_first(_module, args, kwargs):
            states.append(args[0] if args else kwargs["hidden_states"])

        def after(_module, _args, output):
            states.append(output[0] if isinstance(output, tuple) else output)

        layers = self.encoder.layers
        handles = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
        handles += [layer.register_forward_hook(after) for layer in layers]
        try:
            param = next(self.encoder.parameters())
            self.encoder(mel[None].to(param.device, param.dtype))
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack(states, dim=2)[0]

    def encode(self, waveform: np.ndarray) -> torch.Tensor:
        """Encoder states per 50 Hz step (``Audio2Feature.audio2feat``).

        Args:
            waveform: (samples,) mono float at 16 kHz, any length (30 s windows, module docstring).

        Returns:
            (T, L + 1, D) float32 on the CPU; T = sum over 30 s windows of (log-mel frames in the
            window) // 2, i.e. about 50 per second.

        Raises:
            ValueError: fewer than 400 samples.
        """
        mel = self.log_mel(waveform)
        window = self.window_frames
        pieces = []
        for seek in range(0, mel.shape[1], window):
            segment = mel[:, seek:seek + window]
            real = segment.shape[1]
            if real < window:  # zero-padded in log-mel space, as EchoMimic's pad_or_trim of the mel
                segment = torch.nn.functional.pad(segment, (0, window - real))
            pieces.append(self._encode_window(segment)[:real // 2].float().cpu())
        return torch.cat(pieces)


def echomimic_num_frames(num_steps: int, fps: float = DEFAULT_FPS) -> int:
    """Video frames EchoMimic makes of T encoder steps (``Audio2Feature.feature2chunks``): frames
    i = 0, 1, ... until int(i * 50 / fps) exceeds T, that frame included; i.e. about 2 frames past
    the end of the speech. (Its pipelines then render min(this, L) frames, L its -L option, 1200.)"""
    i = 0
    while int(i * 50 / fps) <= num_steps:
        i += 1
    return i + 1


def frame_step_indices(num_frames: int, num_steps: int, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """(num_frames, 10) long: for frame i, steps int(i*50/fps)-4 .. int(i*50/fps)+5 clamped to
    0..T-1 (``Audio2Feature.get_sliced_feature`` with audio_feat_length [2, 2])."""
    rows = []
    for i in range(num_frames):
        centre = int(i * 50 / fps)
        rows.append([min(max(s, 0), num_steps - 1) for s in range(centre - STEPS_BEFORE, centre + STEPS_AFTER + 1)])
    return torch.tensor(rows, dtype=torch.long).reshape(num_frames, STEPS_BEFORE + STEPS_AFTER + 1)


def frame_tokens(features: torch.Tensor, num_frames: int, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """Per-frame audio tokens for EchoMimic's U-Net cross-attention.

    Args:
        features: (T, L + 1, D) from :meth:`WhisperFeatures.encode`.
        num_frames: F, video frames (e.g. :func:`echomimic_num_frames` or round(duration * fps)).
        fps: video frame rate.

    Returns:
        (F, 10 (L + 1), D): token k is step k // (L + 1) of the frame's window, state k % (L + 1)
        (50 x 384 for tiny).

    Raises:
        ValueError: no steps (T = 0).
    """
    if features.shape[0] == 0:
        raise ValueError("no audio features")
    index = frame_step_indices(num_frames, features.shape[0], fps).to(features.device)
    return features[index].reshape(num_frames, -1, features.shape[-1])
