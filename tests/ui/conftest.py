"""Fixtures of the ``avatar ui`` tests: a 1 s speech clip, a running server, headless Chromium.

The server is the real command (``python -m avatar_cli ui --random-weights --arch tiny``) on a free
port, with ``TMPDIR`` pointing at a test folder, so that every temporary file it makes (its session
folders and Gradio's upload cache) lies where the tests can look.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ffmpeg

DATA = Path(__file__).resolve().parents[1] / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEECH_S = 1.0


@pytest.fixture(scope="session")
def speech_1s(tmp_path_factory) -> Path:
    """The first second of tests/data/speech_espeak.wav (16 kHz mono wav)."""
    path = tmp_path_factory.mktemp("ui-media") / "speech1s.wav"
    ffmpeg("-i", str(DATA / "speech_espeak.wav"), "-t", str(SPEECH_S), "-ac", "1", "-ar", "16000", str(path))
    return path


@pytest.fixture(scope="session")
def portrait_64(tmp_path_factory) -> Path:
    """tests/data/astronaut.png at 64x64 (Ditto keeps the portrait's size: a small one renders fast)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("ui-media") / "astronaut64.png"
    Image.open(DATA / "astronaut.png").convert("RGB").resize((64, 64)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``avatar ui``: its url, its TMPDIR, the process."""

    def __init__(self, tmp: Path):
        pytest.importorskip("gradio")
        self.tmp = tmp / "tmp"
        self.tmp.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TMPDIR": str(self.tmp), "GRADIO_ANALYTICS_ENABLED": "False",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(tmp / "server.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "avatar_cli", "ui", "--random-weights", "--arch", "tiny",
                                      "--port", str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while "serving http" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"avatar ui did not start: {self.text()}")
            time.sleep(0.3)

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def files(self) -> list[Path]:
        """Every file under the server's TMPDIR."""
        return sorted(p for p in self.tmp.rglob("*") if p.is_file())

    def stop(self) -> int:
        """Ctrl-C (SIGINT), as a user stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.flush()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("ui-server"))
    yield srv
    srv.stop()


def chromium(playwright, *args: str):
    """Headless Debian Chromium through Playwright (no browser download)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", *args])


def needs_browser():
    pytest.importorskip("gradio")
    pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
