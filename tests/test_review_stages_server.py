"""Each stage's errors on a real server (127.0.0.1) with the real model and corpus speech joined by
pauses of room noise, the server on an injected clock: every item's clip is its segment with a
margin before and after (less only at the stream's edges), the audio the VAD rejected goes to
review at ``vad_audit_share = 1``, and reviews submitted through the API (``before``/``after``
words, an audit's words) or the review page in headless Chromium are counted per variant in
``GET /v1/review/stats``'s ``by_stage``, the dashboard's snapshot and ``/metrics``."""

from __future__ import annotations

import asyncio
import io
import os
import re
import urllib.request

import pytest
import soundfile as sf
from conftest import SPEECH
from livehelp import ServerThread
from test_drift_server import offline_profile
from test_review_server import ADMIN, REVIEWER, STREAM, call, config, live_client_stop_early

from speechpipe.pipeline.evaluate.quality import score
from speechpipe.pipeline.observability import start_telemetry

pytestmark = pytest.mark.corpus
SR = 16000
T0 = 1_800_000_000.0
CHROMIUM = "/usr/bin/chromium"


def samples(seconds: float) -> int:
    return round(seconds * SR)


def stream_and_queue(srv, frames: list[bytes]) -> tuple[list[dict], list[dict]]:
    """A client streams ``frames`` and leaves once its finals are in; the spool is moved to the
    store; returns the client's messages and the queue."""
    messages = asyncio.run(live_client_stop_early(srv.url, frames))
    # The client leaves at `end`; the after-margins its stream's end completes are handed over as
    # the server lets go of the stream: wait for that, then for the spool to reach the store.
    srv.released(next(m["session"] for m in messages if m["type"] == "ready"))
    srv.call(srv.part("review").service.flush())
    status, queue = call(srv, "GET", "/v1/review/queue")
    assert status == 200
    return messages, queue["items"]


def check_clips(srv, items: list[dict], stream_samples: int, margin_s: float = 1.0) -> None:
    """Every clip holds its segment and its margins, as long as the item says: a full second
    either side but at the stream's edges and halfway to the neighbouring segments (every segment
    is reviewed here); an audit of rejected audio holds that audio alone."""
    segments = sorted((samples(i["start"]), samples(i["end"])) for i in items if i["reason"] != "vad_audit")
    for i in items:
        status, flac = call(srv, "GET", i["audio_url"])
        assert status == 200
        clip, rate = sf.read(io.BytesIO(flac), dtype="float32")
        a, b = samples(i["start"]), samples(i["end"])
        before, after = samples(i["margin_before_s"]), samples(i["margin_after_s"])
        assert rate == SR and clip.size == before + (b - a) + after, i
        if i["reason"] == "vad_audit":
            assert (before, after, i["draft"], i["confidence"]) == (0, 0, None, None) and i["segment"] < 0
            assert all(b <= s or a >= e for s, e in segments)  # rejected audio: in no segment
        else:
            previous = max([e for s, e in segments if e <= a], default=None)
            following = min([s for s, e in segments if s >= b], default=None)
            # a margin stops at the stream's edges and halfway to the neighbouring segment
            most = samples(margin_s)
            assert before == min(most, a if previous is None else a - (previous + a) // 2), i
            assert after == min(most, stream_samples - b if following is None else (b + following) // 2 - b), i


def test_clips_have_margins_and_reviews_count_each_stages_errors(engine, noisy_speech, tmp_path):
    """... and each review of a segment the AI transcribed recalibrates the estimated WER."""
    frames = noisy_speech[: len(noisy_speech) // 2]
    stream_samples = len(b"".join(frames)) // 2
    baseline = offline_profile(engine, tmp_path, sorted(SPEECH.glob("cmuarctic_*.wav"))[:3])
    cfg = config(tmp_path, "assist", **{"review.vad_audit_share": 1.0, "monitoring.baseline": baseline})
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    server = ServerThread(
        engine,
        config=cfg,
        token=STREAM,
        reviewer_token=REVIEWER,
        admin_token=ADMIN,
        telemetry=telemetry,
        clock=lambda: T0,
    )
    with server as srv:
        messages, items = stream_and_queue(srv, frames)
        finals = [m for m in messages if m["type"] == "final"]
        segments = [i for i in items if i["reason"] != "vad_audit"]
        audits = [i for i in items if i["reason"] == "vad_audit"]
        assert len(segments) == len(finals) >= 2 and audits
        check_clips(srv, items, stream_samples)
        # Reviews: the first segment's reviewer heard two words before it, the first audit three.
        answers, drafts = [], []
        while (claimed := call(srv, "POST", "/v1/review/claim", {"reviewer": "ann"}))[0] == 200:
            item = claimed[1]
            if item["reason"] == "vad_audit":
                body = {"text": "" if answers.count("audit") else "hello there friend"}
                answers.append("audit")
            else:
                body = {"text": "human words here"} | ({"before": "two words"} if "segment" not in answers else {})
                answers.append("segment")
                drafts.append(item["draft"])
            status, done = call(srv, "POST", f"/v1/review/{item['id']}", body | {"claim": item["claim"]})
            assert status == 200 and done["state"] == "done", done
        assert answers.count("segment") == len(segments) and answers.count("audit") == len(audits)
        assert call(srv, "POST", f"/v1/review/{item['id']}", {"text": "x", "before": 5})[0] == 400
        _, stats = call(srv, "GET", "/v1/review/stats")
        _, session = call(srv, "GET", f"/v1/sessions/{messages[0]['session']}", token=STREAM)
        srv.tick()  # the figures behind the dashboard and the gauges are refreshed
        _, board = call(srv, "GET", "/dashboard/state", token=ADMIN)
        _, drift = call(srv, "GET", "/admin/drift", token=ADMIN)
        metrics = urllib.request.urlopen(srv.http + "/metrics", timeout=10).read().decode()
    errors = sum(score("human words here", d).errors for d in drafts)
    stage = stats["by_stage"]["default"]
    assert stage == {
        "segments": len(segments),
        "asr_segments": len(segments),
        "asr_errors": errors,
        "ref_words": 3 * len(segments),
        "asr_wer": errors / (3 * len(segments)),
        "vad_cuts": 2,
        "vad_cut_segments": 1,
        "vad_audits": len(audits),
        "vad_misses": 3,
        "vad_miss_items": 1,
        "per_100_segments": {
            "asr_errors": round(100 * errors / len(segments), 3),
            "cuts": round(200 / len(segments), 3),
            "misses": round(300 / len(audits), 3),
        },
    }
    assert stats["done"] == len(items) and stats["variants"]["default"]["items"] == len(segments)  # kept
    assert board["review"]["figures"]["by_stage"] == stats["by_stage"]
    # every reviewed segment joined the estimated WER's calibration (a review is feedback on its
    # segment; the audits hold no AI text)
    assert drift["variants"]["default"]["quality"]["calibration"]["source"] == f"baseline + {len(segments)} feedback"
    # The client's session holds its segments, not the audits of its rejected audio.
    assert sorted(s["segment"] for s in session["segments"]) == sorted(f["segment"] for f in finals)

    def counted(name: str) -> float:
        line = next(x for x in metrics.splitlines() if x.startswith(name + "{") and 'pipeline_variant="default"' in x)
        return float(line.rsplit(" ", 1)[1])

    assert counted("speechpipe_review_vad_cuts_total") == 2 and counted("speechpipe_review_vad_misses_total") == 3


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_the_page_shows_the_clip_and_asks_for_the_margins_and_the_rejected_audio(engine, noisy_speech, tmp_path):
    """Level ``human``: no model, so each final leaves as its segment closes and every clip's
    after-margin reaches the store after its item, through the spool."""
    playwright = pytest.importorskip("playwright.sync_api")
    frames = noisy_speech[: len(noisy_speech) // 3]
    # margins of 0.5 s: the audit takes the rejected audio farther than a margin from every
    # segment, and these pauses are 1-2.5 s
    cfg = config(tmp_path, "human", **{"review.vad_audit_share": 1.0, "review.margin_s": 0.5})
    srv = ServerThread(engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, clock=lambda: T0)
    with srv:
        _, items = stream_and_queue(srv, frames)  # before Playwright runs an event loop in this thread
        check_clips(srv, items, len(b"".join(frames)) // 2, margin_s=0.5)
        segments = [i for i in items if i["reason"] != "vad_audit"]
        assert segments and len(items) > len(segments)
        assert call(srv, "GET", "/v1/review/stats")[1]["server"]["margins"] >= len(segments) - 1
        seen, errors = {"segment": 0, "audit": 0}, []
        with playwright.sync_playwright() as p:
            review_on_the_page(p, srv, items, segments, seen, errors)
        _, stats = call(srv, "GET", "/v1/review/stats")
    assert not errors, errors
    assert seen == {"segment": len(segments), "audit": len(items) - len(segments)}
    stage = stats["by_stage"]["default"]
    assert (stage["segments"], stage["vad_cuts"], stage["vad_cut_segments"]) == (len(segments), 3, 1)
    assert (stage["vad_audits"], stage["vad_misses"], stage["vad_miss_items"]) == (seen["audit"], 2, 1)
    assert (stage["asr_segments"], stage["asr_errors"], stage["asr_wer"]) == (0, 0, None)  # no model ran
    assert stage["per_100_segments"]["asr_errors"] is None


def review_on_the_page(p, srv, items: list[dict], segments: list[dict], seen: dict, errors: list) -> None:
    """Review every item on the page, checking what it shows; ``seen`` counts each kind."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{srv.http}/review?token={REVIEWER}")
        page.wait_for_selector("#item:not([hidden])")
        for _ in items:
            meta = page.inner_text("#item-meta")
            key = "Control+Enter"
            if page.is_visible("#question"):  # rejected audio: is there speech?
                assert not page.is_visible("#before") and not page.is_visible("#after")
                assert "rejected audio" in meta and "rejected as no speech" in page.inner_text("#clip-text")
                page.fill("#text", "someone spoke")
                if seen["audit"]:
                    key = "Alt+n"  # "No speech in this clip": an empty transcript on purpose
                seen["audit"] += 1
            else:
                shown = re.fullmatch(r"segment (\S+)–(\S+) s of 0–(\S+) s", page.inner_text("#clip-text"))
                item = next(i for i in segments if f"segment {i['segment']} " in meta)
                length = item["end"] - item["start"]
                assert float(shown[1]) == pytest.approx(item["margin_before_s"], abs=0.006)
                assert float(shown[2]) - float(shown[1]) == pytest.approx(length, abs=0.011)
                total = item["margin_before_s"] + length + item["margin_after_s"]
                assert float(shown[3]) == pytest.approx(total, abs=0.006)
                assert page.input_value("#text") == ""  # level human: no draft
                page.fill("#text", "what was said")
                if not seen["segment"]:
                    page.fill("#after", "cut off words")
                seen["segment"] += 1
            page.keyboard.press(key)
            page.wait_for_function(
                "m => !document.getElementById('item').hidden"
                " ? document.getElementById('item-meta').textContent !== m"
                " : !document.getElementById('empty').hidden",
                arg=meta,
            )
        assert page.is_visible("#empty")
    finally:
        browser.close()
