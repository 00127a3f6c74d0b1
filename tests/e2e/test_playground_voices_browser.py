"""The playground's Voices panel and conversation view in a real browser: Debian's chromium, headless, driven by
Playwright, under the page's own Content-Security-Policy, against the real server (tiny-random on CPU, a real Mimi
encode at upload). The microphone is chromium's fake capture device playing a WAV written here (a 440 Hz tone in
noise, 48 kHz), which is the one part that stands in for a person; the page records it through its AudioWorklet,
writes a 16-bit WAV and posts it. What the server stored is checked through the API."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf

from csm_runtime.server import create_app
from tests.conftest import require_binary
from tests.e2e.test_playground_browser import ARGS, CHROMIUM, TOKEN, new_page, settings, wait_until
from tests.fakes.server_fixtures import ServerThread, wait_ready

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tone_wav(path, seconds: float, rate: int) -> str:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).normal(0, 0.05, t.size)
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32), rate, subtype="PCM_16")
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerThread]:
    home = tmp_path_factory.mktemp("voices-page")
    (home / "voices").mkdir()
    app = create_app(dataclasses.replace(settings(home), voices_dir=str(home / "voices")))
    with ServerThread(app) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client:
            wait_ready(client)
        yield srv


@pytest.fixture(scope="module")
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """chromium whose microphone plays a 3 s tone in noise (looped), granted without a prompt."""
    require_binary(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    capture = tone_wav(tmp_path_factory.mktemp("mic") / "mic.wav", 3.0, 48_000)
    media = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={capture}",
    ]
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS + media)
        yield chromium
        chromium.close()


@pytest.fixture
def page(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/#token={TOKEN}")
    wait_until(page, "window.playground && window.playground.status === 'idle'", 60)
    yield page
    page.context.close()


def record(page, seconds: float, prefix: str = "") -> None:
    """Press Record, let the fake microphone run `seconds` (as the page counts the samples), press Stop."""
    page.click(f"#{prefix}record")
    wait_until(page, f"window.playground.recording && window.playground.recordingS >= {seconds}", 30)
    page.click(f"#{prefix}record-stop")
    wait_until(page, "!window.playground.recording", 30)


def save_voice(page, name: str, transcript: str) -> dict:
    page.fill("#voice-name", name)
    page.fill("#voice-transcript", transcript)
    page.click("#voice-save")
    wait_until(page, "['saved', 'error'].includes(window.playground.voiceStatus)", 120)
    return page.evaluate("window.playground")


def speak(page, text: str) -> dict:
    page.fill("#text", text)
    page.click("#speak")
    wait_until(page, "['done', 'error'].includes(window.playground.status)", 120)
    return page.evaluate("window.playground")


def test_a_recorded_clip_becomes_a_voice_the_page_speaks_with(page, api):
    record(page, 2.0)
    state = page.evaluate("window.playground")
    assert state["clipSource"] == "recording" and state["voiceError"] is None, state
    assert 2.0 <= state["recordedS"] < 10 and state["recordedSamples"] == round(state["recordedS"] * 24_000)
    assert state["recordedPeak"] > 0.2  # the fake microphone's tone, not silence
    assert page.is_visible("#clip-preview")
    state = save_voice(page, "mic-voice", "A clip recorded in the browser.")
    assert state["voiceStatus"] == "saved" and state["voicesSaved"] == 1, state
    voice = api.get("/v1/voices/mic-voice").json()
    assert voice["source"] == "upload" and voice["transcript"] == "A clip recorded in the browser."
    assert abs(voice["clip_s"] - state["recordedS"]) < 0.1  # whole 80 ms frames of what was recorded
    assert "mic-voice" in [v["id"] for v in api.get("/v1/voices").json()["voices"]]
    # the list refreshed and the new voice is the one Speak uses
    assert page.input_value("#voice") == "mic-voice" and "mic-voice" in page.text_content("#voice-list")
    state = speak(page, "Now in the recorded voice.")
    assert state["status"] == "done" and not state["error"] and state["samplesScheduled"] > 0, state


def test_a_chosen_file_is_saved_instead_of_a_recording(page, api, tmp_path):
    page.set_input_files("#voice-file", tone_wav(tmp_path / "clip.wav", 2.5, 16_000))
    state = save_voice(page, "file-voice", "A clip from a file.")
    assert state["clipSource"] == "file" and state["voiceStatus"] == "saved", state
    voice = api.get("/v1/voices/file-voice").json()
    assert 2.4 <= voice["clip_s"] <= 2.5 and voice["source"] == "upload"
    assert page.input_value("#voice") == "file-voice"
    page.click("#voice-list button[data-voice='file-voice']")  # Delete
    wait_until(page, "window.playground.voicesDeleted === 1", 30)
    assert api.get("/v1/voices/file-voice").status_code == 404
    assert "file-voice" not in page.text_content("#voice-list")


def test_a_too_short_recording_shows_the_servers_400(page, api):
    record(page, 0.2)
    assert page.evaluate("window.playground.recordedS") < 1.0
    state = save_voice(page, "short-voice", "Too short.")
    error = state["lastVoiceError"]
    assert state["voiceStatus"] == "error" and error["status"] == 400 and error["code"] == "invalid_length", state
    shown = page.text_content("#voice-error")
    assert page.is_visible("#voice-error") and shown == f"400: {error['message']}" and error["message"]
    assert api.get("/v1/voices/short-voice").status_code == 404  # nothing left behind


def turns_shown(page) -> list[str]:
    return page.eval_on_selector_all("#turns li", "items => items.map(i => i.dataset.source)")


def test_the_conversation_view_shows_the_spoken_and_the_added_turns(page, api):
    page.click("#conversation-new")
    cid = page.input_value("#conversation")
    assert cid and api.get(f"/v1/conversations/{cid}").status_code == 404  # nothing on the server yet
    state = speak(page, "The first thing the server says.")
    assert state["status"] == "done" and state["conversation"] == cid, state
    assert turns_shown(page) == ["generated"] and "The first thing" in page.text_content("#turns")
    page.fill("#turn-text", "And this is my answer.")
    record(page, 1.5, prefix="turn-")
    assert page.evaluate("window.playground.turnClipS") >= 1.5
    page.click("#turn-add")
    wait_until(page, "window.playground.turnsAdded === 1 || window.playground.conversationError", 60)
    assert page.evaluate("window.playground.conversationError") is None
    assert turns_shown(page) == ["generated", "added"]
    turns = api.get(f"/v1/conversations/{cid}").json()["turns"]
    assert [t["source"] for t in turns] == ["generated", "added"]
    assert turns[1]["speaker"] == 1 and turns[1]["text"] == "And this is my answer." and turns[1]["frames"] > 0
    state = speak(page, "A reply that hears both turns.")  # the conversation goes on
    assert state["status"] == "done" and turns_shown(page) == ["generated", "added", "generated"], state
    page.click("#conversation-reset")
    wait_until(page, "window.playground.conversationResets === 1", 30)
    assert turns_shown(page) == [] and api.get(f"/v1/conversations/{cid}").status_code == 404
