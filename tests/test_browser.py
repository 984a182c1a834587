"""The browser client at /: headless Debian Chromium, a fake microphone playing a corpus file in real
time (getUserMedia -> AudioWorklet -> WebSocket), the real server and model on 127.0.0.1; and the
page resuming its session when the connection breaks under it (docs/protocol.md, "Resume")."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from baselines import live_wer_ceiling, measured
from conftest import SPEECH
from livehelp import ServerThread

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
