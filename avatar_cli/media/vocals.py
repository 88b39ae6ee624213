"""Vocal separation (optional, ``--separate-vocals``): speech with music or noise behind it -> the
voice alone, for the audio features only (the original recording is still muxed into the video).

Hallo separates vocals before wav2vec2 with UVR's MDX-Net model ``Kim_Vocal_2.onnx`` run by the
``audio-separator`` package; this module does the same through that package (``pip install
'avatar-cli[vocals]'``), with the model file from Hallo's repository (manifest entry
``hallo-audio-separator``) or ``<weights>/audio_separator/``. Off by default: clean speech does
not need it, and the separator is slow on a CPU. On first use audio-separator downloads three small
UVR tables (``MODEL_DATA``) beside the model file; offline, they must be copied there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import AvatarError, InputError, WeightsError
from .audio import Waveform, ffmpeg_exe, load_speech

VOCAL_MODEL = "Kim_Vocal_2.onnx"
COMPONENT = "hallo-audio-separator"
# UVR's model lists and parameter tables that audio-separator downloads beside the model file on
# first use (from raw.githubusercontent.com/TRvlvr/application_data), even when the model is local.
MODEL_DATA = ("download_checks.json", "mdx_model_data.json", "vr_model_data.json")


def check_separator_installed() -> None:
    """Raise :class:`InputError` (with the install command) if ``audio-separator`` is missing."""
    if importlib.util.find_spec("audio_separator") is None:
        raise InputError("--separate-vocals needs the audio-separator package: pip install 'avatar-cli[vocals]' "
                         "(or leave --separate-vocals off)")


def find_vocal_model(weights_dir: str | Path | None = None) -> Path:
    """The separator's model file: ``<weights_dir>/audio_separator/Kim_Vocal_2.onnx``, else the
    installed ``hallo-audio-separator`` manifest component.

    Raises:
        WeightsError: found in neither place (the message says how to get it).
    """
    from ..weights import find_folder

    folder = find_folder(weights_dir, "audio_separator", COMPONENT, "audio_separator")
    if folder is not None and (folder / VOCAL_MODEL).is_file():
        return folder / VOCAL_MODEL
    raise WeightsError(f"--separate-vocals needs the separator model {VOCAL_MODEL}: 'avatar weights download {COMPONENT}' "
                     f"(or put it in <weights>/audio_separator/)")


def separate_vocals(audio_path: str | Path, model_file: str | Path, num_samples: int | None = None) -> Waveform:
    """The vocals of a recording, as mono 16 kHz float32 (a :class:`Waveform`).

    Args:
        audio_path: any recording ffmpeg reads.
        model_file: the separator's ONNX model (``Kim_Vocal_2.onnx``, an MDX-Net model).
        num_samples: pad or trim the result to this many samples (the original's length, so the
            video keeps the recording's frame count); None keeps the separator's length.

    Returns:
        (samples,) float32 at 16 kHz.

    Raises:
        InputError: audio-separator not installed.
        AvatarError: the separator failed or wrote no vocals file.
    """
    check_separator_installed()
    from audio_separator.separator import Separator

    model_file = Path(model_file)
    with tempfile.TemporaryDirectory(prefix="avatar-vocals-") as work, _bundled_ffmpeg_on_path(work):
        # The separator gets what its MDX-Net models take, 44.1 kHz stereo, decoded by our ffmpeg
        # (so every format render reads works); it writes its output with pydub, through the
        # bundled ffmpeg put on PATH.
        mix = Path(work) / "mix.wav"
        proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i",
                               str(audio_path), "-map", "0:a:0", "-vn", "-ac", "2", "-ar", "44100", str(mix)],
                              capture_output=True)
        if proc.returncode != 0:
            raise InputError(f"cannot read audio {audio_path} for vocal separation; give a wav, mp3, flac, ogg or m4a file")
        out_dir = Path(work) / "out"
        out_dir.mkdir()
        try:
            separator = Separator(log_level=logging.WARNING, output_dir=str(out_dir), output_format="WAV",
                                  output_single_stem="vocals", model_file_dir=str(model_file.parent))
            separator.load_model(model_filename=model_file.name)
            outputs = separator.separate(str(mix))
        except Exception as error:  # the separator's own failures (onnxruntime, a corrupt model file)
            missing = [name for name in MODEL_DATA if not (model_file.parent / name).is_file()]
            hint = (f"; audio-separator fetches {', '.join(missing)} into {model_file.parent} on first use, "
                    f"so copy them there when offline") if missing else ""
            raise AvatarError(f"vocal separation of {audio_path} failed ({type(error).__name__}: {_first_line(error)})"
                              f"{hint}; or run without --separate-vocals") from error
        # audio-separator returns names relative to output_dir in some releases, absolute in others.
        paths = [p if Path(p).is_absolute() else out_dir / p for p in outputs or []]
        paths = [Path(p) for p in paths if Path(p).is_file()]
        if not paths:
            raise AvatarError(f"the vocal separator wrote no vocals for {audio_path}; run without --separate-vocals")
        return load_speech(paths[0], num_samples=num_samples)


@contextlib.contextmanager
def _bundled_ffmpeg_on_path(folder: str):
    """PATH with imageio-ffmpeg's binary as ``ffmpeg`` first (audio-separator calls ``ffmpeg``)."""
    bin_dir = Path(folder) / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(ffmpeg_exe())
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"
