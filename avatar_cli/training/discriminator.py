"""The avatar discriminator of OSA-LCM (sec. 4.1, eqs. 4-5).

Built on the frozen teacher: the outputs of its temporal-attention (motion) modules in the down
blocks and the mid block, for a noised clip and its conditions (so it can judge motion and
lip-audio consistency), each go through a small 3D-convolution head; the heads' mean outputs are
averaged into one logit per clip. Only the heads are trained; gradients flow through the frozen
teacher to its input, so the generator (the student) can learn from the logit.
"""

from __future__ import annotations

import torch
from torch import nn


class _Head(nn.Module):
    """Conv3d 3x3x3 -> SiLU -> Conv3d 1x1x1 to one channel, averaged over (frames, h, w)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv3d(hidden, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).mean(dim=(1, 2, 3, 4))


class AvatarDiscriminator(nn.Module):
    """D(x_t, t, c) for latents (B, 4, F, h, w); returns logits (B,).

    Args:
        teacher: the teacher's :class:`DenoisingUNet3D` (frozen here).
        hidden: channels inside each head (per feature map: min(hidden, channels)).
    """

    def __init__(self, teacher: nn.Module, hidden: int = 64):
        super().__init__()
        # The teacher is used, not owned: kept out of this module's parameters and state dict, so
        # the optimiser, DDP and the checkpoint see the heads only.
        self.__dict__["teacher"] = teacher.requires_grad_(False).eval()
        self.names = [f"down_blocks.{i}.motion_modules.{j}" for i, block in enumerate(teacher.down_blocks)
                      if hasattr(block, "attentions") for j in range(len(block.motion_modules))]
        self.names += [f"mid_block.motion_modules.{j}" for j in range(len(teacher.mid_block.motion_modules))]
        self.heads = nn.ModuleDict({
            name.replace(".", "_"): _Head(teacher.get_submodule(name).proj_in.in_features,
                                          min(hidden, teacher.get_submodule(name).proj_in.in_features))
            for name in self.names})

    def forward(self, latents: torch.Tensor, timestep, **conditions) -> torch.Tensor:
        """latents (B, 4, F, h, w) already noised to ``timestep``; ``conditions``: the teacher's
        forward keywords (encoder_hidden_states, audio_embeds, reference_features, ...)."""
        batch = latents.shape[0]
        captured: dict[str, torch.Tensor] = {}
        handles = [self.teacher.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)) for name in self.names]
        try:
            self.teacher(latents, timestep, **conditions)
        finally:
            for handle in handles:
                handle.remove()
        logits = []
        for name in self.names:
            feats = captured[name]                                   # (B * frames, C, h, w)
            frames = feats.shape[0] // batch
            feats = feats.reshape(batch, frames, *feats.shape[1:]).permute(0, 2, 1, 3, 4)
            logits.append(self.heads[name.replace(".", "_")](feats.to(self.heads[name.replace(".", "_")]
                                                                       .net[0].weight.dtype)))
        return torch.stack(logits).mean(0)
