"""A stream resumed after its connection broke (issue 25): ``resume`` in ``start`` names the
session, the stream time the client goes on from (the end of the last final it got) and the next
segment index; the server goes on from there with the variant that served the session, so finals
are neither repeated nor skipped. Only the principal that opened a session may resume it (anyone
else is told it is unknown), and not while it is still open.

One real server on 127.0.0.1, real speech (JFK, 11 s), the real model. Nothing here asserts
words, which another CPU may decode differently: indices, times, who may resume, and that the
resumed session is one session (its feedback is scored against the finals of both connections)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
from conftest import SPEECH
from livehelp import ServerThread
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speechpipe.pipeline.clients.client import pcm_s16le
from speechpipe.pipeline.server.keys import AuthSettings
from speechpipe.stages.audio import load_audio

pytestmark = pytest.mark.corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
ALICE, BOB, ADMIN = "alice-secret", "bob-secret", "admin-secret"
KEYS = AuthSettings(
    (
        {"name": "alice", "token": ALICE, "scopes": ["stream", "feedback"]},
        {"name": "bob", "token": BOB, "scopes": ["stream"]},
    )
).keys
RATE = 16000


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    audio, _info = load_audio(JFK)  # 16 kHz mono, as the client sends it here
    return audio


@pytest.fixture(scope="module")
def srv(engine):
    with ServerThread(engine, admin_token=ADMIN, keys=KEYS) as s:
        yield s


async def _session(url: str, token: str, start: dict, audio: np.ndarray | None, *, until_final: bool = False):
    """One connection: ``start``, the audio at once (20 ms frames), then ``stop`` unless
    ``until_final`` (then the connection is dropped once the first final came). Returns every
    message and the close code."""
    got: list[dict] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", **start}))
        if audio is not None:
            for i in range(0, len(audio), 320):
                await ws.send(pcm_s16le(audio[i : i + 320]))
            if not until_final:
                await ws.send(json.dumps({"type": "stop"}))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                got.append(msg)
                if until_final and msg["type"] == "final":
                    break  # the client vanishes: the connection is closed under the stream
        except ConnectionClosed:
            pass  # closed with an error code: the messages before it are what counts
        code = ws.close_code
    return got, code


def _of(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["type"] == kind]


def test_a_broken_stream_resumes_where_its_last_final_ended(srv, jfk):
    first, _ = asyncio.run(_session(srv.url, ALICE, {}, jfk[: 6 * RATE], until_final=True))
    session = _of(first, "ready")[0]["session"]
    [final] = _of(first, "final")
    resume = {"session": session, "from_s": final["end"], "segment": final["segment"] + 1}
    rest = jfk[round(final["end"] * RATE) :]  # what the client kept: the audio no final covers
    second, code = asyncio.run(_session(srv.url, ALICE, {"resume": resume}, rest))

    [ready] = _of(second, "ready")
    assert ready["session"] == session and ready["resume"] == resume
    assert ready["variant"] == _of(first, "ready")[0]["variant"]
    finals = _of(second, "final")
    assert finals, "the rest of the speech was transcribed"
    assert [f["segment"] for f in finals] == list(range(final["segment"] + 1, final["segment"] + 1 + len(finals)))
    assert all(f["start"] >= final["end"] and f["status"] == "ok" for f in finals)  # stream times go on
    assert finals[-1]["end"] <= len(jfk) / RATE + 0.05
    end = _of(second, "end")[0]
    assert end["reason"] == "stop" and end["segments"] == final["segment"] + 1 + len(finals) and code == 1000

    # one session: its owner's feedback is scored against the finals of both connections
    text = " ".join(f["text"] for f in [final, *finals] if f["text"])
    req = urllib.request.Request(
        srv.http + "/v1/feedback",
        data=json.dumps({"session": session, "text": text}).encode(),
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    [score] = body["scores"].values()
    assert score["text"] == text and score["errors"] == 0


def test_only_the_owner_resumes_a_session_that_has_ended_here(srv, jfk):
    first, _ = asyncio.run(_session(srv.url, ALICE, {}, jfk[: 3 * RATE]))
    session = _of(first, "ready")[0]["session"]
    resume = {"session": session, "from_s": 3.0, "segment": 5}

    got, code = asyncio.run(_session(srv.url, BOB, {"resume": resume}, None))
    [error] = _of(got, "error")
    assert error["code"] == "unknown_session" and code == 1008  # told exactly what an unknown one gets
    assert session in error["message"]
    got, code = asyncio.run(_session(srv.url, ALICE, {"resume": {**resume, "session": "0" * 12}}, None))
    assert _of(got, "error")[0]["code"] == "unknown_session"
    for bad in ({"session": session, "from_s": -1}, {"session": session, "segment": "2"}, {"session": 7}, []):
        got, code = asyncio.run(_session(srv.url, ALICE, {"resume": bad}, None))
        assert _of(got, "error")[0]["code"] == "bad_message" and code == 1008


def test_a_session_still_open_is_not_resumed_twice(srv, jfk):
    async def scenario():
        async with connect(srv.url, additional_headers={"Authorization": f"Bearer {ALICE}"}) as ws:
            await ws.send(json.dumps({"type": "start"}))
            ready = json.loads(await ws.recv())
            resume = {"session": ready["session"], "from_s": 0.0, "segment": 0}
            got, code = await _session(srv.url, ALICE, {"resume": resume}, None)
            await ws.send(json.dumps({"type": "stop"}))
            async for _ in ws:
                pass
        return got, code

    got, code = asyncio.run(scenario())
    assert _of(got, "error")[0]["code"] == "session_open" and code == 1013
