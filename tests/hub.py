"""A Hugging Face Hub emulated on 127.0.0.1 for download tests (no network leaves the machine).

Serves ``/{repo_id}/resolve/{revision}/{path}`` (HEAD and GET, with ``Range`` resumes) with the
headers huggingface_hub reads: ``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag`` (the sha256 for
large files, as on the Hub), ``Content-Length``; unknown repos and files answer 404 with the Hub's
``X-Error-Code``. It can cut a transfer halfway to exercise resumption.
"""

from __future__ import annotations

import hashlib
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    cut_once: set[str] = field(default_factory=set)  # file paths whose first full GET is cut halfway
    announce: dict[str, int] = field(default_factory=dict)  # file path -> size the HEAD announces (a lie)

    def add(self, repo_id: str, commit: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = Repo(commit, files)

    def gets(self, suffix: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith(suffix)]

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _resolve(self):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if not match:
                    return self._error(404, "RepoNotFound")
                repo_id, revision, path = match.groups()
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound")
                if revision not in (repo.commit, "main"):
                    return self._error(404, "RevisionNotFound")
                if path not in repo.files:
                    return self._error(404, "EntryNotFound")
                return repo, path, repo.files[path]

            def _error(self, code, error_code):
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None

            def _headers(self, repo, data, status=200, start=0, announced=None):
                self.send_response(status)
                self.send_header("X-Repo-Commit", repo.commit)
                digest = hashlib.sha256(data).hexdigest()
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(len(data) if announced is None else announced))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str((len(data) if announced is None else announced) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def do_HEAD(self):
                found = self._resolve()
                if found:
                    repo, path, data = found
                    self._headers(repo, data, announced=hub.announce.get(path))

            def do_GET(self):
                found = self._resolve()
                if not found:
                    return
                repo, path, data = found
                wanted = self.headers.get("Range")
                start = int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
                self._headers(repo, data, 206 if start else 200, start)
                body = data[start:]
                if path in hub.cut_once and not start:
                    hub.cut_once.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(hub: "FakeHub", monkeypatch, tmp_path, manifest=None):
    """Run ``hub`` with huggingface_hub pointed at it (HF_ENDPOINT) and every cache and home in
    ``tmp_path`` (HF_HOME = tmp_path/hf, AVATAR_HOME = tmp_path/home; HF_HUB_CACHE, HF_HUB_OFFLINE,
    AVATAR_WEIGHTS_DIR unset); AVATAR_MANIFEST = ``manifest`` when given, else unset."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "AVATAR_WEIGHTS_DIR", "AVATAR_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    if manifest is not None:
        monkeypatch.setenv("AVATAR_MANIFEST", str(manifest))
    with hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
