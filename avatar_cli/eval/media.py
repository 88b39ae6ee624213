"""The media ``avatar eval`` reads: a video's frames resampled to SyncNet's frame rate, its speech as
16 kHz PCM, and a reference (a video, or a folder of videos and images) for FID / FVD."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import sync as syncmod

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
