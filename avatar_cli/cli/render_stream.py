"""``avatar render --stream``: the command's side of a live render (speech in chunks -> a fragmented
MP4 or MPEG-TS written while it arrives; the loop is ``avatar_cli/media/stream.py``); re-exported by
``cli/render.py``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import InputError
from .common import note, signals_interrupt


def render_streaming(image, audio, output, overwrite, options, realtime, fmt, input_format, audio_features, load,
                     as_json, quiet) -> None:
    """``avatar render ... --stream``: speech in chunks (a file or standard input) -> a live video."""
    from ..media.image import load_portrait, load_source
    from ..media.stream import FORMATS, ReaderGone, StreamStop, pcm_chunks, render_stream
    from ..media.video import check_output_path
    from ..models.catalog import MODELS
    from ..options import portrait_boxes
    from .render import pipeline_for

    options.validate()
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if audio_features is not None:
        raise InputError("--audio-features does not apply to --stream")
    if realtime and str(audio) == "-":
        raise InputError("--realtime paces a file; standard input arrives at its own pace")
    if str(audio) != "-" and not Path(audio).is_file():
        raise InputError(f"audio file not found: {audio}")
    out = output if output is not None else Path(f"{image.stem}.{'mp4' if fmt == 'mp4' else 'ts'}")
    if str(out) != "-":
        check_output_path(out, overwrite)
    ditto = MODELS[options.model].family == "ditto"
    if ditto:
        picture, geometry = load_source(image, with_geometry=True)
    else:
        picture, geometry = load_portrait(image, options.size, options.fit, with_geometry=True)
    boxes = portrait_boxes(options, geometry)
    pipe = pipeline_for(options, load, quiet)
    if not ditto:
        note(f"note: --model {options.model} is not incremental: the video starts when the speech has ended", quiet)
    # One stop for both ends: waiting for speech and writing video both end at once when the reader of
    # standard output goes away (docs/usage.md, "When a live stream's reader goes away").
    stop = StreamStop.for_output(out)
    chunks = pcm_chunks(audio, input_format, realtime=realtime, stop=stop)
    try:
        with signals_interrupt():
            result = render_stream(pipe, picture, chunks, out, options, fmt=fmt, stop=stop, **boxes)
    except ReaderGone as gone:  # a player closed, `| head`: the shell's status for SIGPIPE, one line unless -q
        note(str(gone), quiet)
        raise typer.Exit(gone.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (typer would turn it into a silent exit 130)
        typer.echo("avatar: interrupted", err=True)
        raise typer.Exit(130) from None
    finally:
        stop.close()
    result.update(model=options.model, method=options.method_name, device=str(pipe.device), seed=options.seed,
                  weights=pipe.source)
    if ditto:
        result.update(pipe.describe(options, stream=True))
    if as_json:
        typer.echo(json.dumps(result), err=str(out) == "-")  # standard output may be the video
    else:
        note(f"streamed {result['frames']} frames ({result['duration_s']:.2f} s) to {result['output']}: first frames "
             f"after {result['first_frame_delay_s']} s, RTF {result['rtf']:.2f}", quiet)

