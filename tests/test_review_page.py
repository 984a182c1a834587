"""The review page in real headless Chromium against a real server: a live client streams corpus
speech at level ``assist`` and stays connected; the reviewer's page claims its segments, plays the
audio, edits the AI draft, skips one and submits with the keyboard; the revision reaches the live
client, and the dashboard shows the review queue and the threshold curve. Issue 28: the clip's
waveform and millisecond timer (a 0.42 s clip), why an item is queued in words, the neighbouring
segments' text, "no speech" on purpose and behind a confirm dialog, and messages that match what
happened to an item skipped or given back, which is not handed straight back."""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
import time

import pytest
import soundfile as sf
from conftest import SPEECH
from livehelp import ServerThread
from test_review_server import REVIEWER, STREAM, call, config, live_client, live_client_stop_early

from speechpipe.pipeline.observability import start_telemetry
from speechpipe.pipeline.review.policy import EMPTY
from speechpipe.pipeline.review.store import AiText, NewItem
from speechpipe.stages.audio import load_audio

pytestmark = pytest.mark.corpus
CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin-secret"
#: Chromium as the tests run it: Debian's, headless, allowed to play without a click first.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required"]
#: the waveform's colour on the page's canvas (review.js: WAVE)
WAVE_RGB = (0x2F, 0x4A, 0x8A)
TIMER = re.compile(r"(\d+\.\d{3}) / (\d+\.\d{3}) s")


def review_in_use(page, srv_http: str, reviewer_token: str, reviewer: str = "ann") -> str:
    """Open the review page of the server at ``srv_http`` as ``reviewer`` and wait until it has
    claimed an item and drawn its waveform (the queue must hold one): a screenshot script's entry.
    Returns the item's line (session, segment, variant, why, confidence, length)."""
    page.add_init_script(f"localStorage.setItem('speechpipe.reviewer', {reviewer!r})")  # before its first claim
    page.goto(f"{srv_http}/review?token={reviewer_token}")
    page.wait_for_selector("#item:not([hidden])")
    page.wait_for_selector("#wave[data-drawn=waveform]")
    return page.inner_text("#item-meta")


def timer(page) -> tuple[float, float]:
    """The clip's timer: (where the playhead is, the clip's length), in seconds."""
    shown = TIMER.fullmatch(page.inner_text("#timer"))
    assert shown, page.inner_text("#timer")
    return float(shown[1]), float(shown[2])


def wave_pixels(page) -> tuple[int, int]:
    """(pixels of the waveform's colour on the canvas, the canvas's width in pixels)."""
    return tuple(
        page.evaluate(
            """([r, g, b]) => {
              const cv = document.getElementById('wave');
              const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
              let n = 0;
              for (let i = 0; i < px.length; i += 4) if (px[i] === r && px[i + 1] === g && px[i + 2] === b) n++;
              return [n, cv.width];
            }""",
            list(WAVE_RGB),
        )
    )


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
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
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
            # Play: the segment's FLAC is decoded, drawn and really plays in the browser.
            page.wait_for_selector("#wave[data-drawn=waveform]")
            assert timer(page)[1] > 0.5
            page.click("#play")
            page.wait_for_function("parseFloat(document.getElementById('timer').textContent) > 0.2", timeout=15_000)
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
                if page.is_visible("#confirm-empty"):  # an empty draft: the model heard no words
                    page.click("#confirm-yes")
                elif page.is_visible("#item"):
                    page.keyboard.press("Control+Enter")
                time.sleep(0.5)
            client.join(60)
            srv.tick()  # the queue's figures are refreshed
            # The dashboard shows the queue and the curve from these reviews.
            board = browser.new_page(viewport={"width": 1300, "height": 1800})
            board.goto(f"{srv.http}/dashboard?token={ADMIN}")
            board.wait_for_selector("#review-body:not([hidden]) .curve[data-variant=default] .plot canvas")
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


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_the_clip_the_reasons_the_neighbours_no_speech_and_items_put_down(engine, noisy_speech, tmp_path):
    """Issue 28, tried as a new user. Level ``partial`` with ``review_below = 1``: every final of a
    streamed session is queued, so each has its neighbours in the store. Beside them, the 0.42 s
    clip of a harmful VAD's segment in which the model heard no words (the final the policy queues
    as ``empty``; tests/test_review_reasons.py): it is claimed first (no confidence)."""
    playwright = pytest.importorskip("playwright.sync_api")
    cfg = config(tmp_path, "partial", **{"automation.review_below": 1.0})
    srv = ServerThread(engine, config=cfg, token=STREAM, reviewer_token=REVIEWER)
    speech, _ = load_audio(SPEECH / "cmuarctic_aew_a0001.wav")
    fragment = speech[16000 : 16000 + 6720]  # 0.42 s
    with srv:
        # the stream first: Playwright runs an event loop of its own in this thread
        messages = asyncio.run(live_client_stop_early(srv.url, noisy_speech[: len(noisy_speech) // 2]))
        srv.call(srv.part("review").service.flush())
        session = messages[0]["session"]
        empty = NewItem("harmful-vad", 7, "default", "partial", EMPTY, 3.1, 3.52, fragment, "", None)
        empty.transcripts = [AiText("default", "primary", "", None)]
        srv.part("review").store.add(empty, time.time())
        queued = {i["segment"]: i for i in call(srv, "GET", "/v1/review/queue")[1]["items"] if i["session"] == session}
        assert len(queued) >= 3 and all(i["reason_label"] in ("low confidence", "empty final") for i in queued.values())
        status, refused = call(srv, "POST", "/v1/review/claim", {"reviewer": "ann", "take_back": "no"})
        assert status == 400 and "take_back must be true or false" in refused  # and nothing was claimed
        with playwright.sync_playwright() as p:
            review_everything(p, srv, session, queued, tmp_path)


def review_everything(p, srv, session: str, queued: dict[int, dict], tmp_path) -> None:
    """The page's part of the test above: ``queued`` is the streamed session's items by segment."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    errors: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        meta = review_in_use(page, srv.http, REVIEWER)
        # 1. The 0.42 s clip: a waveform, a timer in milliseconds that follows the playback, seeking.
        assert "segment 7 " in meta and "empty final" in meta and "confidence" not in meta
        assert page.inner_text("#why").startswith("empty final: ")  # 3. what happened, in words
        assert timer(page) == (0.0, 0.42)
        drawn, width = wave_pixels(page)
        assert drawn > 2 * width  # more than a flat line: the words' waveform
        page.click("#play")
        page.wait_for_function("document.getElementById('timer').textContent === '0.420 / 0.420 s'")
        box = page.locator("#wave").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert timer(page)[0] == pytest.approx(0.21, abs=0.42 / width * 2 + 0.001)
        # 2. No neighbours in the store for this one.
        assert (page.inner_text("#nb-before"), page.inner_text("#nb-after")) == ("before: (none)", "after: (none)")
        # 4. An empty submit asks first: cancelled, nothing goes; confirmed, it goes as no speech.
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#confirm-empty[open]")
        page.click("#confirm-no")
        page.wait_for_selector("#message:has-text('not submitted')")
        assert not page.is_visible("#confirm-empty") and "segment 7 " in page.inner_text("#item-meta")
        assert call(srv, "GET", "/v1/sessions/harmful-vad")[1]["segments"][0]["state"] == "claimed"
        page.keyboard.press("Control+Enter")
        page.click("#confirm-yes")
        page.wait_for_selector("#message:has-text('segment 7 of harmful-vad submitted as no speech')")
        done = call(srv, "GET", "/v1/sessions/harmful-vad")[1]["segments"][0]
        assert (done["state"], done["text"]) == ("done", "")
        # 2. The next item, of the streamed session: the text of the segments around it.
        page.wait_for_selector("#wave[data-drawn=waveform]")
        first = segment_of(page)
        flac = call(srv, "GET", queued[first]["audio_url"])[1]
        assert timer(page)[1] == pytest.approx(sf.info(io.BytesIO(flac)).duration, abs=0.0011)  # the clip's own
        shown = [check_neighbours(page, queued, first)]
        # 5. Skip: said so, and another item comes (the skipped one is held from this reviewer).
        page.keyboard.press("Control+ArrowRight")
        page.wait_for_selector(f"#message:has-text('segment {first} skipped; it goes back to the queue')")
        page.wait_for_selector("#wave[data-drawn=waveform]")
        second = segment_of(page)
        assert second != first
        shown.append(check_neighbours(page, queued, second))
        assert any(n != "(none)" for pair in shown for n in pair)  # some neighbour's text was shown
        # Another reviewer takes every other item (the one skipped too: it is held from ann alone).
        bob = []
        while (answer := call(srv, "POST", "/v1/review/claim", {"reviewer": "bob"}))[0] == 200:
            bob.append(answer[1]["segment"])
        assert first in bob and second not in bob
        # 5. Give back with nothing else waiting: said so, and the page does not take it back.
        page.keyboard.press("Escape")
        page.wait_for_selector(
            f"#message:text-is('segment {second} given back. Nothing else waiting; the item you gave back is in the queue')"
        )
        page.evaluate("refresh()")  # the page's periodic claim, now
        assert page.is_visible("#empty") and page.is_visible("#take-back")
        assert page.locator("#queue tr.put-down").count() == 1  # marked in the queue as the one given back
        assert state_of(srv, session, second) == "queued"
        # ...until the reviewer asks for it back.
        page.click("#take-back")
        page.wait_for_selector("#message:has-text('is yours again')")
        assert segment_of(page) == second and state_of(srv, session, second) == "claimed"
        # 4. "No speech in this clip" with its key: submitted empty, on purpose, without a question.
        page.keyboard.press("Alt+n")
        page.wait_for_selector(f"#message:has-text('segment {second} of {session} submitted as no speech')")
        assert state_of(srv, session, second) == "done" and text_of(srv, session, second) == ""
        page.wait_for_selector("#empty:not([hidden])")  # bob holds the rest
        page.screenshot(path=str(tmp_path / "review-issue-28.png"), full_page=True)
    finally:
        browser.close()
    assert not errors, errors


def segment_of(page) -> int:
    return int(re.search(r"· segment (-?\d+) ·", page.inner_text("#item-meta"))[1])


def check_neighbours(page, queued: dict[int, dict], segment: int) -> tuple[str, str]:
    """The page shows, above and below the text box, the AI text of the segments before and after
    ``segment`` where the queue has them (every final of the session is queued here), "(none)"
    where it has not; returns what it showed of each."""
    shown = []
    for where, k in (("before", segment - 1), ("after", segment + 1)):
        text = page.inner_text(f"#nb-{where}")
        if k not in queued:
            assert text == f"{where}: (none)"
        else:
            said = queued[k]["draft"] or "(the model heard no words)"
            assert text == f"{where}: segment {k} (AI): {said}"
        shown.append(text.split(": ", 1)[1])
    return shown[0], shown[1]


def state_of(srv, session: str, segment: int) -> str:
    return next(
        s["state"] for s in call(srv, "GET", f"/v1/sessions/{session}")[1]["segments"] if s["segment"] == segment
    )


def text_of(srv, session: str, segment: int) -> str | None:
    return next(
        s["text"] for s in call(srv, "GET", f"/v1/sessions/{session}")[1]["segments"] if s["segment"] == segment
    )
