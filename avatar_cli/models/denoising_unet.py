"""The 3D denoising U-Net (OSA-LCM sec. 3 / EMO; laid out as Hallo's so its weights load).

SD1.5's 2D blocks (diffusers' own ``UNet2DConditionModel`` blocks, same parameter names) run on
frames folded into the batch. Around each spatial transformer it adds, in this order:

1. reference attention inside the spatial self-attention (``models/attention.py``);
2. an audio cross-attention block (``models/audio_attention.py``), key ``<block>.audio_modules.<j>``;
3. temporal self-attention over frames (AnimateDiff motion module, diffusers'
   ``AnimateDiffTransformer3D``), key ``<block>.motion_modules.<j>``, whose input is the clip's
   frames with the motion-frame features of the same layer put in front along the frame axis
   (OSA-LCM sec. 3: "we merge the temporal layer inputs with the pre-extracted motion features of
   matching resolution along the frame dimension"); the motion frames are dropped after it.

Blocks without spatial attention (SD1.5's lowest-resolution down block and first up block) carry
motion modules, as AnimateDiff and Hallo do, but run only their resnets unless
``temporal_in_plain_blocks`` is set: that is the path Hallo's released inference computes.

With ``audio_attention="attn2"`` (EchoMimic, antgroup/echomimic ``src/models/mutual_self_attention.py``)
there are no audio blocks: SD's cross-attention slot ``attn2`` of every spatial transformer attends
to the frame's own audio tokens (Whisper, 50 x 384 per frame) instead of context tokens shared by
all frames, its output scaled by ``cross_attention_scale`` (3.0 there) before the residual add.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from .attention import ReferenceAttnProcessor, install_processors, spatial_attention_names
from .audio_attention import REGIONS, AudioAttentionBlock
from .cfg_tokens import CFGAttentionBlock, CFGTokens

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame on (B, C, F, H, W) input.

    diffusers' ``AnimateDiffTransformer3D`` normalises its 5D input across all frames; the original
    AnimateDiff motion module (and Hallo's) normalises each frame alone, and their weights were
    trained that way. Same parameters as ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        folded = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return super().forward(folded).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class DenoisingUNet3D(ModelMixin, ConfigMixin):
    """Denoising U-Net over a clip of latent frames.

    Config fields of the 2D part have SD1.5's names and meanings (``attention_head_dim`` is, as in
    SD1.5's config, the number of heads). Added fields: ``audio_attention_dim`` (audio token
    width), ``motion_num_attention_heads`` / ``motion_max_seq_length`` / ``motion_norm_num_groups``
    (AnimateDiff temporal attention: heads, sinusoidal positions = at most motion + clip frames,
    GroupNorm groups: 32 in AnimateDiff whatever the U-Net's), ``num_motion_frames``
    (M: 4 in OSA-LCM after EMO, 2 in Hallo), ``temporal_in_plain_blocks`` (see module docstring),
    ``cfg_tokens`` (FADA student: number of learnable CFG tokens, 0 = no CFG layers; a CFG
    cross-attention layer then follows every audio block, ``<block>.cfg_modules.<j>``),
    ``audio_attention`` ("blocks": Hallo's audio blocks after each spatial transformer, keys
    ``<block>.audio_modules.<j>``; "attn2": the audio tokens are ``attn2``'s context, EchoMimic),
    ``cross_attention_scale`` (factor on ``attn2``'s output: 1 in SD, 3 in EchoMimic).
    """

    _supports_gradient_checkpointing = True  # per layer (resnet + its attentions), for training

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = _SD_DOWN,
        up_block_types: tuple[str, ...] = _SD_UP,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 768,
        attention_head_dim: int = 8,
        audio_attention_dim: int = 768,
        motion_num_attention_heads: int = 8,
        motion_max_seq_length: int = 32,
        motion_norm_num_groups: int = 32,
        num_motion_frames: int = 4,
        temporal_in_plain_blocks: bool = False,
        cfg_tokens: int = 0,
        audio_attention: str = "blocks",
        cross_attention_scale: float = 1.0,
    ):
        super().__init__()
        if audio_attention not in ("blocks", "attn2"):
            raise ValueError(f"audio_attention must be 'blocks' or 'attn2' (got {audio_attention!r})")
        if audio_attention == "attn2" and audio_attention_dim != cross_attention_dim:
            raise ValueError("with audio_attention='attn2' the audio tokens are attn2's context: "
                             "audio_attention_dim must equal cross_attention_dim")
        if audio_attention == "attn2" and cfg_tokens:
            raise ValueError("CFG-token layers follow audio blocks; a U-Net with audio_attention='attn2' has none")
        self.gradient_checkpointing = False
        # The 2D part is diffusers' SD U-Net itself: build it and adopt its modules, so that every
        # parameter keeps SD1.5's name and an SD1.5 checkpoint loads into it unchanged.
        base = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
        )
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks",
                     "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(base, name))
        del base

        channels = list(block_out_channels)
        heads = attention_head_dim

        def motion_module(c: int) -> AnimateDiffTransformer3D:
            module = AnimateDiffTransformer3D(
                num_attention_heads=motion_num_attention_heads, attention_head_dim=c // motion_num_attention_heads,
                in_channels=c, norm_num_groups=motion_norm_num_groups, activation_fn="geglu", attention_bias=False,
                double_self_attention=True, positional_embeddings="sinusoidal",
                num_positional_embeddings=motion_max_seq_length)
            module.norm = FrameGroupNorm(motion_norm_num_groups, c, eps=1e-6, affine=True)
            return module

        def audio_module(c: int, inner: int) -> AudioAttentionBlock:
            inner = heads * (inner // heads)
            return AudioAttentionBlock(c, inner, heads, audio_attention_dim, norm_num_groups)

        # Audio-module inner widths follow Hallo: a down block's layer j takes the width of that
        # layer's input, the mid block its own width, an up block the width of the down block it
        # mirrors' input (reversed_block_out_channels[i + 1]).
        blocks = audio_attention == "blocks"
        for i, block in enumerate(self.down_blocks):
            c = channels[i]
            block.motion_modules = nn.ModuleList([motion_module(c) for _ in range(layers_per_block)])
            if hasattr(block, "attentions") and blocks:
                inputs = [channels[max(i - 1, 0)]] + [c] * (layers_per_block - 1)
                block.audio_modules = nn.ModuleList([audio_module(c, w) for w in inputs])
        c = channels[-1]
        self.mid_block.motion_modules = nn.ModuleList([motion_module(c) for _ in self.mid_block.attentions])
        if blocks:
            self.mid_block.audio_modules = nn.ModuleList([audio_module(c, c) for _ in self.mid_block.attentions])
        reversed_channels = channels[::-1]
        for i, block in enumerate(self.up_blocks):
            c = reversed_channels[i]
            block.motion_modules = nn.ModuleList([motion_module(c) for _ in block.resnets])
            if hasattr(block, "attentions") and blocks:
                inner = reversed_channels[min(i + 1, len(channels) - 1)]
                block.audio_modules = nn.ModuleList([audio_module(c, inner) for _ in block.resnets])

        if cfg_tokens:
            self.cfg_embedding = CFGTokens(cfg_tokens, audio_attention_dim)
            for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
                if hasattr(block, "audio_modules"):
                    block.cfg_modules = nn.ModuleList([
                        CFGAttentionBlock(m.proj_in.in_channels, heads, audio_attention_dim, norm_num_groups)
                        for m in block.audio_modules])

        install_processors(self, ReferenceAttnProcessor)
        for name in spatial_attention_names(self):
            if name.endswith("attn2"):
                self.get_submodule(name).processor.output_scale = cross_attention_scale

    def with_cfg_layers(self, cfg_tokens: int = 4) -> "DenoisingUNet3D":
        """This U-Net with zero-initialised CFG-token layers added (FADA sec. 3.3 student init).

        The output is unchanged until the layers are trained. Returns a new model on the same
        device and dtype; raises ValueError if this model already has CFG layers.
        """
        if self.config.cfg_tokens:
            raise ValueError("this denoising U-Net already has CFG-token layers")
        student = type(self).from_config(self.config, cfg_tokens=cfg_tokens)
        missing, unexpected = student.load_state_dict(self.state_dict(), strict=False)
        added = [k for k in missing if not (k.startswith("cfg_embedding.") or ".cfg_modules." in k)]
        if unexpected or added:
            raise RuntimeError(f"unexpected keys {unexpected[:3]}, missing non-CFG keys {added[:3]}")
        student.to(self.device)
        if student.dtype != self.dtype:
            student.to(dtype=self.dtype)
        return student.eval()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None,
        audio_embeds: torch.Tensor,
        reference_features: dict[str, torch.Tensor] | None = None,
        motion_features: dict[str, torch.Tensor] | None = None,
        region_masks: dict[str, torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
        region_scales: tuple[float, float, float] = (1.0, 1.0, 1.0),
        guidance_scales: tuple[float, float] | None = None,
        conditioning_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise (or v) for a clip.

        Args:
            sample: latents (B, C=4, F, h, w), F clip frames, h = w = image size / 8.
            timestep: scalar or (B,) diffusion timestep in [0, 1000).
            encoder_hidden_states: (B, T, cross_attention_dim) tokens for SD1.5's cross-attention
                slot (the image projector's face tokens or its null tokens); ignored (may be None)
                with ``audio_attention="attn2"``.
            audio_embeds: (B, F, T_a, audio_attention_dim) per-frame audio tokens; with
                ``audio_attention="attn2"`` frame f's tokens are the context of ``attn2`` for that
                frame (EchoMimic: T_a = 50 Whisper tokens of width 384).
            reference_features: attn1 name -> (B, L, C) reference tokens of the portrait
                (``ReferenceNet.extract_features``); None = no reference (a null condition).
            motion_features: attn1 name -> (B*M, L, C) reference-net tokens of the M motion frames;
                None = no motion frames.
            region_masks: region ("full"/"face"/"lip") -> the audio branch's weights at every
                resolution: a sequence of levels (B, h, w), (B, h/2, w/2), ... (Hallo's per-level
                masks, ``media.face.region_masks``); each block takes the level of its feature-map
                size (for SD1.5's layout the level Hallo picks by block depth). A single (B, h, w)
                tensor is area-resized to the lower resolutions instead. None = all ones (no face
                information).
            region_scales: (full, face, lip) audio-branch weights.
            guidance_scales: (cfg_a, cfg_r) for the CFG-token layers (FADA eq. 10); None skips
                them. Ignored by a model without CFG layers.
            conditioning_features: (B, C_0, F, h, w) added after ``conv_in`` (Hallo's face-locator
                features); None = zero.

        Returns:
            (B, out_channels, F, h, w) model output.
        """
        b, c, f, h, w = sample.shape
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        timestep = torch.as_tensor(timestep, device=sample.device)
        timestep = timestep.reshape(-1).expand(b).repeat_interleave(f)
        emb = self.time_embedding(self.time_proj(timestep).to(self.dtype))
        audio = audio_embeds.reshape(b * f, *audio_embeds.shape[2:]).to(x.dtype)
        if self.config.audio_attention == "attn2":
            context = audio  # (B*F, T_a, D): each frame's own tokens (EchoMimic's audio_cond_fea)
        else:
            context = encoder_hidden_states.repeat_interleave(f, dim=0)
        cfg = None
        if self.config.cfg_tokens and guidance_scales is not None:
            cfg = self.cfg_embedding(*guidance_scales).to(x.dtype)
            cfg = cfg[None].expand(b * f, *cfg.shape)
        step = _Step(self, f, context, audio, reference_features, motion_features,
                     region_masks, region_scales, (h, w), cfg)

        x = self.conv_in(x)
        if conditioning_features is not None:
            x = x + conditioning_features.to(x.dtype).permute(0, 2, 1, 3, 4).reshape(x.shape)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            for j, resnet in enumerate(block.resnets):
                x = self._layer(lambda x, emb, r=resnet, b=block, n=f"down_blocks.{i}", j=j:
                                step.after_resnet(n, b, j, r(x, emb)), x, emb)
                skips.append(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
                skips.append(x)

        x = self.mid_block.resnets[0](x, emb)
        for j, resnet in enumerate(self.mid_block.resnets[1:]):
            x = self._layer(lambda x, emb, r=resnet, j=j: r(step.after_resnet("mid_block", self.mid_block, j, x), emb),
                            x, emb)

        for i, block in enumerate(self.up_blocks):
            for j, resnet in enumerate(block.resnets):
                x = self._layer(lambda x, skip, emb, r=resnet, b=block, n=f"up_blocks.{i}", j=j:
                                step.after_resnet(n, b, j, r(torch.cat([x, skip], dim=1), emb)), x, skips.pop(), emb)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x, skips[-1].shape[2:])

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)


    def _layer(self, fn, *args):
        """fn(*args), recomputed in the backward pass when gradient checkpointing is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


class _Step:
    """The per-call conditions of one forward, and the work done after each resnet."""

    def __init__(self, unet, frames, context, audio, reference_features, motion_features,
                 region_masks, region_scales, latent_size, cfg_tokens=None):
        self.frames = frames
        self.context = context
        self.audio = audio
        self.attention_kwargs = {"reference_features": reference_features}
        self.motion_features = motion_features
        self.region_masks = region_masks
        self.region_scales = region_scales
        self.latent_size = latent_size
        self.temporal_in_plain_blocks = unet.config.temporal_in_plain_blocks
        self.cfg_tokens = cfg_tokens
        self._mask_cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def after_resnet(self, block_name: str, block: nn.Module, j: int, x: torch.Tensor) -> torch.Tensor:
        """Spatial(+reference) attention, audio attention (+CFG tokens), temporal attention of layer j."""
        if not hasattr(block, "attentions"):
            if self.temporal_in_plain_blocks:
                return self.temporal(block.motion_modules[j], x, None)
            return x
        x = block.attentions[j](x, encoder_hidden_states=self.context,
                                cross_attention_kwargs=self.attention_kwargs, return_dict=False)[0]
        if hasattr(block, "audio_modules"):
            x = block.audio_modules[j](x, self.audio, self.masks(x.shape[2:]), self.region_scales)
        if self.cfg_tokens is not None:
            x = block.cfg_modules[j](x, self.cfg_tokens)
        name = f"{block_name}.attentions.{j}.transformer_blocks.0.attn1"
        motion = None if self.motion_features is None else self.motion_features.get(name)
        return self.temporal(block.motion_modules[j], x, motion)

    def temporal(self, module: AnimateDiffTransformer3D, x: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
        """Temporal self-attention over [motion frames, clip frames]; returns the clip frames.

        x: (B*F, C, H, W); motion: (B*M, H*W, C) tokens or None.
        """
        n, c, h, w = x.shape
        f = self.frames
        if motion is None:
            return module(x, num_frames=f)
        b = n // f
        m = motion.shape[0] // b
        motion = motion.to(x.dtype).reshape(b, m, h, w, c).permute(0, 1, 4, 2, 3)
        seq = torch.cat([motion, x.reshape(b, f, c, h, w)], dim=1).reshape(b * (m + f), c, h, w)
        out = module(seq, num_frames=m + f)
        return out.reshape(b, m + f, c, h, w)[:, m:].reshape(n, c, h, w)

    def masks(self, size: tuple[int, int]) -> dict[str, torch.Tensor] | None:
        """Region masks at a feature-map size, flattened to (B*F, H*W).

        Per-level masks: the level of that size (ValueError if none has it). A single mask:
        area-resized from it."""
        if self.region_masks is None:
            return None
        key = tuple(size)
        if key not in self._mask_cache:
            resized = {}
            for region in REGIONS:
                levels = self.region_masks[region]
                if isinstance(levels, torch.Tensor):
                    mask = levels[:, None].float()
                    mask = F.interpolate(mask, size=key, mode="area") if key != tuple(mask.shape[2:]) else mask
                    mask = mask[:, 0]
                else:
                    mask = next((m for m in levels if tuple(m.shape[-2:]) == key), None)
                    if mask is None:
                        sides = [tuple(m.shape[-2:]) for m in levels]
                        raise ValueError(f"no {region} region mask of size {key} (levels {sides})")
                resized[region] = mask.flatten(1).repeat_interleave(self.frames, dim=0)
            self._mask_cache[key] = resized
        return self._mask_cache[key]
