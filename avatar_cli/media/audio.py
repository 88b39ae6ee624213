"""Speech in: any format ffmpeg reads -> mono 16 kHz float32.

Decoding runs imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed): wav of any sample width,
mp3, flac, ogg, m4a/aac, and the audio track of a video file. ffmpeg also does the down-mix (the mean of the channels) and
the resampling (its swresample filter, band-limited, unlike a naive linear resampler).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from ..errors import InputError

SAMPLE_RATE = 16_000


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(lines).lower()
    if "matches no streams" in text or "does not contain any stream" in text or "output file does not contain" in text:
        return "it has no audio stream"
    if "invalid data" in text or "could not find codec" in text or "unknown format" in text or "end of file" in text:
        return "ffmpeg does not recognise it as audio"
    return lines[-1] if lines else "ffmpeg failed"


def load_speech(path: str | Path, num_samples: int | None = None) -> "Waveform":
    """Decode a speech recording to mono 16 kHz float32 in [-1, 1].

    Args:
        path: any audio file ffmpeg reads, or a video file with an audio track.
        num_samples: pad with silence or trim to exactly this many samples at 16 kHz; None keeps
            the recording's length.

    Returns:
        (samples,) float32 samples at :data:`SAMPLE_RATE` Hz as a :class:`Waveform` (array-like,
        read on demand from a temporary file, so its length costs no memory).

    Raises:
        InputError: missing, unreadable, empty, not audio, without an audio stream, or with no
            samples.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"audio {path} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"audio {path} is a folder; give an audio file")
    if not os.access(path, os.R_OK):
        raise InputError(f"audio {path} is not readable (permission denied); check its permissions")
    if path.stat().st_size == 0:
        raise InputError(f"audio {path} is an empty file (0 bytes); give a speech recording")
    # ffmpeg writes the samples to a temporary file (unlinked at once) that is read on demand: an
    # hour of speech (230 MB) never sits in the process's memory.
    fd, tmp = tempfile.mkstemp(prefix="avatar-speech-", suffix=".f32")
    os.close(fd)
    try:
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(path),
               "-map", "0:a:0", "-vn", "-rematrix_maxval", "1.0", "-ac", "1", "-ar", str(SAMPLE_RATE),
               "-f", "f32le", tmp]
        if num_samples is not None:  # resample first, so that the padding counts 16 kHz samples
            cmd[-3:-3] = ["-af", f"aresample={SAMPLE_RATE},apad=whole_len={num_samples},atrim=end_sample={num_samples}"]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0:
            reason = _ffmpeg_reason(proc.stderr.decode(errors="replace"))
            raise InputError(f"cannot read audio {path}: {reason}; give a wav, mp3, flac, ogg or m4a file")
        if os.path.getsize(tmp) == 0:
            raise InputError(f"audio {path} contains no samples (zero length); give a speech recording")
        return Waveform(tmp)
    finally:
        os.unlink(tmp)


class Waveform:
    """Mono 16 kHz float32 samples kept in an (unlinked) file and read on demand.

    Array-like: ``shape``, ``len``, ``dtype``, slicing returns a NumPy array of that range, and
    ``np.asarray`` reads all samples. Reads go through the page cache, not the process's memory, so
    a long recording costs nothing until a window of it is read.
    """

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY)
        self.shape = (os.fstat(self._fd).st_size // 4,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            return np.asarray(self)[key]
        start, stop, _ = key.indices(self.shape[0])
        if stop <= start:
            return np.zeros(0, np.float32)
        data = os.pread(self._fd, (stop - start) * 4, start * 4)
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[0:self.shape[0]]
        return data if dtype is None else data.astype(dtype)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None


def num_video_frames(num_samples: int, fps: float) -> int:
    """Video frames spanned by the audio: round(duration_s * fps) (halves up), at least 1."""
    return max(1, math.floor(num_samples * fps / SAMPLE_RATE + 0.5))
