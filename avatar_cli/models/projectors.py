"""Small projection models: audio features -> audio tokens, face embedding -> face tokens.

Both after Hallo (whose public weights use these shapes); ``audio_projector`` is the "audio
embedding" step of OSA-LCM sec. 3 (a window of m = 2 frames each side around frame f).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AudioProjector(ModelMixin, ConfigMixin):
    """Per-frame window of wav2vec2 hidden states -> ``context_tokens`` audio tokens.

    ``window * num_layers * hidden_size`` (5 x 12 x 768 = 46080) -> ReLU MLP (512, 512) ->
    ``context_tokens x output_dim`` (32 x 768) -> LayerNorm.
    """

    @register_to_config
    def __init__(self, window: int = 5, num_layers: int = 12, hidden_size: int = 768,
                 intermediate_dim: int = 512, context_tokens: int = 32, output_dim: int = 768):
        super().__init__()
        self.proj1 = nn.Linear(window * num_layers * hidden_size, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Args:
            windows: (..., window, num_layers, hidden_size) audio features around each frame.

        Returns:
            (..., context_tokens, output_dim) audio tokens.
        """
        lead = windows.shape[:-3]
        x = windows.reshape(*lead, -1).to(self.dtype)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(*lead, self.config.context_tokens, self.config.output_dim)
        return self.norm(x)


class ImageProjector(ModelMixin, ConfigMixin):
    """Face embedding (ArcFace, 512-d) -> ``tokens`` face tokens for SD1.5's cross-attention slot.

    With no face embedding the projector of a zero embedding gives the null tokens (Hallo's
    unconditional branch does the same).
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 512, cross_attention_dim: int = 768, tokens: int = 4):
        super().__init__()
        self.proj = nn.Linear(embedding_dim, tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, face_embedding: torch.Tensor) -> torch.Tensor:
        """Args:
            face_embedding: (B, embedding_dim).

        Returns:
            (B, tokens, cross_attention_dim).
        """
        x = self.proj(face_embedding.to(self.dtype))
        return self.norm(x.reshape(face_embedding.shape[0], self.config.tokens, self.config.cross_attention_dim))

    def null_tokens(self, batch_size: int = 1) -> torch.Tensor:
        """Tokens for "no face embedding": the projection of zeros, (B, tokens, dim)."""
        zeros = torch.zeros(batch_size, self.config.embedding_dim, device=self.device, dtype=self.dtype)
        return self(zeros)
