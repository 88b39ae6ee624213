"""``avatar render --dry-run``: the command's side of a dry run (the checks, the drawing and the report
are ``avatar_cli/dry_run.py``); re-exported by ``cli/render.py``."""

from __future__ import annotations

import json

import typer

from ..errors import InputError
from .common import note


def render_dry_run(image, audio, output, overwrite, audio_features, options, load, must_download: bool,
                   preview: bool, as_json: bool, quiet: bool) -> None:
    """``avatar render --dry-run``: check the inputs, options, weights and packages, draw the portrait
    with the face box, the crop and the settings (``dry_run.py``), say the expected time; no model
    is built, nothing rendered."""

    import numpy as np

    from ..dry_run import DryRun, default_image_path, ditto_face, draw, unet_face
    from ..media.audio import num_video_frames
    from ..media.image import load_portrait, load_source
    from ..models.catalog import MODELS, check_packages
    from ..motion.hubert_windows import num_frames
    from ..options import prepare_job
    from ..pipelines import _installed, pipeline_class
    from ..preview import kept_calibration
    from ..weights import load_manifest, missing_for
    from .render import explicit_fields

    spec = MODELS[options.model]
    resolved = load.resolved()  # a bad --device / --dtype fails here
    if load.weights is not None and load.random_weights:
        raise InputError("--weights and --random-weights exclude each other; pick one")
    folder = None if load.random_weights else (load.weights or _installed(options.model))
    if load.random_weights:
        weights = f"random:{load.arch}"
    elif folder is not None:
        weights = str(folder)
    elif must_download:
        component = load_manifest()[spec.components[0]]
        weights = f"download: avatar weights download {component.name} ({component.size / 1e9:.1f} GB, on first use)"
    else:
        raise InputError(f"--model {options.model} needs weights that are not installed: "
                         f"{'; '.join(missing_for(options.model))}. Or pass --weights DIR or --random-weights")
    check_packages(options.model, load.random_weights)  # the same check as a render's
    if preview:
        options, _ = pipeline_class(spec.family).preview_options(options, explicit_fields(), folder)
    job = prepare_job(image, audio, output, options, overwrite, audio_features)
    notes: list[str] = []
    seconds = job.waveform.shape[0] / 16000
    if spec.family == "ditto":
        _, geometry = load_source(image, with_geometry=True)
        box, source, c2o = ditto_face(job, None if load.random_weights else folder, notes)
        corners = (c2o @ np.array([[0, 0, 1], [512, 0, 1], [512, 512, 1], [0, 512, 1]], float).T).T[:, :2]
        size = f"{job.image.shape[1]}x{job.image.shape[0]}"
        frames = num_frames(job.waveform.shape[0])
    else:
        _, geometry = load_portrait(image, options.size, options.fit, with_geometry=True)
        box, source = unet_face(job, options, notes)
        side = options.size
        corners = np.array([[0, 0], [side, 0], [side, side], [0, side]], float)
        size = str(side)
        frames = num_video_frames(job.waveform.shape[0], options.fps)

    def to_image(x: float, y: float) -> tuple[float, float]:  # frame pixels -> the portrait file's pixels
        return x / geometry.scale - geometry.offset[0], y / geometry.scale - geometry.offset[1]

    crop = [to_image(x, y) for x, y in corners]
    if box is not None:
        (x0, y0), (x1, y1) = to_image(box[0], box[1]), to_image(box[0] + box[2], box[1] + box[3])
        box = (x0, y0, x1 - x0, y1 - y0)
    entry = kept_calibration(options.model, "random" if load.random_weights else str(folder), options,
                             str(resolved.device), resolved.dtype)
    expected_s = None if entry is None else entry["once_s"] + entry["seconds_per_video_second"] * seconds
    expected = (f"about {expected_s:.0f} s on {resolved.device} (a kept --preview calibration)" if expected_s is not None
                else f"unknown on {resolved.device} (run --preview once to measure it)")
    method = options.method_name
    nfe = options.sampling.nfe(options.steps)
    lines = [f"{options.model} / {method}", f"size {size}, {options.steps} steps (NFE {nfe})",
             f"{frames} frames ({seconds:.1f} s)", "expected: " + (f"{expected_s:.0f} s" if expected_s is not None
                                                                   else "unknown (--preview)"), f"face: {source}"]
    png = draw(image, default_image_path(output), box, crop, lines)
    report = DryRun(str(png), options.model, method, size, options.steps, nfe, frames, seconds, box, source, crop,
                    weights, expected_s, expected, notes)
    for line in notes:
        note(line if line.startswith(("note:", "warning:")) else f"note: {line}", quiet)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    note(f"dry run: would render {frames} frames ({seconds:.1f} s) with {options.model} ({method}, size {size}, "
         f"{options.steps} steps) from {weights}; face {source}; expected {expected}; wrote {png}; nothing rendered",
         quiet)
