"""Synthetic talking-head videos for the training tests.

Each video: a coloured background, a light disc (the "head") drifting on a slow circle, and a dark
bar (the "mouth") whose height follows the envelope of the speech track: a 220 Hz tone switched
on and off in random syllables. So the mouth region is predictable from the audio, the rest from
the reference frame and the motion so far: what the avatar models learn, in miniature.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

RATE = 16000


def syllables(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Envelope in [0, 1] at 16 kHz: alternating tone bursts and pauses of 0.08-0.3 s."""
    env = np.zeros(int(seconds * RATE), np.float32)
    pos, on = 0, bool(rng.integers(2))
    while pos < len(env):
        length = int(rng.uniform(0.08, 0.3) * RATE)
        if on:
            ramp = np.sin(np.linspace(0, np.pi, min(length, len(env) - pos))) ** 0.5
            env[pos:pos + length] = ramp
        pos += length
        on = not on
    return env


def make_video(path: Path, seconds: float, seed: int, size: int = 64, fps: int = 25) -> Path:
    """Write an mp4 (H.264 + AAC) of the synthetic talker; returns ``path``."""
    rng = np.random.default_rng(seed)
    env = syllables(seconds, rng)
    t = np.arange(len(env)) / RATE
    speech = (0.5 * env * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    background = rng.uniform(40, 200, 3)
    phase = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = []
    for i in range(int(seconds * fps)):
        opening = env[min(int(i / fps * RATE), len(env) - 1)]
        cx = size / 2 + size * 0.08 * np.cos(phase + i / fps * 1.5)
        cy = size / 2 + size * 0.05 * np.sin(phase + i / fps * 1.5)
        frame = np.empty((size, size, 3), np.float32)
        frame[:] = background
        head = (xx - cx) ** 2 + (yy - cy) ** 2 < (size * 0.3) ** 2
        frame[head] = (230, 190, 160)
        mouth_h = 1 + opening * size * 0.12
        mouth = (np.abs(xx - cx) < size * 0.12) & (np.abs(yy - (cy + size * 0.12)) < mouth_h / 2)
        frame[mouth] = (60, 20, 20)
        frames.append(frame.clip(0, 255).astype(np.uint8))
    wav = path.with_suffix(".f32")
    wav.write_bytes(speech.tobytes())
    silent = path.with_suffix(".noaudio.mp4")
    writer = imageio_ffmpeg.write_frames(str(silent), (size, size), fps=fps, codec="libx264",
                                         output_params=["-crf", "12"], macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(silent),
                    "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", str(wav), "-c:v", "copy", "-c:a", "aac",
                    "-shortest", str(path)], check=True)
    wav.unlink()
    silent.unlink()
    return path
