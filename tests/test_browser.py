"""The browser client at /: headless Debian Chromium, a fake microphone playing a corpus file in real
time (getUserMedia -> AudioWorklet -> WebSocket), the real server and model on 127.0.0.1."""

from __future__ import annotations

import os

import pytest
from baselines import live_wer_ceiling, measured
from conftest import SPEECH
from livehelp import ServerThread

from speechpipe.pipeline.evaluate.quality.wer import score

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

CHROMIUM = "/usr/bin/chromium"
CLIP = SPEECH / "librispeech-dev-clean_1272-128104-0000.wav"  # 5.9 s, 16 kHz mono


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_browser_page_shows_the_words_spoken_into_its_microphone(engine):
    playwright = pytest.importorskip("playwright.sync_api")
    reference = CLIP.with_suffix(".txt").read_text().strip()
    with ServerThread(engine, token="browser-token") as srv, playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={CLIP}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.http}/?token=browser-token")
            page.click("#start")
            page.wait_for_selector("#status:has-text('Listening')", timeout=15_000)
            # The fake microphone plays the clip once, in real time; its finals must show up.
            page.wait_for_function(
                "() => document.querySelectorAll('#transcript p.final').length > 0"
                " && document.querySelector('#transcript').innerText.includes('gospel')",
                timeout=30_000,
            )
            page.click("#stop")
            page.wait_for_selector("#status:has-text('Stream ended')", timeout=15_000)
            finals = page.locator("#transcript p.final .text").all_inner_texts()
            latencies = page.locator("#transcript p.final .latency").all_inner_texts()
            summary = page.inner_text("#summary")
        finally:
            browser.close()
    assert not errors, errors
    text = " ".join(t for t in finals if t != "(no words)")
    assert score(reference, text).wer <= live_wer_ceiling(measured("wer.browser_clip_offline.wer")), text
    assert latencies and all(lat.startswith("latency ") and lat.endswith(" s") for lat in latencies)
    assert "median latency" in summary
    assert srv.server.counters.accepted == 1 and srv.server.counters.finals >= 1
