"""The U-Net family's speech features, a mixin of :class:`~avatar_cli.pipelines.unet.UNetPipeline` (moved
from ``pipelines/unet.py``): wav2vec2 features per video frame (Hallo, OSA-LCM; ``models/audio_encoder.py``)
or Whisper's 50 Hz steps (EchoMimic; ``models/whisper_features.py``), the optional separated vocals
(``media/vocals.py``), and precomputed features files (``avatar audio encode``; ``media/features.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError
from ..media.audio import SAMPLE_RATE, Waveform, load_speech, num_video_frames
from ..media.features import fingerprint, load_features
from ..models.audio_encoder import encode_audio, encode_audio_windowed
from ..weights import sha256_file

if TYPE_CHECKING:
    from ..options import RenderJob


class AudioFeaturesMixin:
    """Speech -> per-frame features for :class:`UNetPipeline` (which supplies ``models``, ``source`` and ``warn``)."""

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray, fps: float, pad_to_multiple: int | None = None,
                       window_frames: int = 750, margin_frames: int = 100) -> torch.Tensor:
        """(samples,) 16 kHz mono -> (frames, layers, dim) wav2vec2 features at ``fps``; for the
        EchoMimic family (T_steps, L + 1, D) Whisper features at 50 Hz (``WhisperFeatures.encode``),
        turned into per-frame tokens by :meth:`frame_audio_tokens`.

        ``pad_to_multiple``: append silence up to a whole number of clips of that many frames
        before encoding, as Hallo does (the result then has the padded frame count). Speech longer
        than ``window_frames + 2 * margin_frames`` frames (38 s at 25 fps) is encoded by windows
        with memory flat in its length (``encode_audio_windowed``).
        """
        if self.models.settings.audio_encoder == "whisper":  # EchoMimic: 50 Hz Whisper steps, any fps
            return self.models.audio_encoder.encode(np.asarray(waveform, dtype=np.float32))
        frames = num_video_frames(waveform.shape[0], fps)
        pad = max(0, 400 - waveform.shape[0])  # shorter than wav2vec2's first conv window
        if pad_to_multiple:
            extra = -frames % pad_to_multiple
            frames += extra
            pad = max(pad, round(extra * SAMPLE_RATE / fps))
        model, extractor = self.models.audio_encoder, self.models.feature_extractor
        if frames > window_frames + 2 * margin_frames:
            return encode_audio_windowed(model, extractor, waveform, frames, pad, window_frames, margin_frames)
        return encode_audio(model, extractor, np.asarray(waveform), frames, pad)

    def separated_vocals(self, audio_path: str | Path, num_samples: int | None = None) -> Waveform:
        """The recording's vocals, (samples,) float32 at 16 kHz, padded or trimmed to ``num_samples``
        (``media/vocals.py``; the model from ``<weights>/audio_separator`` or the manifest).

        Raises:
            InputError: audio-separator not installed.
            WeightsError: the separator's model is not found.
        """
        from ..media.vocals import check_separator_installed, find_vocal_model, separate_vocals

        check_separator_installed()
        return separate_vocals(audio_path, find_vocal_model(self.models.source), num_samples)

    def audio_fingerprint(self) -> str:
        """A fingerprint of the audio encoder's weights (features files record and check it)."""
        if not hasattr(self, "_audio_fingerprint"):
            self._audio_fingerprint = fingerprint(self.models.audio_encoder)
        return self._audio_fingerprint

    def audio_padding(self, clip_frames: int) -> int | None:
        """The ``pad_to_multiple`` of :meth:`audio_features` for clips of ``clip_frames``: the clip
        length for the Hallo family (silence to whole clips before wav2vec2), else None."""
        return clip_frames if self.models.settings.audio_padding == "clip" else None

    def encode_audio_file(self, audio_path: str | Path, fps: float = 25.0, clip_frames: int = 16,
                          separate_vocals: bool = False) -> tuple[torch.Tensor, dict[str, str]]:
        """Decode a speech file and compute its per-frame features as render would, with the
        metadata a features file records (see ``media/features.py``). ``separate_vocals``: from
        the recording's separated vocals, as ``render --separate-vocals`` computes them."""
        from .. import __version__

        waveform = load_speech(audio_path)
        if separate_vocals:
            waveform = self.separated_vocals(audio_path, waveform.shape[0])
        pad = self.audio_padding(clip_frames)
        features = self.audio_features(waveform, fps, pad)
        frames = num_video_frames(waveform.shape[0], fps)
        meta = {"fps": repr(float(fps)), "sample_rate": str(SAMPLE_RATE), "model": self.audio_fingerprint(),
                "audio_sha256": sha256_file(audio_path), "frames": str(frames),
                "padding": str(features.shape[0] - frames), "vocals": "separated" if separate_vocals else "original",
                "avatar_cli_version": __version__}
        return features, meta

    def _features_for(self, job: "RenderJob") -> torch.Tensor | None:
        """The job's precomputed features, checked against this render (None: compute them)."""
        if job.audio_features is None:
            return None
        if self.models.settings.audio_encoder == "whisper":
            raise InputError("--audio-features files hold wav2vec2 features; the EchoMimic family computes its "
                             "Whisper features from the speech: leave --audio-features out")
        opts = job.options
        features, meta = load_features(job.audio_features)
        name = job.audio_features
        if float(meta.get("fps", "nan")) != float(opts.fps):
            raise InputError(f"audio features {name} are at {meta.get('fps')} fps, the render at {opts.fps:g}; "
                             f"encode again with --fps {opts.fps:g}")
        if meta.get("model") != self.audio_fingerprint():
            raise InputError(f"audio features {name} come from another audio encoder (model {meta.get('model')}); "
                             f"encode again with these weights")
        frames = num_video_frames(job.waveform.shape[0], opts.fps)
        pad = self.audio_padding(opts.clip_frames)
        expected = frames + (-frames % pad if pad else 0)
        if int(meta.get("frames", -1)) != frames or features.shape[0] != expected:
            raise InputError(f"audio features {name} have {meta.get('frames')} frames, the speech {job.audio_path} "
                             f"{frames}; encode this speech")
        if meta.get("audio_sha256") != sha256_file(job.audio_path):
            self.warn(f"warning: audio features {name} were computed from another file of the same length")
        return features
