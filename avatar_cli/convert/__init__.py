"""Checkpoint conversion into the project's folder layout (``models/bundle.py``).

- Ditto's PyTorch release (HF ``digital-avatar/ditto-talkinghead``: the cfg pickle, six ``.pth`` files,
  five auxiliary ONNX/MediaPipe files) is checked key by key without loading its tensors and gathered
  into one folder (:func:`convert_ditto`); the ``.pth`` files keep their upstream layout, which
  ``DittoModels.from_files`` reads.
- Hallo's ``net.pth`` (one state dict: ``reference_unet.``, ``denoising_unet.``, ``face_locator.``,
  ``imageproj.``, ``audioproj.``) maps by name onto the Hallo family of our models
  (:func:`map_hallo_state`), with zero missing and zero unexpected keys.

- EchoMimic's release (HF ``BadToBest/EchoMimic``: ``reference_unet.pth``, ``denoising_unet(_acc).pth``,
  ``motion_module(_acc).pth``, ``face_locator.pth``, ``audio_processor/whisper_tiny.pt``) maps by name
  onto the EchoMimic family (:func:`map_echomimic_state`, :func:`convert_echomimic`), with zero missing
  and zero unexpected keys.

- An SD1.5 single-file checkpoint (``.safetensors`` / ``.ckpt``, original LDM key layout) becomes
  ``vae/`` (from ``first_stage_model.*``), ``reference_net/`` and the 2D part of
  ``denoising_unet/`` (from ``model.diffusion_model.*``), with diffusers' own converters
  (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``).
- An AnimateDiff motion-module file (``mm_sd_v15_v2.ckpt`` layout) fills the denoising U-Net's
  temporal attention, through diffusers' ``convert_animatediff_checkpoint_to_diffusers``.

Every key of the input must land somewhere: unexpected keys fail the conversion; keys known to
be unused (SD's text encoder, its schedule buffers, EMA copies, AnimateDiff's sinusoidal tables,
which our modules compute) are counted and reported; parameters the inputs do not provide (the
audio blocks) keep their initialisation and are reported as missing.

Package layout: ``keys.py`` (the shared key reports, checkpoint reading, AnimateDiff names), one module
per source (``sd15.py``, ``hallo.py``, ``ditto.py``, ``echomimic.py``). Every converter takes ``arch`` (a
preset name) and ``config`` (a config of any width: a JSON file or a dict, ``models/configs.py``), so a
checkpoint of a non-preset width converts with the same strict key checks.
"""

from __future__ import annotations

from .ditto import (DITTO_AUX, DITTO_AUX_FILES, DITTO_CFG, DITTO_MODELS, check_ditto_models,
                    convert_ditto)
from .echomimic import (ECHOMIMIC_ACC_FILES, ECHOMIMIC_FILES, ECHOMIMIC_UNET_CONFIG,
                        convert_echomimic, map_echomimic_state)
from .hallo import convert_hallo, map_hallo_state
from .keys import ComponentReport, ConversionReport, convert_motion_module, load_checkpoint
from .sd15 import convert_sd15

__all__ = ["ComponentReport", "ConversionReport", "load_checkpoint", "convert_motion_module", "convert_sd15",
           "convert_hallo", "map_hallo_state", "convert_ditto", "check_ditto_models", "DITTO_CFG", "DITTO_MODELS",
           "DITTO_AUX", "DITTO_AUX_FILES", "convert_echomimic", "map_echomimic_state", "ECHOMIMIC_FILES",
           "ECHOMIMIC_ACC_FILES", "ECHOMIMIC_UNET_CONFIG"]
