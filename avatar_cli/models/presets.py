"""Named architecture presets: ``full`` (SD1.5 / wav2vec2-base / Hallo sizes) and ``tiny``.

One config dict per model, passed unchanged to that model's class. ``full`` is the architecture
the papers and Hallo's public checkpoint use (512 px -> 64x64 latents, 320/640/1280/1280
channels, 768-wide cross-attention, wav2vec2-base with 12 layers of 768). ``tiny`` has the same
structure with a few million parameters, so that the whole pipeline runs on a CPU in seconds
(tests, demos). Every size is a field here; nothing elsewhere hard-codes one.
"""

from __future__ import annotations

import copy
from pathlib import Path

from .configs import merge_config

SD15_SCHEDULER = {  # SD1.5's scheduler_config.json, plus LCM's boundary-condition settings
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1,
    "original_inference_steps": 50, "timestep_scaling": 10.0,
}

# The 2D U-Net both U-Nets share (the reference net is it; the denoising U-Net adds audio and temporal
# attention): SD1.5's unet/config.json, and a tiny one of the same structure.
_SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "norm_num_groups": 32, "cross_attention_dim": 768, "attention_head_dim": 8,
}
_TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 1,
    "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4,
}

_FULL = {
    "vae": {  # stabilityai/sd-vae-ft-mse
        "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
        "sample_size": 256, "scaling_factor": 0.18215,
    },
    "reference_net": _SD15_UNET,
    "denoising_unet": {
        **_SD15_UNET, "audio_attention_dim": 768, "motion_num_attention_heads": 8, "motion_max_seq_length": 32,
        "num_motion_frames": 4, "temporal_in_plain_blocks": False,
    },
    "audio_encoder": {  # facebook/wav2vec2-base-960h (transformers Wav2Vec2Config fields)
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "feat_extract_norm": "group", "do_stable_layer_norm": False,
        "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "vocab_size": 32,
    },
    "audio_projector": {"window": 5, "num_layers": 12, "hidden_size": 768, "intermediate_dim": 512,
                        "context_tokens": 32, "output_dim": 768},
    "image_projector": {"embedding_dim": 512, "cross_attention_dim": 768, "tokens": 4},
    "taesd": {},  # madebyollin/taesd: diffusers AutoencoderTiny's defaults (the --decoder taesd option)
    "scheduler": SD15_SCHEDULER,
}

# Same structure as full, a few million parameters; the 2D U-Nets are _TINY_UNET.
_TINY = merge_config(_FULL, {
    "vae": {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64},
    "reference_net": _TINY_UNET,
    "denoising_unet": {**_TINY_UNET, "audio_attention_dim": 32, "motion_num_attention_heads": 4},
    "audio_encoder": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                      "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2},
    "audio_projector": {"num_layers": 2, "hidden_size": 32, "intermediate_dim": 64, "context_tokens": 4,
                        "output_dim": 32},
    "image_projector": {"cross_attention_dim": 32},
    "taesd": {"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8],
              "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1]},
})

PRESETS = {"full": _FULL, "tiny": _TINY}
FAMILIES = ("osa-lcm", "hallo", "echomimic")

# Hallo's inference scheduler (DDIM over a *linear* beta schedule, v-prediction, zero-SNR rescaled,
# trailing spacing); its released weights were trained for it.
HALLO_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
    "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1,
}

# How each family's models expect to be driven (models/bundle.py ModelSettings).
SETTINGS = {
    "osa-lcm": {"null_reference": "zero-latent", "first_clip_motion": "zeros", "motion_source": "latents",
                "audio_padding": "none", "default_method": "osa-lcm"},
    "hallo": {"null_reference": "none", "first_clip_motion": "reference", "motion_source": "decoded",
              "audio_padding": "clip", "default_method": "hallo"},
    # EchoMimic (antgroup/echomimic, src/pipelines/pipeline_echo_mimic*.py): no reference K/V and zero
    # audio / zero face-locator features as the null branch, no motion frames, Whisper-tiny features, a
    # 1-channel face mask through the face locator, the whole video's latents denoised at once over
    # context windows of 12 frames overlapping by 3, initial noise clamped to [-1.5, 1.5].
    "echomimic": {"null_reference": "none", "first_clip_motion": "zeros", "motion_source": "latents",
                  "audio_padding": "none", "default_method": "echomimic-acc", "audio_encoder": "whisper",
                  "face_condition": "mask", "frame_schedule": "context-windows", "context_frames": 12,
                  "context_overlap": 3, "noise_clamp": 1.5},
}

# EchoMimic's Whisper-tiny (OpenAI checkpoint ``dims``; ``audio_processor/whisper_tiny.pt``) and a tiny
# stand-in of the same layout for tests. Only the encoder is used: per 50 Hz step its embedding output
# and each block's output, (n_audio_layer + 1) x n_audio_state values.
WHISPER_DIMS = {
    "full": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
             "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4},
    "tiny": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 2,
             "n_vocab": 64, "n_text_ctx": 8, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 1},
}


def preset(arch: str, family: str = "osa-lcm") -> dict:
    """A deep copy of the named preset's per-model configs, for a model family.

    ``family="hallo"`` gives Hallo's variant of the same sizes: a face locator, a reference net
    without output layers that keeps its features in float16, 2 motion frames, Hallo's scheduler
    and driving settings.

    ``family="echomimic"`` gives EchoMimic's (antgroup/echomimic ``configs/inference/inference_v2.yaml``
    on ``sd-image-variations-diffusers/unet``; ``infer_audio2vid*.py``): the denoising U-Net's
    cross-attention (``attn2``) takes per-frame Whisper tokens (width = the Whisper encoder's, 384 in
    ``full``) with its output times 3 (``mutual_self_attention.py``), no audio blocks and no
    projectors; AnimateDiff motion modules in every block including the plain ones and the mid
    block (positions up to 32), no motion frames; a reference net without cross-attention and
    without output layers; a 1-channel face locator with widths (16, 32, 96, 256); Hallo's
    scheduler (v-prediction, zero-SNR, trailing); the Whisper dims of :data:`WHISPER_DIMS`.

    Raises:
        KeyError: unknown preset or family name.
    """
    if arch not in PRESETS:
        raise KeyError(f"unknown architecture {arch!r}; choose one of {', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    cfg = copy.deepcopy(PRESETS[arch])
    cfg["settings"] = dict(SETTINGS[family])
    if family == "hallo":
        cfg["face_locator"] = {"conditioning_channels": 3, "block_out_channels": [16, 32, 64, 128],
                               "embedding_channels": cfg["denoising_unet"]["block_out_channels"][0]}
        cfg["reference_net"].update(output_layers=False, feature_dtype="float16")
        cfg["denoising_unet"]["num_motion_frames"] = 2
        cfg["scheduler"] = dict(HALLO_SCHEDULER)
    if family == "echomimic":
        whisper = dict(WHISPER_DIMS[arch])
        unet = cfg["denoising_unet"]
        unet.update(cross_attention_dim=whisper["n_audio_state"], audio_attention_dim=whisper["n_audio_state"],
                    audio_attention="attn2", cross_attention_scale=3.0, num_motion_frames=0,
                    temporal_in_plain_blocks=True)
        # EchoMimic's reference bank is cast to float16 (mutual_self_attention.py update(), dtype default)
        cfg["reference_net"].update(output_layers=False, cross_attention=False, feature_dtype="float16")
        cfg["face_locator"] = {"conditioning_channels": 1, "block_out_channels": [16, 32, 96, 256],
                               "embedding_channels": unet["block_out_channels"][0]}
        cfg["scheduler"] = dict(HALLO_SCHEDULER)
        cfg["audio_encoder"] = whisper
        for name in ("audio_projector", "image_projector"):
            del cfg[name]
    return cfg


#: The networks (and other entries) of a U-Net family bundle config, as :func:`preset` returns them.
NETWORKS = ("vae", "reference_net", "denoising_unet", "audio_encoder", "audio_projector", "image_projector",
            "face_locator", "taesd", "scheduler")


def resolve(spec: "str | Path | dict", family: str = "osa-lcm", base: str | None = None) -> dict:
    """The complete per-network config of the U-Net family that ``spec`` names: a preset name
    (:func:`preset`), a JSON config file, or a dict (``models/configs.py``: ``{"base": "tiny",
    "denoising_unet": {"block_out_channels": [48, 96]}, ...}``; without ``"base"``, ``base``'s preset
    is the start, and with neither the config must be complete). A file's or dict's ``settings`` entry
    overrides the family's :data:`SETTINGS`.

    Raises:
        InputError: an unknown preset or family, an unreadable file, an unknown network name.
    """
    from .configs import resolve_config

    if family not in FAMILIES:
        from ..errors import InputError

        raise InputError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    cfg = resolve_config(spec, lambda name: preset(name, family), NETWORKS, default_base=base)
    cfg["settings"] = {**SETTINGS[family], **cfg.get("settings", {})}
    return cfg
