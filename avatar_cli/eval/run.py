"""``avatar eval``: read a rendered video (and optional references) and compute every metric whose inputs
and weights are there.

- Sync-C / Sync-D and the audio-video offset (:mod:`.sync`, SyncNet v2 weights): always; the speech is
  the video's own audio track unless ``audio`` is given (e.g. the input speech, to check the mux).
- FID, FVD (``reference``: a real video, or a folder of videos and images) and identity similarity
  (``portrait``) when the modules ``avatar_cli.eval.fid`` / ``.fvd`` / ``.identity`` exist; imported
  lazily, so this module works without them (the metric is then reported as unavailable).

Face track (module docstring of :mod:`.sync` for the crop rule). syncnet_python detects faces with S3FD
on every frame, links them into tracks (IoU > 0.5, >100 frames) and scores each track. Here:

- ``face="scrfd"`` (``"auto"`` when its weights are installed): SCRFD-10G (InsightFace ``det_10g.onnx``
  from Ditto's aux models, or ``scrfd_10g_bnkps.onnx`` from Hallo's face analysis; the same network)
  on every frame, the largest face per frame, frames without a face interpolated -- one track, the
  whole video (talking-head renders hold one face);
- ``face_box`` (x, y, w, h): that box on every frame (no detector);
- ``face="whole"`` (``"auto"`` without detector weights): the whole frame resized to 224x224.

Different detectors give slightly different boxes, so Sync-C/D here are close to, not identical with,
syncnet_python's on the same video (docs/eval.md, "Differences"). The crops are kept in memory, never
re-encoded (syncnet_python writes them to an XVID .avi and reads them back through JPEG frames).

Modules: ``media.py`` (frames, speech, references), ``face_track.py`` (the face track and its crops),
``tables.py`` (markdown table, plot), and here the metrics of one video or a batch.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from . import sync as syncmod
from .face_track import FACE_CHOICES, ScrfdDetector, crop_bgr, face_crops, find_detector  # noqa: F401
from .media import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_frames, read_frames, read_speech_pcm,  # noqa: F401
                    reference_media)
from .tables import _mean, markdown_table, plot_batch  # noqa: F401


def sync_metrics(video: str | Path, audio: str | Path | None = None, face: str = "auto",
                 face_box: Sequence[float] | None = None, syncnet: str | Path | None = None,
                 weights_dir: str | Path | None = None, device: str = "cpu", vshift: int = syncmod.VSHIFT,
                 net=None, note: Callable[[str], None] = lambda m: None) -> dict:
    """Sync-C, Sync-D and the offset of ``video``.

    Args:
        audio: the speech to compare with (default: the video's own audio track).
        syncnet: the ``syncnet_v2.model`` file or its folder (default: :func:`.syncnet.find_syncnet`).
        net: a loaded network to use instead (tests, batches).

    Returns:
        {"sync_c", "sync_d", "offset_frames", "sync_windows", "face", "vshift"}.

    Raises:
        WeightsError: SyncNet (or a requested detector) missing. InputError: unreadable media, too short.
    """
    from .syncnet import find_syncnet, load_syncnet

    if net is None:
        net = load_syncnet(find_syncnet(syncnet, weights_dir), device)
    try:
        pcm = read_speech_pcm(audio if audio is not None else video)
    except InputError as err:
        if audio is None and "no audio stream" in str(err):
            raise InputError(f"video {video} has no audio track; pass --audio SPEECH (the speech it was rendered "
                             f"from)") from None
        raise
    crops, how = face_crops(video, face, face_box, weights_dir, device, note)
    try:
        result = syncmod.sync_scores(net, crops, pcm, vshift=vshift, device=device)
    except ValueError as err:
        raise InputError(f"{video}: {err}") from None
    return {**result.to_dict(), "face": how, "vshift": vshift}


def _optional(module: str, function: str):
    """``avatar_cli.eval.<module>.<function>``, or None when that module is not part of this install."""
    try:
        mod = importlib.import_module(f"avatar_cli.eval.{module}")
    except ModuleNotFoundError as err:
        if err.name in (f"avatar_cli.eval.{module}",):
            return None
        raise
    return getattr(mod, function, None)


def distribution_metrics(generated: list[np.ndarray], reference: str | Path | None, portrait: str | Path | None,
                         weights_dir: str | Path | None, note: Callable[[str], None] = lambda m: None) -> dict:
    """FID and FVD against ``reference`` and identity similarity to ``portrait``, each when its module exists
    (else reported as ``None`` with a note). ``generated``: videos as (T, H, W, 3) uint8 RGB arrays."""
    out: dict = {}
    if reference is not None:
        ref_videos, ref_images = reference_media(reference)
        fid = _optional("fid", "fid_between")
        if fid is None:
            note("note: FID is not part of this install (avatar_cli.eval.fid); skipped")
            out["fid"] = None
        else:
            gen_frames = np.concatenate(generated)
            ref_frames = [f for v in ref_videos for f in v] + list(ref_images)
            out["fid"] = float(fid(gen_frames, ref_frames, weights_dir))
        fvd = _optional("fvd", "fvd_between")
        if fvd is None:
            note("note: FVD is not part of this install (avatar_cli.eval.fvd); skipped")
            out["fvd"] = None
        elif not ref_videos:
            note("note: FVD needs reference videos (the reference holds only images); skipped")
            out["fvd"] = None
        else:
            out["fvd"] = float(fvd(generated, ref_videos, weights_dir))
    if portrait is not None:
        from ..media.image import load_source

        identity = _optional("identity", "identity_similarity")
        if identity is None:
            note("note: identity similarity is not part of this install (avatar_cli.eval.identity); skipped")
            out["identity"] = None
        else:
            image = np.asarray(load_source(portrait))
            out["identity"] = identity(np.concatenate(generated), image, weights_dir)
    return out


def check_video(video: str | Path) -> None:
    """Fail in one line unless ``video`` is a file ffmpeg reads as a video (an image, e.g. the portrait
    given by mistake, is named as such).

    Raises:
        InputError: missing, an image, or not a video ffmpeg can read.
    """
    video = Path(video)
    if not video.is_file():
        raise InputError(f"video {video} does not exist; check the path")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(video) as opened:
            kind = opened.format
    except (UnidentifiedImageError, OSError):
        kind = None
    if kind is not None and kind != "GIF":
        raise InputError(f"{video} is an image ({kind}), not a video; give a rendered video "
                         f"('avatar eval talk.mp4'), the portrait goes to --portrait")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration):
        meta = {}
    finally:
        reader.close()
    if not meta.get("size") or not meta.get("fps"):
        raise InputError(f"{video} is not a video ffmpeg can read; give a rendered mp4 (an image or speech "
                         f"file is not a video)")


def evaluate_video(video: str | Path, audio: str | Path | None = None, reference: str | Path | None = None,
                   portrait: str | Path | None = None, face: str = "auto", face_box: Sequence[float] | None = None,
                   syncnet: str | Path | None = None, weights_dir: str | Path | None = None, device: str = "cpu",
                   vshift: int = syncmod.VSHIFT, net=None, note: Callable[[str], None] = lambda m: None) -> dict:
    """Every metric of one video: {"video", "frames", "duration_s", "sync_c", "sync_d", "offset_frames",
    "sync_windows", "face", "vshift"} plus "fid" / "fvd" (with ``reference``) and "identity" (with
    ``portrait``). Errors as :func:`sync_metrics`."""
    video = Path(video)
    check_video(video)  # before SyncNet's weights are looked for
    row: dict = {"video": str(video)}
    row.update(sync_metrics(video, audio, face, face_box, syncnet, weights_dir, device, vshift, net, note))
    frames = None
    if reference is not None or portrait is not None:
        frames = read_frames(video)
        row.update(distribution_metrics([frames], reference, portrait, weights_dir, note))
    import imageio_ffmpeg

    count, seconds = imageio_ffmpeg.count_frames_and_secs(str(video))
    row["frames"], row["duration_s"] = int(count), round(float(seconds), 4)
    return row


# =========================================================================== batches
@dataclass
class BatchEntry:
    """One line of an ``avatar batch --json`` results file."""

    job: int | None
    status: str
    output: str


def read_results(path: str | Path) -> list[BatchEntry]:
    """The lines of an ``avatar batch --json`` results file (JSON Lines of ``JobResult``: job, status,
    output, seconds, rtf, error). Relative outputs are resolved against the file's folder.

    Raises:
        InputError: missing file, a line that is not a JSON object with "output", or no line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist; write one with 'avatar batch JOBS --json > {path}'")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path.name} line {number}: not JSON ({err.msg}); give the output of 'avatar batch "
                             f"--json'") from None
        if not isinstance(row, dict) or not row.get("output"):
            raise InputError(f"{path.name} line {number}: no \"output\" field; give the output of 'avatar batch --json'")
        output = Path(str(row["output"]))
        output = output if output.is_absolute() else path.resolve().parent / output
        entries.append(BatchEntry(row.get("job"), str(row.get("status", "ok")), str(output)))
    if not entries:
        raise InputError(f"results file {path} has no results; give the output of 'avatar batch --json'")
    return entries


def evaluate_batch(results: str | Path, reference: str | Path | None = None, portrait: str | Path | None = None,
                   face: str = "auto", syncnet: str | Path | None = None, weights_dir: str | Path | None = None,
                   device: str = "cpu", vshift: int = syncmod.VSHIFT, net=None,
                   note: Callable[[str], None] = lambda m: None,
                   report: Callable[[dict, int, int], None] = lambda row, i, n: None,
                   jobs: str | Path | None = None) -> tuple[list[dict], dict]:
    """Evaluate every finished output of an ``avatar batch`` run.

    Each row: the job's index and status, then :func:`evaluate_video`'s fields, or ``"error"`` (a row
    that failed to render or to evaluate is kept with its reason; the others go on). FID and FVD are
    computed once over all outputs' frames against ``reference`` (a distribution metric), identity per video:
    to ``portrait``, or with ``jobs`` (the batch's jobs file) to each output's own portrait.

    Returns:
        (rows, summary): summary = {"videos", "evaluated", "failed", "sync_c_mean", "sync_d_mean",
        "offset_abs_mean", "fid", "fvd", "identity_mean"} (means over evaluated videos; None when none).

    Raises:
        InputError: unreadable results file. WeightsError: SyncNet missing (before any video is read).
    """
    from .syncnet import find_syncnet, load_syncnet

    entries = read_results(results)
    portraits: dict[str, Path] = {}
    if jobs is not None:
        from ..batch import read_jobs

        portraits = {str(job.output.resolve()): job.image for job in read_jobs(jobs)}
    if net is None:
        net = load_syncnet(find_syncnet(syncnet, weights_dir), device)
    rows, generated = [], []
    for position, entry in enumerate(entries, 1):
        row: dict = {"job": entry.job, "status": entry.status, "video": entry.output}
        if entry.status not in ("ok", "skipped"):
            row["error"] = f"not rendered (status {entry.status})"
        else:
            try:
                own = portraits.get(str(Path(entry.output).resolve()), portrait)
                row.update(evaluate_video(entry.output, None, None, own, face, None, syncnet, weights_dir,
                                          device, vshift, net, note))
                if reference is not None:
                    generated.append(read_frames(entry.output))
            except InputError as err:
                row["error"] = str(err)
        rows.append(row)
        report(row, position, len(entries))
    ok = [r for r in rows if "error" not in r]
    summary = {"videos": len(rows), "evaluated": len(ok), "failed": len(rows) - len(ok),
               "sync_c_mean": _mean([r["sync_c"] for r in ok]), "sync_d_mean": _mean([r["sync_d"] for r in ok]),
               "offset_abs_mean": _mean([abs(r["offset_frames"]) for r in ok])}
    if reference is not None and generated:
        summary.update(distribution_metrics(generated, reference, None, weights_dir, note))
    identities = [r["identity"].get("mean") if isinstance(r.get("identity"), dict) else r.get("identity")
                  for r in ok if r.get("identity") is not None]
    identities = [v for v in identities if isinstance(v, (int, float))]
    summary["identity_mean"] = _mean(identities)
    return rows, summary
