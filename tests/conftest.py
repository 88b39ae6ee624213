"""Common fixtures: the small real inputs in tests/data, a tiny random-weight pipeline, and an mp4 reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: small real inputs shipped with the repository (see tests/data/README.md):
    astronaut.png (256x256 RGB portrait), cat_chelsea.png (226x150 RGB, no human face),
    cameraman_gray.png (256x256 grayscale), speech_espeak.wav (4.0 s mono 16 kHz),
    speech_espeak_48k.wav (2.33 s mono 48 kHz)."""
    return DATA


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny architecture with random weights on the CPU (a few M parameters)."""
    from avatar_cli import UNetPipeline

    return UNetPipeline.from_preset("tiny", device="cpu", dtype="float32")


def ffmpeg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the bundled ffmpeg (tests make derived media with it)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    return subprocess.run(cmd, capture_output=True, check=check)


def probe(path: str | Path) -> dict:
    """Read an mp4 back with ffmpeg, independently of the code that wrote it.

    Returns frames (decoded count), fps, width, height, video duration_s = frames / fps, the audio
    codec name, the decoded audio duration in seconds, and the number of video and audio streams.
    """
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True).stderr
    video = re.search(r"Stream #\S+.*Video: (\w+).*?, (\d+)x(\d+).*?, ([\d.]+) fps", info)
    audio = re.search(r"Stream #\S+.*Audio: (\w+)", info)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    fps = float(video.group(4)) if video else 0.0
    out = {"video_codec": video.group(1) if video else None, "frames": frames, "fps": fps,
           "width": int(video.group(2)) if video else 0, "height": int(video.group(3)) if video else 0,
           "duration_s": frames / fps if fps else 0.0, "audio_codec": audio.group(1) if audio else None,
           "audio_duration_s": None, "pix_fmt": "yuv420p" if "yuv420p" in info else None,
           "video_streams": len(re.findall(r"Stream #\S+.*Video:", info)),
           "audio_streams": len(re.findall(r"Stream #\S+.*Audio:", info))}
    if audio:
        pcm = subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1",
                              "-ar", "16000", "-f", "s16le", "-"], capture_output=True).stdout
        out["audio_duration_s"] = len(pcm) / 2 / 16000
    return out


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a video as (n, H, W, 3) uint8."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames)


def wait_until_writing(proc: subprocess.Popen, folder: Path, name: str, ready=lambda: True,
                       timeout: float = 120) -> None:
    """Wait until ``proc`` writes the temporary file of output ``name`` in ``folder`` (and ``ready()``),
    then a moment longer; fail if ``proc`` ended first (it could not be interrupted then)."""
    import time

    stem = Path(name).stem
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready() and any(p.name.startswith(f".{stem}.") and p.name.endswith(".partial.mp4")
                           for p in folder.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the process ended before it could be interrupted"
