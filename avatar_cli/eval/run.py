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
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, WeightsError
from . import sync as syncmod

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FACE_CHOICES = ("auto", "scrfd", "whole")


# =========================================================================== media
def iter_frames(path: str | Path, fps: float = syncmod.FPS):
    """Yield (H, W, 3) uint8 RGB frames of a video resampled to ``fps`` by ffmpeg (``-r``, as
    syncnet_python's ``run_pipeline.py`` converts its input).

    Raises:
        InputError: missing file, or not a video ffmpeg can read.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video {path} does not exist; check the path")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-r", f"{fps:g}"])
        meta = next(reader)
        width, height = meta["size"]
    except (RuntimeError, OSError, StopIteration) as err:
        text = str(err).strip().splitlines()
        raise InputError(f"cannot read video {path}: {text[-1] if text else 'no frames'}; give an mp4 or avi") from None
    try:
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except (RuntimeError, OSError) as err:
        text = str(err).strip().splitlines()
        raise InputError(f"cannot read video {path}: {text[-1] if text else err}") from None


def read_frames(path: str | Path, fps: float = syncmod.FPS) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames at ``fps`` (:func:`iter_frames`). Raises InputError (no frames too)."""
    frames = list(iter_frames(path, fps))
    if not frames:
        raise InputError(f"video {path} has no frames")
    return np.stack(frames)


def read_speech_pcm(path: str | Path) -> np.ndarray:
    """(samples,) 16 kHz mono speech as int16 PCM values (float64): syncnet_python's
    ``ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`` then ``wavfile.read``. Raises InputError (no audio track)."""
    from ..media.audio import load_speech

    return syncmod.pcm16(np.asarray(load_speech(path)))


# =========================================================================== faces
class ScrfdDetector:
    """SCRFD-10G face boxes with onnxruntime (the decode of ``media/face_crop.py``, Ditto's detector).

    Args:
        onnx_path: ``det_10g.onnx`` (or ``scrfd_10g_bnkps.onnx``).
        device: "cpu" forces the CPU provider.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu"):
        from ..media.face_crop import _onnxruntime, _providers

        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                            providers=_providers(ort, device))
        self.path = Path(onnx_path)

    def largest(self, frame: np.ndarray) -> np.ndarray | None:
        """(4,) x1, y1, x2, y2 of the largest face in an (H, W, 3) uint8 RGB frame, or None."""
        from ..media.face_crop import det_blob, largest_box, letterbox, scrfd_decode

        det_image, scale = letterbox(frame)
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: det_blob(det_image)})
        dets, _ = scrfd_decode(outputs, scale)
        return largest_box(dets)


def find_detector(weights_dir: str | Path | None = None) -> Path | None:
    """The SCRFD-10G ONNX file, if installed: ``<weights_dir>/aux_models/det_10g.onnx``, Ditto's download
    (``ditto_pytorch/aux_models/det_10g.onnx``), its converted folder (``avatar weights convert --from
    ditto``: ``$AVATAR_HOME/converted/ditto/aux_models``) or Hallo's face analysis (``scrfd_10g_bnkps.onnx``)."""
    from ..weights import converted_dir, find_folder

    for sub, component, inside, name in (("aux_models", "ditto", "ditto_pytorch/aux_models", "det_10g.onnx"),
                                         ("face_analysis/models", "hallo-face-analysis", "face_analysis/models",
                                          "scrfd_10g_bnkps.onnx")):
        try:
            folder = find_folder(weights_dir, sub, component, inside)
        except WeightsError:
            folder = None
        if folder is not None and (folder / name).is_file():
            return folder / name
        if component == "ditto" and (converted_dir("ditto") / sub / name).is_file():
            return converted_dir("ditto") / sub / name
    return None


def face_crops(video: str | Path, face: str = "auto", face_box: Sequence[float] | None = None,
               weights_dir: str | Path | None = None, device: str = "cpu",
               note: Callable[[str], None] = lambda m: None) -> tuple[np.ndarray, str]:
    """The 224x224 BGR face crops SyncNet reads, one per frame at 25 fps.

    Args:
        face: "auto" | "scrfd" | "whole" (module docstring). face_box: (x, y, w, h), overrides ``face``.

    Returns:
        ((T, 224, 224, 3) uint8 BGR crops, how the face was found: "scrfd:<file>", "face-box", "whole-frame").

    Raises:
        InputError: unknown ``face``; no face in any frame; unreadable video.
        WeightsError: ``face="scrfd"`` without its ONNX file.
    """
    from ..media.face_crop import resize_linear

    if face not in FACE_CHOICES:
        raise InputError(f"--face {face!r}: choose from {', '.join(FACE_CHOICES)}")
    size = syncmod.CROP_SIZE
    if face_box is None and face != "whole":
        onnx = find_detector(weights_dir)
        if onnx is None:
            if face == "scrfd":
                raise WeightsError("the SCRFD face detector (det_10g.onnx) is not installed; run 'avatar weights "
                                   "download ditto', or pass --face-box x,y,w,h or --face whole")
            note("note: no face detector installed (det_10g.onnx of 'avatar weights download ditto'); "
                 "SyncNet reads the whole frame")
            face = "whole"
        else:
            try:
                detector = ScrfdDetector(onnx, str(device))
            except InputError:
                if face == "scrfd":
                    raise
                note("note: onnxruntime is not installed; SyncNet reads the whole frame")
                face = "whole"
    if face_box is None and face == "whole":
        crops = [resize_linear(np.ascontiguousarray(f[:, :, ::-1]), (size, size)) for f in iter_frames(video)]
        how = "whole-frame"
    else:
        if face_box is not None:
            x, y, w, h = (float(v) for v in face_box)
            # a fixed box: every frame gets the same window (the 13-frame median of a constant is itself)
            fixed = syncmod.track_crops(np.array([[x, y, x + w, y + h]] * syncmod.SMOOTH_KERNEL))[
                syncmod.SMOOTH_KERNEL // 2]
            crops = [crop_bgr(frame, fixed) for frame in iter_frames(video)]
            how = "face-box"
        else:
            found = [detector.largest(f) for f in iter_frames(video)]
            if not found:
                raise InputError(f"video {video} has no frames")
            if all(b is None for b in found):
                raise InputError(f"no face found in {video}; pass --face-box x,y,w,h or --face whole")
            windows = syncmod.track_crops(syncmod.fill_boxes(
                np.array([[np.nan] * 4 if b is None else b[:4] for b in found], dtype=np.float64)))
            crops = [crop_bgr(frame, windows[min(i, len(windows) - 1)]) for i, frame in enumerate(iter_frames(video))]
            how = f"scrfd:{detector.path.name}"
    if not crops:
        raise InputError(f"video {video} has no frames")
    return np.stack(crops), how


def crop_bgr(frame: np.ndarray, window: np.ndarray) -> np.ndarray:
    """One RGB frame -> its 224 crop in BGR (the channel order SyncNet was trained on, cv2's)."""
    return syncmod.crop_frame(np.ascontiguousarray(frame[:, :, ::-1]), window)


# =========================================================================== metrics
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


def reference_media(reference: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(videos, still images) of a reference: a video file, or a folder of videos and images (sorted by name).

    Raises:
        InputError: missing, or a folder with no video or image.
    """
    from ..media.image import load_source

    reference = Path(reference)
    if reference.is_file():
        return [read_frames(reference)], []
    if not reference.is_dir():
        raise InputError(f"reference {reference} does not exist; give a video or a folder of videos/images")
    files = sorted(p for p in reference.iterdir() if p.is_file())
    videos = [read_frames(p) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [np.asarray(load_source(p)) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not videos and not images:
        raise InputError(f"reference folder {reference} holds no video ({', '.join(VIDEO_SUFFIXES)}) or image")
    return videos, images


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


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(rows: list[dict], summary: dict) -> str:
    """A markdown summary: one row per video (Sync-C, Sync-D, offset, face, error) and the means."""
    lines = ["| job | video | Sync-C ↑ | Sync-D ↓ | offset (frames) | face | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_fmt(r.get('job'))} | {Path(r['video']).name} | {_fmt(r.get('sync_c'))} | "
                     f"{_fmt(r.get('sync_d'))} | {_fmt(r.get('offset_frames'))} | {r.get('face', '-')} | "
                     f"{r.get('error', '')} |")
    lines.append(f"| **mean** | {summary['evaluated']} of {summary['videos']} | {_fmt(summary['sync_c_mean'])} | "
                 f"{_fmt(summary['sync_d_mean'])} | |{_fmt(summary['offset_abs_mean'])}| mean | | |")
    extra = [f"{name} {_fmt(summary.get(key))}" for name, key in (("FID", "fid"), ("FVD", "fvd"),
                                                                 ("identity", "identity_mean")) if key in summary
             and summary.get(key) is not None]
    if extra:
        lines += ["", ", ".join(extra)]
    return "\n".join(lines) + "\n"


def plot_batch(rows: list[dict], path: str | Path) -> None:
    """A PNG scatter of Sync-C against Sync-D, one point per evaluated video (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["sync_d"] for r in ok], [r["sync_c"] for r in ok])
    for r in ok:
        ax.annotate(Path(r["video"]).stem, (r["sync_d"], r["sync_c"]), fontsize=7)
    ax.set_xlabel("Sync-D (lower is better)")
    ax.set_ylabel("Sync-C (higher is better)")
    ax.set_title(f"avatar eval: {len(ok)} videos", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
