"""Write diffusers-format SD weights in the original LDM single-file key layout (test helper).

The inverse of the key renaming that diffusers' single-file loader undoes, written independently
from the original Stable Diffusion naming (``model.diffusion_model.input_blocks.1.0.in_layers.0``,
``first_stage_model.encoder.down.0.block.0.norm1`` ...), so that a test can make an SD1.5-layout
checkpoint from tiny random weights.
"""

from __future__ import annotations

import torch

_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
           ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]


def _rename_resnet(rest: str) -> str:
    for hf, sd in _RESNET:
        if rest.startswith(hf):
            return sd + rest[len(hf):]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, levels: int) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys."""
    step = layers_per_block + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    out = {}
    for key, value in state.items():
        new = None
        for hf, sd in fixed.items():
            if key.startswith(hf):
                new = sd + key[len(hf):]
        parts = key.split(".")
        if new is None and parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{step * i + j + 1}.0." + _rename_resnet(rest)
            elif kind == "attentions":
                new = f"input_blocks.{step * i + j + 1}.1." + rest
            elif kind == "downsamplers":
                new = f"input_blocks.{step * (i + 1)}.0.op." + rest.removeprefix("conv.")
        elif new is None and parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{step * i + j}.0." + _rename_resnet(rest)
            elif kind == "attentions":
                new = f"output_blocks.{step * i + j}.1." + rest
            elif kind == "upsamplers":
                slot = 1 if i == 0 else 2
                new = f"output_blocks.{step * i + layers_per_block}.{slot}." + rest
        elif new is None and parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * j}." + _rename_resnet(rest) if kind == "resnets" else f"middle_block.1.{rest}"
        if new is None:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> ``first_stage_model.*`` keys (attention q/k/v as 1x1 convs)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        new = key
        if parts[1] == "down_blocks":
            i, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
            new = f"encoder.down.{i}.block.{j}.{rest}" if kind == "resnets" else f"encoder.down.{i}.downsample.{rest}"
        elif parts[1] == "up_blocks":
            i, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
            level = levels - 1 - i
            new = f"decoder.up.{level}.block.{j}.{rest}" if kind == "resnets" else f"decoder.up.{level}.upsample.{rest}"
        elif parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{parts[0]}.mid.block_{j + 1}.{rest}"
            else:
                rename = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
                for hf, sd in rename.items():
                    if rest.startswith(hf):
                        rest = sd + rest[len(hf):]
                new = f"{parts[0]}.mid.attn_1.{rest}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        new = new.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        out["first_stage_model." + new] = value
    return out
