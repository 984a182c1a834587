"""The local cluster (deploy/local/cluster.py): replicas of ``speechpipe serve`` behind Debian's
HAProxy and one PostgreSQL, all on 127.0.0.1. Streams go through HAProxy to the replica with the
fewest; a replica that gets SIGTERM turns unready, HAProxy sends its new streams elsewhere, and the
stream it holds drains to its last final; a replica killed with ``kill -9`` loses no final, its
streams resume on another. The replicas share one deployment: a canary judged by one of them on
the evidence of all (feedback through any replica), the same state on every replica within a
second, another replica judging once the leader is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pg
import pytest
from conftest import SPEECH
from livehelp import key_for

from speechpipe.pipeline.clients.client import file_frames, file_start, paced, stream_pcm
from speechpipe.pipeline.protocol import Start

ROOT = Path(__file__).resolve().parents[1]
JFK = SPEECH / "jfk_inaugural_ask-not.flac"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
ACTIVE = re.compile(r"^speechpipe_streams_active\{[^}]*\} ([0-9.]+)$", re.MULTILINE)

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="HAProxy not installed (apt-get install haproxy)")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def active(replica: dict) -> float:
    """Streams the replica holds now (its own /metrics; 0 before its first stream)."""
    _status, page = get(f"{replica['url']}/metrics")
    return sum(float(x) for x in ACTIVE.findall(page))


ADMIN = "admin-secret"
#: a canary of the mute candidate (its guard drops every segment: empty finals) at steps 0.5 and
#: 1.0, judged on little evidence, as tests/livehelp.canary_config
CANARY = {
    "deploy.mode": '"canary"',
    "deploy.candidate": '"mute"',
    "deploy.steps": "[0.5, 1.0]",
    "deploy.step_min_streams": "1",
    "deploy.step_min_s": "0",
    "deploy.gates.min_finals": "2",
    "deploy.gates.min_feedback_words": "10",
    "variants.mute.asr.min_avg_logprob": "-0.0001",
}
REFERENCE = " ".join(JFK.with_suffix(".txt").read_text().split())
#: a client key the canary routes to the primary at its first step: the streams of the tests
#: that are not about the canary give it no candidate evidence
PRIMARY = key_for("mute", 0.5, False)


def database() -> contextlib.AbstractContextManager[list[str]]:
    """``--db`` options of a database of the cluster's own: a fresh one on the CI server, else
    none (cluster.py starts a throwaway PostgreSQL itself)."""
    configured = os.environ.get(pg.ENV)
    if configured:
        return _fresh(configured)
    if pg.server_bindir() is None:
        pytest.skip(pg.SKIP_REASON)
    return contextlib.nullcontext([])


@contextlib.contextmanager
def _fresh(server: str):
    with pg.fresh_database(server) as url:
        yield ["--db", "postgresql://" + url.split("://", 1)[1]]


@contextlib.contextmanager
def local_cluster(replicas: int, *serve: str):
    with database() as db:
        cmd = [sys.executable, str(ROOT / "deploy" / "local" / "cluster.py"), "--replicas", str(replicas)]
        cmd += ["--port", "0", *db, "--", "--log-level", "WARNING", *serve]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
        try:
            line = proc.stdout.readline()  # the cluster prints one JSON line once everything is ready
            assert line, f"the cluster exited ({proc.wait(10)}) before it was ready"
            yield json.loads(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0


@pytest.fixture(scope="module")
def cluster():
    options = [x for k, v in CANARY.items() for x in ("--set", f"{k}={v}")]
    with local_cluster(3, "--admin-token", ADMIN, *options) as c:
        yield c


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """``(status, JSON body)`` of a GET (no ``body``) or a POST of ``body``, as the admin."""
    req = urllib.request.Request(
        f"{url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def admin(url: str, body: dict | None = None) -> tuple[int, dict]:
    return call(url, "/admin/deploy", body)


def post_feedback(url: str, session: str, text: str) -> tuple[int, dict]:
    return call(url, "/v1/feedback", {"session": session, "text": text})


def states(cluster: dict) -> list[dict]:
    return [admin(r["url"])[1] for r in cluster["replicas"]]


def until(check, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out:
            return out
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def test_streams_go_through_haproxy_to_the_replica_with_the_fewest(cluster):
    assert get(f"{cluster['url']}/readyz")[0] == 200
    url = cluster["url"].replace("http://", "ws://") + "/stream"

    async def two():
        first = asyncio.create_task(jfk_stream(url, PRIMARY, speed=1.0))
        await asyncio.sleep(1.5)
        held = [active(r) for r in cluster["replicas"]]
        second = await jfk_stream(url, PRIMARY, speed=0)
        return held, await first, second

    held, first, second = asyncio.run(two())
    assert sorted(held) == [0.0, 0.0, 1.0]  # the first stream is on one replica...
    for result in (first, second):  # ...and both came back whole, through HAProxy
        assert result.end and result.end["reason"] == "stop" and not result.errors
        assert len(result.finals) == result.end["segments"] >= 2
        assert all(f["status"] == "ok" for f in result.finals)


def jfk_stream(url: str, key: str, speed: float = 1.0, reconnect: int = 0):
    start = file_start(JFK)
    start = Start(start.sample_rate, start.encoding, start.channels, client=key)
    return stream_pcm(url, start, paced(file_frames(JFK), 0.02, speed), reconnect=reconnect)


def whole(result) -> bool:
    """Every segment the client was told of has exactly one final, transcribed, none twice,
    and the stream ended as the client asked."""
    indices = [f["segment"] for f in result.finals]
    return (
        result.end is not None
        and result.end["reason"] == "stop"
        and not result.errors
        and indices == list(range(len(indices)))
        and result.end["segments"] == len(indices) >= 2
        and all(f["status"] == "ok" for f in result.finals)
        and result.lost == 0
    )


def leader_of(cluster: dict, alive: set[int]) -> dict | None:
    for r in cluster["replicas"]:
        if r["pid"] in alive:
            status, state = admin(r["url"])
            if status == 200 and state["replication"]["leader"]:
                return r
    return None


def test_the_leader_killed_under_streams_loses_no_final_and_another_leads(cluster):
    """``kill -9`` of the leader while it holds streams: each of its streams resumes through
    HAProxy on another replica (the client sends again the audio no final covers), every segment
    gets exactly one final, and another replica takes the leader's lock within seconds."""
    url = cluster["url"].replace("http://", "ws://") + "/stream"
    alive = {r["pid"] for r in cluster["replicas"]}

    async def scenario():
        streams = []
        for _ in range(4):  # leastconn: every replica holds at least one
            streams.append(asyncio.create_task(jfk_stream(url, PRIMARY, reconnect=5)))
            await asyncio.sleep(0.3)
        await asyncio.sleep(3.5)  # past the first final of each
        leader = await asyncio.to_thread(leader_of, cluster, alive)
        held = await asyncio.to_thread(active, leader)
        os.kill(leader["pid"], signal.SIGKILL)
        return leader, held, await asyncio.gather(*streams)

    leader, held, results = asyncio.run(scenario())
    alive.discard(leader["pid"])
    assert held >= 1
    resumed = [r for r in results if r.resumes]
    assert len(resumed) == held, [r.resumes for r in results]
    for r in results:
        assert whole(r), (r.finals, r.errors, r.end, r.resumes)
    for r in resumed:
        [again] = r.resumes  # went on from its last final before the kill (0 when it had none)
        before = sorted(
            (f for f in r.finals + r.discarded if f["segment"] < again["segment"]), key=lambda f: f["segment"]
        )
        assert again["resume_s"] > 0 and again["from_s"] == (before[-1]["end"] if before else 0.0)
        print(f"resumed from {again['from_s']} s after {again['resume_s']:.3f} s")
    new = until(lambda: leader_of(cluster, alive), what="a new leader")
    assert new["pid"] != leader["pid"]
    gone = until(
        lambda: [x for x in admin(new["url"])[1]["replication"]["replicas"] if not x["alive"]],
        what="the killed replica shown as gone",
    )
    assert [x["pid"] for x in gone] == [leader["pid"]]
    cluster["replicas"] = [r for r in cluster["replicas"] if r["pid"] in alive]


def test_a_canary_is_judged_once_on_the_evidence_of_every_replica(cluster):
    """The mute candidate (empty finals) on one replica, the primary on another, feedback on each
    session posted through the replica that did not serve it: the leader rolls the canary back
    once, on both sides' evidence (the WER gate needs the feedback), and every replica shows the
    same state. The canary is paused (through one replica) while the evidence comes in and
    resumed (through the other), so the one judgement sees all of it, whatever this CPU's speed."""
    url = cluster["url"].replace("http://", "ws://") + "/stream"
    a, b = cluster["replicas"][:2]
    assert admin(a["url"], {"action": "pause"})[0] == 200
    until(lambda: all(s["paused"] for s in states(cluster)), what="paused on every replica")

    async def two():
        first = asyncio.create_task(jfk_stream(url, key_for("mute", 0.5, False)))
        await asyncio.sleep(1.5)
        held = [await asyncio.to_thread(active, r) for r in cluster["replicas"]]
        second = await jfk_stream(url, key_for("mute", 0.5, True), speed=0)
        return held, await first, second

    held, primary, candidate = asyncio.run(two())
    assert primary.ready["variant"] == "default" and candidate.ready["variant"] == "mute", (
        primary.ready,
        candidate.ready,
        [(s["replication"], s["variants"], s["history"]) for s in states(cluster)],
    )
    served = cluster["replicas"][held.index(1.0)]  # the primary's stream; the candidate's went elsewhere
    other = next(r for r in cluster["replicas"] if r is not served)
    for result, through in ((primary, other), (candidate, served)):
        status, body = post_feedback(through["url"], result.ready["session"], REFERENCE)
        assert status == 200 and body["counted"], body
    assert post_feedback(other["url"], candidate.ready["session"], REFERENCE)[1]["scores"]["mute"]["wer"] == 1.0
    # The feedback reaches the leader as evidence through the shared store, at its next sync:
    # resumed before that, the leader would judge without it (the WER gate holding, the empty
    # finals alone rolling back). Resumed once every replica's state shows both sides' feedback.
    until(
        lambda: all(
            all(((s["window"]["figures"].get(v) or {}).get("feedback_words") or 0) > 0 for v in ("default", "mute"))
            for s in states(cluster)
        ),
        what="both sides' feedback in the leader's window",
    )
    assert admin(b["url"], {"action": "resume"})[0] == 200
    rolled = until(
        lambda: (s := states(cluster)) and all(x["state"] == "rolled_back" for x in s) and s, what="rolled back"
    )
    histories = [[c["action"] for c in s["history"]] for s in rolled]
    assert all(h == histories[0] for h in histories) and histories[0].count("rollback") == 1, histories
    rollback = rolled[0]["history"][-1]
    failed = {g["name"]: g for g in rollback["gates"] if g["passed"] is False}
    assert failed["wer_delta"]["candidate"] == 1.0 and failed["wer_delta"]["primary"] < 0.5, rollback["gates"]
    # the primary's side holds the earlier tests' streams too (a short segment may decode empty)
    assert failed["empty_rate_delta"]["candidate"] == 1.0 and failed["empty_rate_delta"]["primary"] < 0.5
    feedback = [json.loads(json.dumps(s["feedback"])) for s in rolled]
    assert sum(f["counted"] for f in feedback) == 3  # each replica counts what it received
    after = asyncio.run(jfk_stream(url, key_for("mute", 0.5, True), speed=0))
    assert after.ready["variant"] == "default"
    # each replica's dashboard shows the deployment as a whole and every replica
    for r in cluster["replicas"]:
        with urllib.request.urlopen(f"{r['url']}/dashboard/state?token={ADMIN}", timeout=10) as page:
            shown = json.loads(page.read())["deploy"]
        assert shown["state"] == "rolled_back" and shown["history"] == rolled[0]["history"]
        alive = {x["url"] for x in shown["replication"]["replicas"] if x["alive"]}
        assert alive == {x["url"] for x in cluster["replicas"]}


def test_a_replica_stopped_under_a_stream_sends_its_finals_and_new_streams_go_elsewhere(cluster):
    """SIGTERM drains a replica: the stream it holds gets a final for every segment it began and
    ``end`` with reason ``shutdown`` (close 1001), never a lost final; the rest of that stream's
    audio needs the client to resume on another replica (issue 25's next step). New streams go
    to the other replica."""
    url = cluster["url"].replace("http://", "ws://") + "/stream"

    async def scenario():
        held = asyncio.create_task(jfk_stream(url, PRIMARY, speed=1.0))  # 11 s in real time
        await asyncio.sleep(3.5)  # past the first segment's end (2.4 s)
        [victim] = [r for r in cluster["replicas"] if active(r) == 1.0]
        os.kill(victim["pid"], signal.SIGTERM)
        # HAProxy checks /readyz every second and takes a replica out after one failed check
        await asyncio.sleep(2.5)
        after = await jfk_stream(url, PRIMARY, speed=0)
        return victim, await held, after

    victim, held, after = asyncio.run(scenario())
    assert held.end == {"type": "end", "reason": "shutdown", "segments": len(held.finals)}
    assert held.close_code == 1001 and not held.errors
    assert len(held.finals) == len(held.speech_starts) >= 1 and all(f["status"] == "ok" for f in held.finals)
    assert after.end and after.end["reason"] == "stop" and not after.errors and after.finals
    deadline = time.monotonic() + 30
    while get(f"{victim['url']}/healthz")[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert get(f"{victim['url']}/healthz")[0] == 0, "the stopped replica exits once drained"
