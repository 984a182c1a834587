"""The deployment shared in PostgreSQL when the database fails (issue 25): a real PostgreSQL of
this test alone, stopped under a server whose deploy state lives there. The streams are served
all along (routed by the last state read); admin actions answer 503 ``store_unavailable`` and
change nothing; ``GET /admin/deploy`` says since when the replica is out of sync and why; what
the streams produced meanwhile (gate evidence, the session ledger) is written once the database
is back, and feedback through the store finds the session again. Also: ``adopt``, the pure step a
replica takes to follow a change made elsewhere."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import SPEECH
from livehelp import ServerThread
from sqlalchemy import create_engine, text
from test_review_faults import cluster  # noqa: F401  # the fixture: a PostgreSQL of this test alone

from speechpipe.pipeline.clients.client import file_frames, file_start, paced, stream_pcm
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.deploy import DeployController, DeploySettings

pytestmark = pytest.mark.corpus

ADMIN = "admin-secret"
JFK = SPEECH / "jfk_inaugural_ask-not.flac"


def call(srv, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        srv.http + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (out := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)
    return out


def test_a_replica_serves_on_while_the_shared_store_is_down_and_catches_up(engine, cluster):  # noqa: F811
    pgc, port = cluster
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    cfg = Config().with_overrides(
        {
            "deploy.mode": "bluegreen",
            "deploy.candidate": "green",
            "variants.green.vad.backend": "webrtc",
            "deploy.db": url,
        }
    )
    with ServerThread(engine, config=cfg, admin_token=ADMIN) as srv:
        state = until(lambda: (s := call(srv, "/admin/deploy")[2]).get("replication", {}).get("synced") and s)
        assert state["replication"]["leader"] and state["replication"]["version"] == 1
        assert call(srv, "/admin/deploy", {"action": "switch", "active": "green"})[0] == 200

        pgc.stop()
        status, headers, body = call(srv, "/admin/deploy", {"action": "switch", "active": "default"})
        assert status == 503 and body["error"] == "store_unavailable" and "retry-after" in {k.lower() for k in headers}
        down = until(lambda: not (s := call(srv, "/admin/deploy")[2])["replication"]["synced"] and s)
        assert down["replication"]["unsynced_since"] and down["replication"]["error"]
        assert down["active"] == "green"  # nothing changed by the refused switch
        start = file_start(JFK)
        result = asyncio.run(stream_pcm(srv.url, start, paced(file_frames(JFK), 0.02, 0.0)))
        assert result.end["reason"] == "stop" and not result.errors and result.finals
        assert result.ready["variant"] == "green"  # routed by the last state read
        waiting = call(srv, "/admin/deploy")[2]["replication"]["waiting"]
        assert waiting["evidence"] >= 1 and waiting["sessions"] >= 1

        pgc.start(port)
        back = until(lambda: (s := call(srv, "/admin/deploy")[2])["replication"]["synced"] and s)
        assert back["replication"]["waiting"] == {"evidence": 0, "sessions": 0}
        engine_ = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
        try:
            with engine_.connect() as db:
                kept = db.execute(
                    text("SELECT doc FROM deploy_sessions WHERE session = :s"), {"s": result.ready["session"]}
                ).scalar()
                kinds = dict(db.execute(text("SELECT kind, count(*) FROM deploy_evidence GROUP BY kind")).all())
        finally:
            engine_.dispose()
        doc = json.loads(kept)
        assert doc["variant"] == "green" and len(doc["finals"]) == len(result.finals) and doc["ended"]
        assert kinds["final"] >= len(result.finals) and kinds["ended"] >= 1
        assert call(srv, "/admin/deploy", {"action": "switch", "active": "default"})[0] == 200


def settings(**kw) -> DeploySettings:
    return DeploySettings(mode="canary", primary="a", candidate="b", steps=(0.5, 1.0), **kw)


def test_a_follower_adopts_the_changes_made_elsewhere_without_recording_any():
    leader = DeployController(settings(), {"a": "1", "b": "2"}, now=100.0)
    follower = DeployController(settings(), {"a": "1", "b": "2"}, now=100.5)
    assert follower.adopt(leader.snapshot(), now=101.0) is not None  # the stored start replaces its own
    assert [c.to_dict() for c in follower.history] == [c.to_dict() for c in leader.history]

    leader.apply({"action": "pause"}, now=110.0)
    follower.record_final("b", 111.0, latency_s=0.5)
    new = follower.adopt(leader.snapshot(), now=112.0)
    assert [c.action for c in new] == ["pause"] and follower.paused
    assert follower.snapshot()["window"]["finals"]["b"] == 1  # a pause starts no window

    leader.apply({"action": "set_weight", "variant": "b", "weight": 0.25}, now=120.0)
    new = follower.adopt(leader.snapshot(), now=121.0)
    assert [c.action for c in new] == ["set_weight"] and follower.weight_of("b") == 0.25
    window = follower.snapshot()["window"]
    assert window["finals"]["b"] == 0 and window["started_at"] == leader.snapshot()["window"]["started_at"]
    assert follower.adopt(leader.snapshot(), now=122.0) == []  # nothing new
    assert len(follower.history) == len(leader.history)

    other = DeployController(
        DeploySettings(mode="bluegreen", primary="a", candidate="b"), {"a": "1", "b": "2"}, now=130.0
    )
    assert follower.adopt(other.snapshot(), now=131.0) is None  # another deployment: not taken
    assert follower.weight_of("b") == 0.25
