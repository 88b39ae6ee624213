"""The service layer under ``avatar ui``: what a browser request may do, independent of Gradio.

- :class:`Uploads`: every upload is checked by its content (the image opens in Pillow, the speech
  decodes with ``media/audio.py``), against a size limit, and copied into the session's own folder
  under a name of the server's making, so that no request names a path on the server and messages never show one.
- :class:`Sessions`: one temporary folder per browser session (Gradio's ``session_hash``), removed
  when the session ends (the page is closed) and, for all sessions, when the server stops.
- :class:`Models`: pipelines loaded once per (model, method) through :class:`LoadOptions` and kept.

Renders are queued one at a time per device by Gradio's queue (``concurrency_limit=1`` on the render
events, ``app.py``); the page shows the request's place in that queue.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError

#: Upload size limits in bytes (the page and the server both enforce them).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_AUDIO_BYTES = 100 * 1024 * 1024
MAX_VIDEO_BYTES = 500 * 1024 * 1024


class Sessions:
    """Per-session work folders under one root (``tempfile.mkdtemp``; honours ``TMPDIR``).

    Args:
        root: the parent folder; None = a new ``avatar-ui-*`` folder in the system's temporary folder.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="avatar-ui-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._folders: dict[str, Path] = {}
        self._lock = threading.Lock()

    def folder(self, session: str | None) -> Path:
        """The work folder of ``session`` (a Gradio session hash; None: a one-request folder)."""
        with self._lock:
            if session is None:
                return Path(tempfile.mkdtemp(prefix="request-", dir=self.root))
            if session not in self._folders:
                self._folders[session] = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
            return self._folders[session]

    def end(self, session: str | None) -> None:
        """Remove the folder of an ended session (and everything in it)."""
        with self._lock:
            folder = self._folders.pop(session, None) if session is not None else None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove every session's folder and the root (the server stops)."""
        with self._lock:
            self._folders.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _sniff(head: bytes) -> str | None:
    """The media kind of a file from its first bytes: "image", "audio", "video" or None (text, unknown).
    Only a first filter: the image must still open in Pillow and the audio decode in ffmpeg."""
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or \
            (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head.startswith((b"ID3", b"fLaC", b"OggS", b"\xff\xfb",
                                                                           b"\xff\xf3", b"\xff\xf2", b"\x1aE\xdf\xa3")):
        return "audio"
    if head[4:8] == b"ftyp":  # mp4 / m4a / mov: audio or video
        return "video"
    return None


class Uploads:
    """Checks an uploaded file and copies it into a session folder under a new name (``portrait-*.png``).

    Every method raises :class:`InputError` with the CLI's one-line message, the upload named by the
    name the user gave it (``label``), never by its path on the server.
    """

    def __init__(self, max_image: int = MAX_IMAGE_BYTES, max_audio: int = MAX_AUDIO_BYTES,
                 max_video: int = MAX_VIDEO_BYTES):
        self.limits = {"image": max_image, "audio": max_audio, "video": max_video}

    def _copy(self, upload: str | Path | None, what: str, kinds: tuple[str, ...], folder: Path, stem: str,
              limit: int) -> tuple[Path, str]:
        if upload is None or str(upload) == "":
            raise InputError(f"no {what} given; drop a file on the {what} box")
        source = Path(upload)
        label = source.name
        if not source.is_file():
            raise InputError(f"the {what} upload {label} was not received; upload it again")
        size = source.stat().st_size
        if size > limit:
            raise InputError(f"{what} {label} is {size / 1e6:.1f} MB, over this server's {limit / 1e6:.0f} MB "
                             f"limit; give a smaller file")
        with open(source, "rb") as handle:
            kind = _sniff(handle.read(16))
        if kind not in kinds:
            expected = "an image (PNG, JPEG, WebP, ...)" if kinds == ("image",) else \
                "a speech recording (wav, mp3, flac, ogg, m4a)" if "audio" in kinds and "image" not in kinds else \
                "a video (mp4)"
            raise InputError(f"{what} {label} is not {expected} by its content; give {expected}")
        suffix = "".join(c for c in source.suffix.lower()[:8] if c.isalnum() or c == ".") or ".bin"
        handle, name = tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix, dir=folder)  # one per request
        os.close(handle)
        target = Path(name)
        shutil.copyfile(source, target)
        return target, label

    @staticmethod
    def _relabel(err: InputError, path: Path, label: str) -> InputError:
        return InputError(str(err).replace(str(path), label))

    def image(self, upload, folder: Path) -> tuple[Path, str]:
        """An uploaded portrait -> (its copy in ``folder``, the user's file name), after Pillow has
        opened and decoded it (``media/image.py``)."""
        from ..media.image import load_source

        path, label = self._copy(upload, "portrait", ("image",), folder, "portrait", self.limits["image"])
        try:
            load_source(path)
        except InputError as err:
            path.unlink(missing_ok=True)
            raise self._relabel(err, path, label) from None
        return path, label

    def audio(self, upload, folder: Path, what: str = "speech") -> tuple[Path, str]:
        """An uploaded or recorded speech file -> (its copy in ``folder``, the user's file name), after
        ffmpeg has decoded it to samples (``media/audio.py``)."""
        from ..media.audio import load_speech

        path, label = self._copy(upload, what, ("audio", "video"), folder, "speech", self.limits["audio"])
        try:
            load_speech(path)
        except InputError as err:
            path.unlink(missing_ok=True)
            raise self._relabel(err, path, label) from None
        return path, label

    def video(self, upload, folder: Path) -> tuple[Path, str]:
        """An uploaded video (for Evaluate) -> (its copy in ``folder``, the user's file name)."""
        return self._copy(upload, "video", ("video",), folder, "video", self.limits["video"])


class Models:
    """Pipelines loaded once and kept: ``get(model, method)`` loads through ``load`` (a
    :class:`~avatar_cli.load_options.LoadOptions`) the first time and returns the same pipeline after."""

    def __init__(self, load, note: Callable[[str], None] = lambda message: None):
        self.load = load
        self.note = note
        self._pipes: dict[tuple[str, str | None], object] = {}
        self._lock = threading.Lock()

    def get(self, model: str, method: str | None = None):
        """The pipeline of ``model`` / ``method``. Raises what ``LoadOptions.load`` raises."""
        with self._lock:
            key = (model, method)
            if key not in self._pipes:
                pipe = self.load.load(model, method=method, note=self.note)
                pipe.warn = self.note
                self._pipes[key] = pipe
            return self._pipes[key]

    def loaded(self) -> list[tuple[str, str | None]]:
        return list(self._pipes)
