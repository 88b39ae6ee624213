"""``avatar ui`` from Python with ``gradio_client`` (no browser): two clients at once get their own
videos in queue order; a live client that disconnects stops its stream; Ctrl-C stops the server and removes
its session folders."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ffmpeg, probe

ROOT = Path(__file__).resolve().parents[2]


def test_two_clients_at_once_get_their_own_videos_in_queue_order(server, speech_1s, portrait_64):
    client_mod = pytest.importorskip("gradio_client")
    portrait = ROOT / "tests" / "data" / "astronaut.png"
    finished: dict[int, float] = {}
    results: dict[int, tuple] = {}
    jobs = []
    for n, (image, seed) in enumerate(((portrait, 1), (portrait_64, 2))):
        client = client_mod.Client(server.url, verbose=False)
        jobs.append(client.submit(portrait=client_mod.handle_file(str(image)),
                                  speech=client_mod.handle_file(str(speech_1s)),
                                  seed=seed, size=64, steps=1, api_name="/render"))
        time.sleep(0.5)  # the first is queued first

    def wait(n):
        results[n] = jobs[n].result(timeout=600)
        finished[n] = time.perf_counter()

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finished[0] < finished[1]  # served in the order they were queued, one at a time
    videos = [Path(results[n][0]) for n in range(2)]
    stats = [results[n][1] for n in range(2)]
    assert [s["seed"] for s in stats] == [1, 2]
    assert stats[0]["output"] != stats[1]["output"]
    assert videos[0].read_bytes() != videos[1].read_bytes()
    for video, s in zip(videos, stats):
        info = probe(video)
        assert info["frames"] == s["frames"] == 25 and info["width"] == 64 and info["audio_streams"] == 1
    # the renders did not overlap: the second started after the first ended (one per device)
    assert stats[1]["wall_s"] <= finished[1] - finished[0] + 1.0


def test_evaluate_endpoint_checks_the_upload_and_names_the_weights(server, speech_1s, tmp_path):
    """/evaluate: a wav given as the video is refused by its content; a real mp4 without SyncNet's
    weights gets the CLI's one line naming the download (no weights are installed in the test run)."""
    client_mod = pytest.importorskip("gradio_client")
    from gradio_client.exceptions import AppError

    client = client_mod.Client(server.url, verbose=False)
    with pytest.raises(AppError, match=r"^avatar: error: video speech1s\.wav is not a video \(mp4\) by its content"):
        client.predict(video=client_mod.handle_file(str(speech_1s)), speech=None, api_name="/evaluate")
    clip = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1", "-i", str(speech_1s), "-shortest",
           "-pix_fmt", "yuv420p", str(clip))
    try:
        row, plot = client.predict(video=client_mod.handle_file(str(clip)), speech=None, api_name="/evaluate")
    except AppError as err:
        assert str(err).startswith("avatar: error: ") and "\n" not in str(err) and "syncnet" in str(err).lower()
    else:  # SyncNet's weights are installed here: the metrics of the clip
        assert row["video"] == "clip.mp4" and "sync_c" in row


def test_a_live_client_that_disconnects_stops_its_stream(server, portrait_64, tmp_path):
    """/live cancelled by its client after the first frame (as a closed tab does): the stream stops at once
    (StreamStop.cancel, issue 29) and its partial mp4 is removed, long before the 6 s of speech would end."""
    client_mod = pytest.importorskip("gradio_client")
    speech = tmp_path / "speech6s.wav"
    ffmpeg("-stream_loop", "-1", "-i", str(ROOT / "tests" / "data" / "speech_espeak.wav"), "-t", "6", "-ac", "1",
           "-ar", "16000", str(speech))
    client = client_mod.Client(server.url, verbose=False)
    job = client.submit(portrait=client_mod.handle_file(str(portrait_64)), speech=client_mod.handle_file(str(speech)),
                        steps=1, api_name="/live")
    deadline = time.monotonic() + 300
    while not job.outputs():  # the first frame reached the client
        assert not job.done() and time.monotonic() < deadline, job.status()
        time.sleep(0.2)
    live = lambda: [p for p in server.files() if p.name.startswith("live-") and p.suffix == ".mp4"]  # noqa: E731
    assert live()  # being written
    cancelled = time.monotonic()
    job.cancel()
    while live():
        assert time.monotonic() - cancelled < 5.0, live()  # the speech (paced at its own speed) has > 3 s left
        time.sleep(0.1)


def test_ctrl_c_stops_the_server_and_removes_its_folders(server):
    pytest.importorskip("gradio")
    roots = list(server.tmp.glob("avatar-ui-*"))
    assert roots  # the server's work root exists while it runs
    assert server.stop() == 0
    assert "avatar: stopped" in server.text()
    assert not [r for r in roots if r.exists()]
    # Gradio's cached uploads and results go too (its upload route leaves empty placeholder files)
    assert not [p for p in server.files() if p.stat().st_size], server.files()

