"""Training data: talking-head videos -> VAE latents + wav2vec2 features, and clip sampling.

``prepare`` decodes each video with the bundled ffmpeg (resampled to ``fps``, centre-cropped to a
square, resized to ``size``), encodes its frames to VAE latents (posterior mean x scaling factor)
and its speech to per-frame wav2vec2 features with the same code as rendering, and writes one shard
per video plus a line in ``index.jsonl``::

    DATASET/index.jsonl          {"id", "source", "frames", "quality", "fps", "size", "shard", "audio_model"}
    DATASET/shards/<id>.safetensors   latents (T, 4, S/8, S/8) and audio (T, layers, dim), float16

It is resumable (videos already in the index are skipped) and a bad video is reported and skipped.
``ClipDataset`` samples training clips from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AvatarError, InputError
from ..media.audio import load_speech, num_video_frames
from ..models.audio_encoder import frame_windows

EDGE_MARGIN = 7  # OSA-LCM sec. 4.2: the first 7 frames of a video never start a sample


def video_id(path: Path) -> str:
    return f"{path.stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def read_video_frames(path: Path, fps: float, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8 frames at ``fps``, centre-cropped and resized by ffmpeg.

    Raises:
        InputError: not a video ffmpeg can read.
    """
    import imageio_ffmpeg

    vf = f"fps={fps},crop=min(iw\\,ih):min(iw\\,ih),scale={size}:{size}:flags=lanczos"
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", vf])
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(f"cannot read video {path}: {str(err).splitlines()[0] if str(err) else 'no frames'}") from None
    if not frames:
        raise InputError(f"video {path} has no frames")
    return np.stack(frames)


def prepare(videos: list[Path], output: Path, pipe, fps: float = 25.0, size: int = 512, quality: str = "high",
            log: Callable[[str], None] = print, clip_frames: int = 16) -> dict:
    """Encode videos into a dataset (see module docstring). Returns {"added", "skipped", "failed"}.

    Args:
        pipe: an ``AvatarPipeline`` whose VAE and audio encoder are used.
        quality: "high" (FADA's data set A) or "moderate" (the larger set B).
        clip_frames: for the Hallo family, whose audio is padded to whole clips before wav2vec2.

    For the Hallo family (weights with a face locator) the face and lip boxes of each video's first
    frame are found too (MediaPipe with the ``face`` extra, else the whole frame with a warning)
    and kept in the index, for the face-locator features and region masks of training.
    """
    from safetensors.torch import save_file

    from ..media.features import fingerprint

    if quality not in ("high", "moderate"):
        raise InputError(f"--quality must be high or moderate (got {quality!r})")
    (output / "shards").mkdir(parents=True, exist_ok=True)
    index_path = output / "index.jsonl"
    known = {json.loads(line)["id"] for line in index_path.read_text().splitlines() if line.strip()} \
        if index_path.is_file() else set()
    model_id = fingerprint(pipe.models.audio_encoder)
    counts = {"added": 0, "skipped": 0, "failed": 0}
    for video in videos:
        vid = video_id(Path(video))
        if vid in known:
            counts["skipped"] += 1
            continue
        try:
            frames = read_video_frames(Path(video), fps, size)
            waveform = load_speech(video)
            features = pipe.audio_features(waveform, fps, pipe.audio_padding(clip_frames))
            total = min(len(frames), features.shape[0], num_video_frames(waveform.shape[0], fps))
            boxes = {}
            if pipe.models.face_locator is not None:
                from ..media.face import face_conditions

                face = face_conditions(frames[0], size // 8, None, "none", warn=lambda m: log(f"{video}: {m}"))
                boxes = {"face_box": [round(v, 2) for v in face.face_box],
                         "lip_box": [round(v, 2) for v in face.lip_box]}
            if total < 2:
                raise InputError(f"video {video} is shorter than two frames")
            latents = []
            for chunk in np.array_split(frames[:total], max(1, total // 8)):
                pixels = torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 127.5 - 1
                latents.append(pipe.encode_pixels(pixels).float().cpu())
            shard = f"shards/{vid}.safetensors"
            save_file({"latents": torch.cat(latents).half().contiguous(),
                       "audio": features[:total].half().contiguous()}, output / shard,
                      metadata={"fps": str(fps), "size": str(size), "source": str(video)})
        except AvatarError as err:
            log(f"skipped {video}: {err}")
            counts["failed"] += 1
            continue
        entry = {"id": vid, "source": str(video), "frames": int(total), "quality": quality, "fps": fps,
                 "size": size, "shard": shard, "audio_model": model_id, **boxes}
        with open(index_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        counts["added"] += 1
        log(f"added {video}: {total} frames")
    return counts


@dataclass
class Video:
    id: str
    latents: torch.Tensor  # (T, 4, h, w)
    audio: torch.Tensor    # (T, layers, dim)
    quality: str
    face_box: list[float] | None = None  # (x, y, w, h) in frame pixels (Hallo family)
    lip_box: list[float] | None = None


class ClipDataset:
    """Clips for training, drawn by an explicit generator (so a run is resumable by step number).

    Args:
        root: a dataset folder written by :func:`prepare`.
        clip_frames: F. motion_frames: M.
        quality: keep only videos of this tag (None: all).
        pairs: draw consecutive clips (n, n+1) for EFT.
    """

    def __init__(self, root: str | Path, clip_frames: int, motion_frames: int, quality: str | None = None,
                 pairs: bool = False):
        from safetensors.torch import load_file

        root = Path(root)
        index = root / "index.jsonl"
        if not index.is_file():
            raise InputError(f"{root} is not a dataset (no index.jsonl); make one with 'avatar data prepare'")
        self.clip_frames, self.motion_frames, self.pairs = clip_frames, motion_frames, pairs
        needed = EDGE_MARGIN + clip_frames  # a clip (or EFT's target clip n+1) starts at frame >= 7
        self.videos = []
        for line in index.read_text().splitlines():
            entry = json.loads(line)
            if (quality is None or entry["quality"] == quality) and entry["frames"] >= needed:
                tensors = load_file(root / entry["shard"])
                self.videos.append(Video(entry["id"], tensors["latents"].float(), tensors["audio"].float(),
                                         entry["quality"], entry.get("face_box"), entry.get("lip_box")))
        if not self.videos:
            raise InputError(f"{root} has no video of at least {needed} frames"
                             + (f" with quality {quality}" if quality else ""))

    def _clip(self, video: Video, start: int, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (4, F, h, w) of frames [start, start + F), the reference latent filling in front
        where start < 0; and audio windows (F, 5, layers, dim)."""
        f = self.clip_frames
        idx = torch.arange(start, start + f)
        frames = [video.latents[i] if i >= 0 else reference for i in idx.tolist()]
        return torch.stack(frames, dim=1), frame_windows(video.audio, idx.clamp(min=0))

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One training example (batch dimension 1):

        ``latents`` (1, 4, F, h, w) the clip; ``audio`` (1, F, 5, layers, dim); ``reference``
        (1, 4, h, w) a random frame of the same video; ``motion`` (M, 4, h, w) the M frames
        before the clip (the reference filling in front). With ``pairs``: the target clip n+1
        starts at s >= 7 and ``previous`` (1, 4, F, h, w) is clip n (reference-filled where s < F),
        ``motion`` then being clip n's last M frames.
        """
        video = self.videos[int(torch.randint(len(self.videos), (1,), generator=generator))]
        total, f, m = video.latents.shape[0], self.clip_frames, self.motion_frames
        reference = video.latents[int(torch.randint(total, (1,), generator=generator))]
        start = int(torch.randint(EDGE_MARGIN, total - f + 1, (1,), generator=generator))
        latents, audio = self._clip(video, start, reference)
        example = {"latents": latents[None], "audio": audio[None], "reference": reference[None]}
        if video.face_box is not None:
            example["face_box"] = torch.tensor(video.face_box)[None]
            example["lip_box"] = torch.tensor(video.lip_box)[None]
        if self.pairs:
            previous, _ = self._clip(video, start - f, reference)
            example["previous"] = previous[None]
            example["motion"] = previous[:, f - m:].permute(1, 0, 2, 3) if m else previous[:, :0].permute(1, 0, 2, 3)
        else:
            before = [video.latents[i] if i >= 0 else reference for i in range(start - m, start)]
            example["motion"] = torch.stack(before) if m else latents[:, :0].permute(1, 0, 2, 3)
        return example
