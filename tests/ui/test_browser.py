"""``avatar ui`` in headless Chromium (Playwright): a render from uploads, a bad upload's one-line
error, the Live tab from Chromium's fake microphone. Marked ``browser`` (``-m "not browser"`` skips)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .conftest import SPEECH_S, chromium, needs_browser

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def playwright(server):
    needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def page(playwright):
    browser = chromium(playwright)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(300_000)
    yield page
    browser.close()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def set_number(page, name: str, value) -> None:
    box = page.locator(f"#opt-{name} input").first
    box.fill(str(value))
    box.press("Tab")


def test_render_in_the_page(server, page, speech_1s, tmp_path):
    """Uploads -> Render -> the <video> plays for the speech's length (within a frame), the stats show
    NFE, the command line is the equivalent ``avatar render``."""
    page.goto(server.url)
    upload(page, "portrait", ROOT / "tests" / "data" / "astronaut.png")
    upload(page, "speech", speech_1s)
    page.locator("#speech audio, #speech .waveform-container, #speech button").first.wait_for()
    set_number(page, "size", 64)
    set_number(page, "steps", 1)
    page.click("#render-button")
    video = page.locator("#video video")
    video.wait_for(state="attached")
    duration = page.evaluate("""async () => {
        const v = document.querySelector('#video video');
        if (!(v.readyState >= 1)) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        return v.duration; }""")
    assert abs(duration - SPEECH_S) <= 1 / 25 + 1e-3, duration
    stats = page.locator("#stats").inner_text()
    assert re.search(r"nfe\W+1\b", stats), stats
    command = page.locator("#command").inner_text()
    assert "avatar render astronaut.png speech1s.wav" in command and "--size 64" in command \
        and "--steps 1" in command and "--random-weights --arch tiny" in command, command
    shot = os.environ.get("AVATAR_UI_SCREENSHOT")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shot or str(tmp_path / "ui.png"), full_page=False)
    if shot:  # docs/ui.png: a 64-colour palette keeps it small
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(colors=64).save(shot, optimize=True)


def test_bad_upload_is_one_line_in_the_page(server, page, speech_1s, tmp_path):
    """A text file as the portrait: the CLI's one-line message in the page; no file of it is left."""
    page.goto(server.url)
    text = tmp_path / "notes.png"  # an image's name, text inside: the content decides
    text.write_text("not a portrait\n" * 10)
    before = set(server.files())
    upload(page, "portrait", text)
    upload(page, "speech", speech_1s)
    page.locator("#speech audio, #speech .waveform-container, #speech button").first.wait_for()
    page.click("#render-button")
    message = page.get_by_text(re.compile(r"avatar: error: portrait notes\.png is not an image")).first
    message.wait_for()
    line = message.inner_text().strip()
    assert "\n" not in line and str(server.tmp) not in line, line  # one line, naming no server path
    left = [p for p in server.files() if p not in before]
    assert not [p for p in left if p.read_bytes().startswith(b"not a portrait") or p.suffix == ".mp4"], left
    assert not [p for p in left if "session-" in str(p)], left


def live_tab(server, playwright, speech, portrait):
    """Chromium whose fake microphone plays ``speech``, on the Live tab with ``portrait`` uploaded."""
    browser = chromium(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={speech}")
    page = browser.new_context(permissions=["microphone"]).new_page()
    page.set_default_timeout(300_000)
    page.goto(server.url)
    page.get_by_role("tab", name="Live").click()
    upload(page, "live-portrait", portrait)
    return browser, page


def test_live_tab_from_the_fake_microphone(server, playwright, speech_1s, portrait_64):
    """The Live tab: Chromium's fake microphone plays the test speech, the recording streams through
    Ditto (``render_stream``) and frames appear in the page with the first-frame delay and fps."""
    browser, page = live_tab(server, playwright, speech_1s, portrait_64)
    page.locator("#live-speech button.record-button").click()
    page.wait_for_timeout(1500)
    page.locator("#live-speech button.stop-button").click()
    page.locator("#live-speech audio, #live-speech .waveform-container").first.wait_for(state="attached")
    page.click("#live-button")
    page.locator("#live-frame img").first.wait_for()
    status = page.locator("#live-status")
    status.get_by_text(re.compile(r"first frame after [\d.]+ s")).first.wait_for()
    assert re.search(r"\d+ frames", status.inner_text())
    browser.close()


def test_talk_frames_follow_the_microphone_while_it_records(server, playwright, speech_1s, portrait_64):
    """The Live tab's talk box: Chromium's fake microphone streams into Ditto while it records, and a
    frame reaches the page before recording stops (the stream's end is not awaited: it renders on)."""
    browser, page = live_tab(server, playwright, speech_1s, portrait_64)
    page.locator("#live-talk button.record-button").click()
    page.locator("#live-frame img").first.wait_for()
    assert page.locator("#live-talk button.stop-button").is_visible()  # still recording
    status = page.locator("#live-status").inner_text()
    assert re.search(r"first frame after [\d.]+ s; \d+ frames", status)
    browser.close()
