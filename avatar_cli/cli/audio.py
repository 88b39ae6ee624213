"""``avatar audio encode``: a speech's audio features once, for many renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .common import ArchOption, Device, Json, Quiet, RandomWeights, Weights, note

audio_app = typer.Typer(help="Audio features: encode speech once, render many times.", no_args_is_help=True,
                        rich_markup_mode="rich")


def audio_encode(
    audio: Annotated[Path, typer.Argument(help="Speech in any format render reads.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Features file to write (.safetensors).",
                                         show_default=False)],
    fps: Annotated[float, typer.Option(help="Video frame rate the features are for.")] = 25.0,
    model: Annotated[str, typer.Option(help="The model the features are for (osa-lcm, fada, teacher, hallo).")]
    = "osa-lcm",
    clip_frames: Annotated[int, typer.Option(help="Clip length (Hallo pads the audio to whole clips).")] = 16,
    separate_vocals: Annotated[bool, typer.Option(
        "--separate-vocals", help="From the speech's separated vocals (as render --separate-vocals).")] = False,
    weights: Weights = None,
    random_weights: RandomWeights = False,
    arch: ArchOption = "full",
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Compute a speech's per-frame wav2vec2 features once (frames x layers x dim, with fps, model
    fingerprint and audio sha256) for 'avatar render --audio-features' or 'avatar batch'.

    Example: avatar audio encode speech.wav -o speech.features.safetensors --weights ./weights
    """
    from ..media.audio import load_speech
    from ..media.features import save_features
    from ..media.video import check_output_path
    from ..models.catalog import MODELS, resolve_model
    from ..pipelines import load_pipeline

    if not 1 <= fps <= 120:
        raise InputError(f"--fps must be 1..120 (got {fps:g})")
    check_output_path(output, overwrite)
    load_speech(audio)  # fail on bad audio before loading a model
    if separate_vocals:
        from ..media.vocals import check_separator_installed

        check_separator_installed()
    model, method, _ = resolve_model(model)
    if model not in MODELS:
        raise InputError(f"--model must be one of {', '.join(MODELS)} (got {model!r})")
    pipe = load_pipeline(model, weights, random_weights, arch, device, "float32", method=method,
                         note=lambda message: note(message, quiet))
    features, meta = pipe.encode_audio_file(audio, fps, clip_frames, separate_vocals)
    save_features(output, features, meta)
    result = {"output": str(output), "frames": int(meta["frames"]), "fps": fps,
              "duration_s": round(int(meta["frames"]) / fps, 4), "feature_shape": list(features.shape),
              "model": meta["model"], "audio_sha256": meta["audio_sha256"]}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        note(f"wrote {output}: {result['frames']} frames at {fps:g} fps, features {tuple(features.shape)}", quiet)


audio_app.command("encode")(audio_encode)


def register(app: typer.Typer) -> None:
    app.add_typer(audio_app, name="audio")
