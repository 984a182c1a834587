"""Levels of automation on a real server (127.0.0.1) with the real model and corpus speech: what the
live client gets at each level, the review API a reviewer drives, the revision that reaches the
client still connected, a session's revisions read later, corrections as ground truth (feedback
and the human-vs-AI WER on /metrics), auth, and a restart that loses nothing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from livehelp import ServerThread
from websockets.asyncio.client import connect

from speechpipe.pipeline.cli.live import server_parts
from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.observability import start_telemetry
from speechpipe.pipeline.server.keys import AuthSettings
from speechpipe.pipeline.server.speech_server import SpeechServer

pytestmark = pytest.mark.corpus

REVIEWER, STREAM, ADMIN, BOB = "reviewer-secret", "stream-secret", "admin-secret", "bob-secret"
#: another stream principal, who must not read the stream token's sessions
OTHER = AuthSettings(({"name": "bob", "token": BOB, "scopes": ["stream"]},)).keys


def config(tmp_path, level: str, **more) -> Config:
    return Config().with_overrides(
        {"automation.level": level, "review.db": str(tmp_path / "reviews.db"), "review.claim_s": 60.0} | more
    )


def call(srv, method: str, path: str, body=None, token: str | None = REVIEWER):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(srv.http + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.headers.get_content_type() == "application/json" else raw)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def live_client(url: str, frames: list[bytes], timeout: float = 120.0) -> list[dict]:
    """A client that sends its audio, stays connected until every final and every revision it was
    promised has come (a final marked ``pending`` or ``provisional`` promises one), then stops."""
    messages: list[dict] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {STREAM}"}) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "partials": False}))
        for f in frames + [bytes(640)] * 100:  # 2 s of silence after it: the last segment closes
            await ws.send(f)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # all promised and nothing new for 2 s: the server has read and judged everything
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 2.0)))
                continue
            except TimeoutError:
                pass
            kinds = [m["type"] for m in messages]
            finals = [m for m in messages if m["type"] == "final"]
            promised = sum(1 for m in finals if m["review"] != "none")
            closed = len(finals) + kinds.count("discarded")
            if finals and closed == kinds.count("speech_start") and kinds.count("revision") >= promised:
                break
        await ws.send(json.dumps({"type": "stop"}))
        async for raw in ws:
            messages.append(json.loads(raw))
    return messages


def review_all(srv, client: threading.Thread, text_of) -> list[dict]:
    """Claim and submit every item that comes while the client runs; returns the claimed items."""
    done = []
    while client.is_alive() or not done:
        status, item = call(srv, "POST", "/v1/review/claim", {"reviewer": "ann"})
        if status == 204:
            if not client.is_alive():
                break
            time.sleep(0.2)
            continue
        assert status == 200, item
        status, audio = call(srv, "GET", item["audio_url"])
        assert status == 200 and audio[:4] == b"fLaC"
        status, body = call(srv, "POST", f"/v1/review/{item['id']}", {"text": text_of(item), "claim": item["claim"]})
        assert status == 200 and body["state"] == "done", body
        done.append(item)
    return done


def run(srv, frames, text_of=lambda item: f"human words of segment {item['segment']}"):
    out: dict = {}
    client = threading.Thread(target=lambda: out.setdefault("m", asyncio.run(live_client(srv.url, frames))))
    client.start()
    items = review_all(srv, client, text_of)
    client.join(150)
    return out["m"], items


def test_partial_sends_low_confidence_finals_to_review_and_the_revision_reaches_the_client(
    engine, noisy_speech, tmp_path
):
    cfg = config(tmp_path, "partial", **{"automation.review_below": 0.9})
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    server = ServerThread(
        engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, admin_token=ADMIN, telemetry=telemetry
    )
    with server as srv:
        messages, items = run(srv, noisy_speech)
        finals = [m for m in messages if m["type"] == "final"]
        session = messages[0]["session"]
        _, later = call(srv, "GET", f"/v1/sessions/{session}", token=STREAM)
        srv.tick()  # the figures behind the gauges are refreshed at a tick
        _, stats = call(srv, "GET", "/v1/review/stats")
        metrics = urllib.request.urlopen(srv.http + "/metrics", timeout=10).read().decode()
    pending = [f for f in finals if f["review"] == "pending"]
    assert {f["review"] for f in finals} <= {"none", "pending"} and pending and len(pending) < len(finals)
    assert all(f["text"] for f in pending)  # partial: the AI's text goes out, marked pending
    confidence = {f["segment"]: sum(w["probability"] for w in f["words"]) / len(f["words"]) for f in finals}
    assert all(confidence[f["segment"]] < 0.9 for f in pending)
    assert all(confidence[f["segment"]] >= 0.9 for f in finals if f["review"] == "none")
    # The reviewer got exactly those, with the AI text as the draft. (Claimed as they came while the
    # stream ran, so their order is the order they came in, not lowest confidence first: that order
    # among items waiting together is test_review_store's.)
    assert sorted(i["segment"] for i in items) == sorted(f["segment"] for f in pending)
    by_segment = {f["segment"]: f for f in finals}
    assert all(i["draft"] == by_segment[i["segment"]]["text"].strip() for i in items)
    # Neighbours that went out without review are the finals the client got (the store lacks them:
    # from the server's ledger); the one before an item was always out when the item was claimed.
    for i in items:
        for side, segment in (("before", i["segment"] - 1), ("after", i["segment"] + 1)):
            sent, n = by_segment.get(segment), i["neighbours"][side]
            if sent is None or sent["review"] != "none" or (n is None and side == "after"):
                continue
            assert (n["segment"], n["state"], n["by"], n["text"]) == (segment, "sent", "ai", sent["text"].strip())
    revisions = [m for m in messages if m["type"] == "revision"]
    assert {(r["segment"], r["text"], r["by"]) for r in revisions} == {
        (f["segment"], f"human words of segment {f['segment']}", "human") for f in pending
    }
    assert messages[-1]["type"] == "end"
    assert {(s["segment"], s["text"]) for s in later["segments"]} == {(r["segment"], r["text"]) for r in revisions}
    assert stats["done"] == len(pending) and stats["queue"] == 0 and stats["level"] == "partial"
    assert stats["variants"]["default"]["words"] == 5 * len(pending)  # the human text is the reference
    # Corrections are ground truth: scored as feedback against the variant, and on /metrics.
    words = next(x for x in metrics.splitlines() if x.startswith("speechpipe_feedback_words_total"))
    assert float(words.rsplit(" ", 1)[1]) == 5 * len(pending)
    wer = next(x for x in metrics.splitlines() if x.startswith("speechpipe_review_ai_wer{"))
    assert 'variant="default"' in wer and float(wer.rsplit(" ", 1)[1]) == pytest.approx(
        stats["variants"]["default"]["wer"]
    )
    assert "speechpipe_review_reviewed_total{" in metrics and 'automation_level="partial"' in metrics


def test_human_level_runs_no_model_and_the_client_gets_the_human_transcript(engine, noisy_speech, tmp_path):
    with ServerThread(engine, config=config(tmp_path, "human"), token=STREAM, reviewer_token=REVIEWER) as srv:
        messages, items = run(srv, noisy_speech[: len(noisy_speech) // 2])
        calls = srv.server.scheduler.stats().calls
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and all(f["text"] == "" and f["words"] == [] and f["review"] == "pending" for f in finals)
    assert calls == 0  # no ASR call at all
    assert all(i["draft"] is None and i["confidence"] is None for i in items) and len(items) == len(finals)
    revisions = {m["segment"]: m["text"] for m in messages if m["type"] == "revision"}
    assert revisions == {f["segment"]: f"human words of segment {f['segment']}" for f in finals}


def test_shadow_level_hides_the_ai_and_scores_it_against_the_humans(engine, noisy_speech, tmp_path):
    with ServerThread(engine, config=config(tmp_path, "shadow"), token=STREAM, reviewer_token=REVIEWER) as srv:
        messages, items = run(srv, noisy_speech, text_of=lambda item: "and so my fellow americans")
        _, stats = call(srv, "GET", "/v1/review/stats")
        store = srv.part("review").store
        hidden = [store.transcripts(i["id"]) for i in items]
    finals = [m for m in messages if m["type"] == "final"]
    assert all(f["text"] == "" and f["review"] == "pending" and f["avg_logprob"] is None for f in finals)
    assert all(i["draft"] is None for i in items) and len(items) == len(finals)  # the reviewer works blind
    assert all(len(h) == 1 and h[0]["variant"] == "default" and h[0]["text"] for h in hidden)  # the AI ran
    v = stats["variants"]["default"]
    assert v["items"] == len(items) and v["words"] == 5 * len(items) and 0 < v["wer"]


def test_assist_marks_finals_provisional_and_full_audits_a_sample(engine, noisy_speech, tmp_path):
    with ServerThread(engine, config=config(tmp_path, "assist"), token=STREAM, reviewer_token=REVIEWER) as srv:
        messages, items = run(srv, noisy_speech[: len(noisy_speech) // 2])
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and all(f["review"] == "provisional" and f["text"] for f in finals)
    assert {i["segment"]: i["draft"] for i in items} == {f["segment"]: f["text"].strip() for f in finals}
    audit = config(tmp_path / "audit", "full", **{"automation.audit_share": 1.0})
    with ServerThread(engine, config=audit, token=STREAM, reviewer_token=REVIEWER) as srv:
        messages, items = run(srv, noisy_speech[: len(noisy_speech) // 2])
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and all(f["review"] == "none" and f["text"] for f in finals)
    assert len(items) == len(finals) and all(i["reason"] == "audit" and i["draft"] is None for i in items)


def test_review_api_auth_and_a_restart_that_loses_nothing(engine, noisy_speech, tmp_path, review_db):
    cfg = config(tmp_path, "assist", **{"review.db": review_db, "review.data_dir": str(tmp_path / "audio")})
    with ServerThread(engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, admin_token=ADMIN) as srv:
        for token, status in ((None, 401), ("wrong", 401), (STREAM, 401), (ADMIN, 401)):
            assert call(srv, "GET", "/v1/review/stats", token=token)[0] == status
        assert call(srv, "GET", "/v1/sessions/x", token=None)[0] == 401
        messages = asyncio.run(live_client_stop_early(srv.url, noisy_speech[: len(noisy_speech) // 2]))
        srv.call(srv.part("review").service.flush())
        _, first = call(srv, "POST", "/v1/review/claim")
        assert call(srv, "POST", f"/v1/review/{first['id']}", {"text": "kept", "claim": first["claim"]})[0] == 200
        _, before = call(srv, "GET", "/v1/review/queue")
    finals = [m for m in messages if m["type"] == "final"]
    assert len(before["items"]) == len(finals) - 1
    with ServerThread(engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, keys=OTHER) as srv:
        _, after = call(srv, "GET", "/v1/review/queue")
        _, stats = call(srv, "GET", "/v1/review/stats")
        # after a restart the session's owner is the one stored with its items: the stream token
        # that opened it reads it, another stream principal is told it does not exist
        path = f"/v1/sessions/{messages[0]['session']}"
        _, session = call(srv, "GET", path, token=STREAM)
        theirs = call(srv, "GET", path, token=BOB)
        none = call(srv, "GET", "/v1/sessions/" + "0" * len(messages[0]["session"]), token=BOB)
    assert [i["id"] for i in after["items"]] == [i["id"] for i in before["items"]]
    assert stats["done"] == 1 and {s["text"] for s in session["segments"]} >= {"kept"}
    assert theirs[0] == none[0] == 404
    assert json.loads(theirs[1])["error"] == json.loads(none[1])["error"] == "unknown_session"
    with ServerThread(engine, config=cfg) as srv:  # no reviewer token: the review API is off
        assert call(srv, "GET", "/v1/review/stats")[0] == 403


async def live_client_stop_early(url: str, frames: list[bytes]) -> list[dict]:
    """A client that leaves as soon as its finals are in (its revisions will wait for it)."""
    async with connect(url, additional_headers={"Authorization": f"Bearer {STREAM}"}) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "partials": False}))
        for f in frames:
            await ws.send(f)
        await ws.send(json.dumps({"type": "stop"}))
        return [json.loads(raw) async for raw in ws]


def test_a_level_that_needs_people_needs_a_review_store():
    with pytest.raises(ConfigError, match=r"\[review\] db"):
        cfg = Config().with_overrides({"automation.level": "partial", "server.port": 0})
        asyncio.run(SpeechServer(cfg, parts=server_parts(cfg)).start())
    # A variant may run at a level of its own; it needs the store as much.
    cfg = Config().with_overrides({"variants.green.automation.level": "shadow", "server.port": 0})
    assert cfg.for_variant("green").automation.level == "shadow" and cfg.automation.level == "full"
    with pytest.raises(ConfigError, match=r"automation.level shadow sends segments to people"):
        asyncio.run(SpeechServer(cfg, parts=server_parts(cfg)).start())
