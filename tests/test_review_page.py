"""The review page in real headless Chromium against a real server: a live client streams corpus
speech at level ``assist`` and stays connected; the reviewer's page claims its segments, plays the
audio, edits the AI draft, skips one and submits with the keyboard; the revision reaches the live
client, and the dashboard shows the review queue and the threshold curve."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from livehelp import ServerThread
from test_review_server import REVIEWER, STREAM, call, config, live_client

from speechpipe.pipeline.observability import start_telemetry

pytestmark = pytest.mark.corpus
CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin-secret"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_play_edit_skip_submit_and_the_revision_reaches_the_live_client(engine, noisy_speech, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    cfg = config(tmp_path, "assist")
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    srv = ServerThread(
        engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, admin_token=ADMIN, telemetry=telemetry
    )
    with srv, playwright.sync_playwright() as p:
        out: dict = {}
        client = threading.Thread(target=lambda: out.setdefault("m", asyncio.run(live_client(srv.url, noisy_speech))))
        client.start()
        deadline = time.monotonic() + 60
        while call(srv, "GET", "/v1/review/stats")[1]["queue"] < 3:
            assert time.monotonic() < deadline, "the stream's segments never reached the queue"
            time.sleep(0.3)
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"],
        )
        errors: list[str] = []
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.http}/review?token={REVIEWER}")
            page.fill("#reviewer", "ann")
            page.wait_for_selector("#item:not([hidden])")
            first = page.inner_text("#item-meta")
            draft = page.input_value("#text")
            assert draft and "segment" in first
            page.wait_for_selector("#queue tr.mine")
            rows = page.locator("#queue tr").count()
            assert rows >= 3
            # Play: the segment's FLAC really plays in the browser.
            page.click("#play")
            page.wait_for_function("document.getElementById('player').currentTime > 0.2", timeout=15_000)
            assert page.evaluate("document.getElementById('player').duration") > 0.5
            # Skip with the keyboard: another segment, the skipped one goes back to the queue.
            page.keyboard.press("Control+ArrowRight")
            page.wait_for_function(f"!document.getElementById('item-meta').textContent.includes({first!r})")
            skipped_segment = int(first.split("segment ")[1].split(" ")[0])
            second = page.inner_text("#item-meta")
            segment = int(second.split("segment ")[1].split(" ")[0])
            assert segment != skipped_segment
            # Edit and submit with Ctrl+Enter.
            page.fill("#text", "corrected by a person")
            page.keyboard.press("Control+Enter")
            page.wait_for_selector(f"#message:has-text('segment {segment} of')")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            # Review the rest as they come, so the client gets every revision it was promised.
            while client.is_alive():
                if page.is_visible("#item"):
                    page.keyboard.press("Control+Enter")
                time.sleep(0.5)
            client.join(60)
            srv.tick()  # the queue's figures are refreshed
            # The dashboard shows the queue and the curve from these reviews.
            board = browser.new_page(viewport={"width": 1300, "height": 1800})
            board.goto(f"{srv.http}/dashboard?token={ADMIN}")
            board.wait_for_selector("#review-body:not([hidden]) .curve[data-variant=default] polyline")
            done = board.inner_text("#rv-done")
            row = board.inner_text("#rv-variants tr[data-variant=default]")
            board.screenshot(path=str(tmp_path / "dashboard-review.png"), full_page=True)
        finally:
            browser.close()
    revisions = {m["segment"]: m["text"] for m in out["m"] if m["type"] == "revision"}
    finals = [m for m in out["m"] if m["type"] == "final"]
    assert revisions[segment] == "corrected by a person"
    assert set(revisions) == {f["segment"] for f in finals}  # the skipped one was reviewed later
    assert int(done) == len(finals) and row.startswith("default")
    assert not errors, errors
