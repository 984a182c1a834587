"""The browser client at /: headless Debian Chromium, a fake microphone playing a corpus file in real
time (getUserMedia -> AudioWorklet -> WebSocket), the real server and model on 127.0.0.1; the page
resuming its session when the connection breaks under it (docs/protocol.md, "Resume"), asking for
the stream token it needs, counting down while the server is full, and showing the variant that
serves it, the finals pending review and the reviewers' revisions (docs/review.md).

:func:`mic_in_use` opens the page in a browser from :func:`_launch` and leaves it transcribing, for
a screenshot script as for these tests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from baselines import live_wer_ceiling, measured
from conftest import SPEECH
from livehelp import ServerThread
from websockets.asyncio.client import connect

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

CHROMIUM = "/usr/bin/chromium"
CLIP = SPEECH / "librispeech-dev-clean_1272-128104-0000.wav"  # 5.9 s, 16 kHz mono
#: four utterances (16 kHz mono), said one after the other with pauses the VAD ends segments in.
UTTERANCES = [SPEECH / f"cmuarctic_{n}.wav" for n in ("aew_a0001", "aew_a0002", "axb_a0004", "aew_a0003")]
absent = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")


def _launch(p, wav):
    """Headless Chromium whose microphone plays ``wav`` once, in real time."""
    return p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-background-networking",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )


def _listening(browser, srv):
    """The page of ``srv`` opened with the stream token and started, once it listens: ``(page,
    the page's errors as they come)``."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{srv.http}/?token=browser-token")
    page.click("#start")
    page.wait_for_selector("#status:has-text('Listening')", timeout=15_000)
    return page, errors


def mic_in_use(browser, srv, token, errors: list[str] | None = None):
    """The page of ``srv`` opened with ``token`` (None: without one), its microphone started, once
    it shows at least one final. ``browser`` comes from :func:`_launch` (its fake microphone plays
    a file with speech); ``srv`` is a :class:`~livehelp.ServerThread`; the page's errors go to
    ``errors`` when given, from the start."""
    query = f"?token={urllib.parse.quote(token)}" if token else ""
    page = browser.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{srv.http}/{query}")
    page.click("#start")
    page.wait_for_selector("#status:has-text('Listening')", timeout=15_000)
    page.wait_for_selector("#transcript p.final", timeout=30_000)
    return page


@absent
def test_browser_page_shows_the_words_spoken_into_its_microphone(engine):
    playwright = pytest.importorskip("playwright.sync_api")
    reference = CLIP.with_suffix(".txt").read_text().strip()
    with ServerThread(engine, token="browser-token") as srv, playwright.sync_playwright() as p:
        browser = _launch(p, CLIP)
        try:
            page, errors = _listening(browser, srv)
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
            # a partial shows its committed words plainly and its unstable tail apart (issue 27)
            shown = page.evaluate(
                """() => {
                    onMessage({type: "speech_start", segment: 99});
                    onMessage({type: "partial", segment: 99, text: "and so my fellow", stable: "and so"});
                    const p = [...document.querySelectorAll("#transcript p.partial")].pop();
                    return [p.querySelector(".stable").textContent, p.querySelector(".tail").textContent,
                            getComputedStyle(p.querySelector(".stable")).color,
                            getComputedStyle(p.querySelector(".tail")).color];
                }"""
            )
        finally:
            browser.close()
    assert not errors, errors
    assert shown[:2] == ["and so", " my fellow"] and shown[2] != shown[3], shown
    text = " ".join(t for t in finals if t != "(no words)")
    assert score(reference, text).wer <= live_wer_ceiling(measured("wer.browser_clip_offline.wer")), text
    assert latencies and all(lat.startswith("latency ") and lat.endswith(" s") for lat in latencies)
    assert "median latency" in summary
    assert srv.server.counters.accepted == 1 and srv.server.counters.finals >= 1


#: true once the page has a final and is 1.5 s of stream time into a segment without one yet
BREAK_NOW = """() => {
    const s = window.speechpipe, now = s.sentSamples / s.rate;
    return document.querySelector('#transcript p.final') !== null && s.log.some((e) =>
        e.conn === 1 && e.msg && e.msg.type === 'speech_start' && !s.done.has(e.msg.segment) && now >= e.msg.t + 1.5);
}"""


def _abort_stream(srv) -> str:
    """Break the one open stream's connection as a dead server would: its TCP connection is
    aborted on the server's side, without a close frame (the page sees 1006). Returns its id."""

    async def abort() -> str:
        (stream,) = srv.server.streams.values()
        for protocol in srv.server._http.server_state.connections:  # uvicorn's, one per TCP connection
            host, port = protocol.transport.get_extra_info("peername")[:2]
            if f"{host}:{port}" == stream.ws.peer:
                protocol.transport.abort()
                return stream.stream_id
        raise AssertionError(f"no TCP connection from {stream.ws.peer}")

    return srv.call(abort())


@absent
def test_browser_page_resumes_its_session_when_the_connection_breaks(engine, tmp_path):
    """After the page's first final, in the middle of the next segment, the server side of its
    WebSocket is aborted; the page connects again with ``resume``, sends again the audio no final
    covers (the cut segment's included), and goes on. The transcript has each segment once,
    indices contiguous across the break, the finals after it from ``from_s`` on, all one session.
    Structural checks only: words differ between CPUs."""
    playwright = pytest.importorskip("playwright.sync_api")
    rate, pause = 16000, np.zeros(24000, dtype=np.int16)  # 1.5 s between utterances
    parts = [pause[:8000]]
    for path in UTTERANCES:
        audio, r = sf.read(path, dtype="int16")
        assert r == rate
        parts += [audio, pause]
    wav = tmp_path / "utterances.wav"
    sf.write(wav, np.concatenate(parts), rate, subtype="PCM_16")
    with ServerThread(engine, token="browser-token") as srv, playwright.sync_playwright() as p:
        browser = _launch(p, wav)
        try:
            page, errors = _listening(browser, srv)
            # Broken after the first final, a second into the next segment: the page must send that
            # segment's audio again (the server never finished it).
            page.wait_for_function(BREAK_NOW, timeout=30_000)
            broken = _abort_stream(srv)
            page.wait_for_selector("#status:has-text('Resumed session')", timeout=30_000)
            # Two finals over the new connection: the stream went on after the resume.
            page.wait_for_function(
                "() => speechpipe.log.filter((e) => e.conn > 1 && e.msg && e.msg.type === 'final').length >= 2",
                timeout=60_000,
            )
            page.click("#stop")
            page.wait_for_selector("#status:has-text('Stream ended')", timeout=30_000)
            got = page.evaluate(
                """() => ({
                    log: speechpipe.log, session: speechpipe.session, resumes: speechpipe.resumes,
                    lines: [...document.querySelectorAll('#transcript p')].map((p) => [Number(p.dataset.segment), p.className]),
                    summary: document.querySelector('#summary').innerText,
                })"""
            )
        finally:
            browser.close()
    assert not errors, errors
    log, session = got["log"], got["session"]
    received = [e | e["msg"] for e in log if "msg" in e]
    readies = [m for m in received if m["type"] == "ready"]
    # One session: every connection's ready names it, and the server served it as one stream id.
    assert broken == session and all(m["session"] == session for m in readies)
    assert srv.server.counters.accepted >= 2
    assert {sid for kind, sid in srv.hook_log if kind == "started"} == {session}
    # The page resumed (once: the connection broke once), and the server's ready echoes its resume.
    assert got["resumes"] == 1
    resumed = next(m for m in readies if "resume" in m)
    sent = next(e["sent"] for e in log if "sent" in e and e["conn"] == resumed["conn"])
    assert resumed["resume"] == sent["resume"]
    resume = sent["resume"]
    before = [m for m in received if m["conn"] == 1 and m["type"] in ("final", "discarded")]
    last = max(before, key=lambda m: m["segment"])
    assert resume["segment"] == last["segment"] + 1 and resume["from_s"] >= last["end"] - 1e-6
    # Each segment once, indices contiguous across the break, the finals after it from from_s on.
    outcomes = [m for m in received if m["type"] in ("final", "discarded")]
    indices = [m["segment"] for m in outcomes]
    assert len(indices) == len(set(indices)), indices
    assert sorted(indices) == list(range(len(indices))), indices
    after = [m for m in outcomes if m["conn"] >= resumed["conn"]]
    assert len(after) >= 2 and all(m["segment"] >= resume["segment"] for m in after)
    assert all(m["start"] >= resume["from_s"] - 0.01 for m in after), (resume, after)
    lines = got["lines"]
    shown = [i for i, cls in lines if cls == "final"]
    assert lines == [[i, "final"] for i in shown], lines  # no partial left over
    assert len(shown) == len(set(shown)) and sorted(shown) == sorted(
        m["segment"] for m in outcomes if m["type"] == "final"
    )
    assert got["summary"].startswith(f"{len(shown)} final(s);")
    (end,) = [m for m in received if m["type"] == "end"]
    assert end["reason"] == "stop"
    # The segment cut by the break was transcribed from the audio sent again: it begins where it
    # began on the old connection, not where the new one took over.
    starts = [m for m in received if m["type"] == "speech_start"]
    cut = [m for m in starts if m["conn"] == 1 and m["segment"] >= resume["segment"]]
    assert cut, starts
    again = min((m for m in starts if m["conn"] >= resumed["conn"]), key=lambda m: m["t"])
    assert abs(again["t"] - cut[0]["t"]) < 0.3, (cut, again)


def _recording_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


#: the whoami answer of a stream principal, which the test below hands the page once
STREAM_OK = {"principal": "stream", "authenticated": True, "scopes": ["stream"], "stream": True}


@absent
def test_browser_page_asks_for_the_stream_token_it_needs(engine):
    """Without a token the page says one is needed and puts the cursor in its field; a wrong one is
    said to be wrong before any stream is tried; a WebSocket refused in its handshake (the page
    only sees 1006) leads to the same check; the right token, typed, is kept for the tab and
    Start listens."""
    playwright = pytest.importorskip("playwright.sync_api")
    with ServerThread(engine, token="browser-token") as srv, playwright.sync_playwright() as p:
        browser = _launch(p, CLIP)
        try:
            page = browser.new_page()
            errors = _recording_errors(page)
            page.goto(f"{srv.http}/")
            page.wait_for_selector("#token-help:has-text('This server needs a stream token')", timeout=15_000)
            focused = page.evaluate("document.activeElement.id")
            page.fill("#token", "not-the-token")
            page.click("#start")
            page.wait_for_selector("#token-help:has-text('not accepted')", timeout=15_000)
            refused_before = srv.server.counters.rejected
            # The check passes once (as for a token revoked since), so the page connects and the
            # server refuses the handshake: the close before `ready` makes the page ask again.
            answers: list[str] = []

            def once_ok(route):
                answers.append(route.request.url)
                if len(answers) == 1:
                    route.fulfill(json=STREAM_OK | {"stream_token_required": True})
                else:
                    route.continue_()

            page.route("**/v1/whoami", once_ok)
            page.click("#start")
            page.wait_for_function(
                "() => speechpipe.connections === 1 && !document.querySelector('#token-help').hidden"
                " && !document.querySelector('#start').disabled",
                timeout=15_000,
            )
            after_1006 = page.inner_text("#token-help"), page.inner_text("#status")
            page.unroute("**/v1/whoami")
            page.fill("#token", "browser-token")
            page.click("#start")
            page.wait_for_selector("#status:has-text('Listening')", timeout=15_000)
            help_hidden = page.is_hidden("#token-help")
            page.click("#stop")
            page.wait_for_selector("#status:has-text('Stream ended')", timeout=30_000)
            # The token is kept for the tab: a reload fills it in and asks nothing.
            page.reload()
            page.wait_for_function("() => speechpipe.access !== null", timeout=15_000)
            reloaded = page.input_value("#token"), page.is_hidden("#token-help")
        finally:
            browser.close()
    assert not errors, errors
    assert focused == "token"
    assert len(answers) == 2 and srv.server.counters.rejected == refused_before + 1
    assert "not accepted" in after_1006[0] and after_1006[1] == "", after_1006  # no "Connecting…" left
    assert help_hidden
    assert reloaded == ("browser-token", True)
    assert srv.server.counters.accepted == 1


async def _hold_slot(url: str, held: threading.Event, release: threading.Event) -> None:
    """A stream that takes a server slot until ``release`` is set (some silence now and then keeps
    the idle timeout away), then stops and reads to the end."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "ready"
        held.set()
        while not release.is_set():
            await ws.send(bytes(640))
            await asyncio.sleep(0.2)
        await ws.send(json.dumps({"type": "stop"}))
        async for _ in ws:
            pass


class SlotHolder:
    """``with SlotHolder(srv):`` one stream (with ``token``, if given) holds a slot of ``srv`` for
    the block, on a thread of its own; :meth:`release` frees it earlier."""

    def __init__(self, srv, token: str | None = None) -> None:
        url = srv.url + (f"?token={urllib.parse.quote(token)}" if token else "")
        self.held, self.released = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(_hold_slot(url, self.held, self.released)))

    def __enter__(self):
        self.thread.start()
        assert self.held.wait(30), "the slot was not taken"
        return self

    def release(self) -> None:
        self.released.set()
        self.thread.join(30)

    def __exit__(self, *exc) -> None:
        self.release()


#: every text the status line shows, in order (window.seen)
WATCH_STATUS = """() => {
    window.seen = [];
    const el = document.querySelector('#status-text');
    new MutationObserver(() => seen.push(el.textContent)).observe(el, {childList: true, characterData: true, subtree: true});
}"""

#: "Try now" clicked during a countdown: [connections before, after, whether the wait is over]
TRY_NOW = """() => {
    if (speechpipe.wait === null) return null;
    const before = speechpipe.connections;
    document.querySelector('#retry-now').click();
    return [before, speechpipe.connections, speechpipe.wait === null];
}"""


@absent
def test_browser_page_counts_down_while_the_server_is_full_then_listens(engine):
    """One slot, held by another stream: the page is refused (``server_busy``, ``retry_after_s``),
    counts down each second, connects again and is refused again, and "Try now" connects at once.
    Once the slot is free it gets ``ready`` and sends the audio it kept meanwhile first: a final
    begins before the stream time of that ``ready``. Stop during a countdown ends the wait."""
    playwright = pytest.importorskip("playwright.sync_api")
    with ServerThread(engine, max_streams=1, retry_after_s=2) as srv, playwright.sync_playwright() as p:
        browser = _launch(p, CLIP)
        try:
            page = browser.new_page()
            errors = _recording_errors(page)
            page.goto(f"{srv.http}/")
            page.evaluate(WATCH_STATUS)
            with SlotHolder(srv) as holder:
                page.click("#start")
                page.wait_for_function("() => speechpipe.waits >= 2", timeout=30_000)
                tried = None
                while tried is None:
                    tried = page.evaluate(TRY_NOW)
                page.wait_for_function(f"() => speechpipe.waits >= {tried[1]}", timeout=30_000)  # refused again
                holder.release()
                page.wait_for_selector("#status:has-text('Listening')", timeout=30_000)
            page.wait_for_selector("#transcript p.final", timeout=30_000)
            page.click("#stop")
            page.wait_for_selector("#status:has-text('Stream ended')", timeout=30_000)
            got = page.evaluate("() => ({seen, log: speechpipe.log, readyAt: speechpipe.readyAt})")
            # Full again: Stop during the countdown ends it, and nothing more is tried.
            with SlotHolder(srv):
                page.click("#start")
                page.wait_for_selector("#status.waiting", timeout=30_000)
                page.click("#stop")
                stopped = page.evaluate(
                    "() => [speechpipe.wait, speechpipe.timer, speechpipe.ws, speechpipe.connections,"
                    " document.querySelector('#start').disabled, document.querySelector('#retry-now').hidden,"
                    " document.querySelector('#status-text').textContent]"
                )
        finally:
            browser.close()
    assert not errors, errors
    seen, log = got["seen"], got["log"]
    counting = [s for s in seen if s.startswith("Server full: trying again in")]
    assert "Server full: trying again in 2 s" in counting and "Server full: trying again in 1 s" in counting, seen
    assert counting.index("Server full: trying again in 1 s") > counting.index("Server full: trying again in 2 s")
    refusals = [e["msg"] for e in log if "msg" in e and e["msg"]["type"] == "error"]
    assert len(refusals) >= 3 and all(m["code"] == "server_busy" and m["retry_after_s"] == 2 for m in refusals)
    assert tried[1] == tried[0] + 1 and tried[2]
    (ready,) = [e for e in log if "msg" in e and e["msg"]["type"] == "ready"]
    assert ready["conn"] == len(refusals) + 1 and "resume" not in ready["msg"]
    finals = [e["msg"] for e in log if "msg" in e and e["msg"]["type"] == "final"]
    assert got["readyAt"] > 0 and finals and min(f["start"] for f in finals) < got["readyAt"], (got["readyAt"], finals)
    assert stopped[:3] == [None, None, None] and stopped[4] is False and stopped[5] is True, stopped
    assert stopped[6].startswith("Stopped while waiting"), stopped


REVIEWER = "reviewer-token"


def _review(srv, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {REVIEWER}", "Content-Type": "application/json"}
    req = urllib.request.Request(srv.http + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return r.status, json.loads(raw) if raw else None


def _claim(srv, timeout: float = 30.0) -> dict:
    """The next item of the review queue, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        status, item = _review(srv, "POST", "/v1/review/claim", {"reviewer": "ann"})
        if status == 200:
            return item
        assert status == 204 and time.monotonic() < deadline, status
        time.sleep(0.2)


#: messages as a server sends them, put through the page: a revision before its final, one that
#: confirms its final, a malformed one, a provisional final served by another variant.
INJECTED = """() => {
    const line = (i) => document.querySelector(`#seg-${i}`);
    const final = (i, text, more) => onMessage(Object.assign(
        {type: "final", segment: i, start: i, end: i + 1, text, words: [], latency_s: 0.5, status: "ok",
         review: "pending", variant: "default"}, more));
    onMessage({type: "revision", segment: 90, text: "what a person heard", by: "human"});
    const before = line(90);
    final(90, "what the ai heard", {variant: "twin"});
    final(91, "the same words", {});
    onMessage({type: "revision", segment: 91, text: " the same  words ", by: "human"});
    onMessage({type: "revision", text: 5});
    final(92, "a provisional text", {review: "provisional"});
    const shown = (i) => ({
        cls: line(i).className, text: line(i).querySelector(".text").textContent,
        title: line(i).querySelector(".text").title, badge: line(i).querySelector(".badge").textContent,
        struck: line(i).querySelector(".ai") && line(i).querySelector(".ai").textContent,
        variant: line(i).querySelector(".variant") && line(i).querySelector(".variant").textContent,
    });
    return {before: before === null, early: shown(90), same: shown(91), provisional: shown(92)};
}"""


@absent
def test_browser_page_shows_its_variant_finals_pending_review_and_revisions(engine, tmp_path):
    """Level ``partial`` with every final below the threshold: the page says which variant serves
    it, marks its finals "pending review", and a reviewer's transcript (the review API, as the
    review page submits it) replaces the final's text in place, marked corrected, the AI's text
    struck through and in the tooltip. Revisions injected as the server sends them: one before its
    final waits for it, one with the same words confirms, a malformed one is ignored."""
    playwright = pytest.importorskip("playwright.sync_api")
    cfg = Config().with_overrides(
        {"automation.level": "partial", "automation.review_below": 1.0, "review.db": str(tmp_path / "reviews.db")}
    )
    with (
        ServerThread(engine, config=cfg, token="browser-token", reviewer_token=REVIEWER) as srv,
        playwright.sync_playwright() as p,
    ):
        browser = _launch(p, CLIP)
        try:
            errors: list[str] = []
            page = mic_in_use(browser, srv, "browser-token", errors)
            served = page.inner_text("#served"), page.get_attribute("#served", "data-variant")
            page.wait_for_selector("#transcript p.final .badge.pending", timeout=30_000)
            pending = page.inner_text("#transcript p.final .badge.pending")
            item = _claim(srv)
            status, body = _review(
                srv, "POST", f"/v1/review/{item['id']}", {"text": "corrected by a person", "claim": item["claim"]}
            )
            line = f"#seg-{item['segment']}"
            page.wait_for_selector(f"{line}.revised .badge.corrected", timeout=30_000)
            revised = page.evaluate(
                f"""() => {{
                    const p = document.querySelector('{line}');
                    return [p.dataset.ai, p.querySelector('.text').textContent, p.querySelector('.text').title,
                            p.querySelector('del.ai').textContent, p.querySelectorAll('.badge').length];
                }}"""
            )
            injected = page.evaluate(INJECTED)
            # A canary's candidate says so in the same line (its `ready`, as a canary sends it).
            candidate = page.evaluate(
                "() => { showServed({variant: 'twin', role: 'candidate', model: 'tiny.en'});"
                " return document.querySelector('#served').innerText; }"
            )
            page.click("#stop")
            page.wait_for_selector("#status:has-text('Stream ended')", timeout=30_000)
        finally:
            browser.close()
    assert not errors, errors
    assert served[0].startswith("Served by primary") and "default" in served[0] and served[1] == "default", served
    assert candidate.startswith("Served by candidate twin"), candidate
    assert pending == "pending review"
    assert status == 200 and body["state"] == "done", body
    ai, text, title, struck, badges = revised
    assert ai and text == "corrected by a person" and struck == ai and ai in title and badges == 1, revised
    early, same, provisional = injected["early"], injected["same"], injected["provisional"]
    assert injected["before"]  # the early revision waited for its final
    assert "revised" in early["cls"] and early["text"] == "what a person heard" and early["badge"] == "corrected"
    assert early["struck"] == "what the ai heard" and early["variant"] == "variant twin", early
    assert same["badge"] == "confirmed" and same["struck"] is None and same["variant"] is None, same
    assert provisional["badge"] == "provisional" and "revised" not in provisional["cls"], provisional
