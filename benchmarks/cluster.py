"""Replicas behind HAProxy sharing one deployment in PostgreSQL (issue 25): what happens to
streams, gates and state when replicas are many, stop and die. Everything on 127.0.0.1, started
by deploy/local/cluster.py (a throwaway PostgreSQL, the replicas, HAProxy).

Streams are corpus utterances joined by pauses holding real noise (benchmarks/live_streams.py:
thunderstorm, tap, dishes... at -45...-30 dBFS), in the formats clients send (16 kHz, 8 kHz,
48 kHz float stereo, 44.1 kHz stereo), 20 ms frames in real time, through HAProxy.

Phases (``--phases``, all by default):

* ``canary``: 3 replicas, a canary of ``mute`` (its guard drops every segment: a harmful
  candidate). Paused through replica 1 while 6 streams (3 routed to each side by client key)
  run and each session's reference is posted through a replica that did not serve it, resumed
  through replica 2: how many rollbacks, on which evidence, and each replica's share of it.
* ``agree``: admin actions through each replica in turn: how long until every other replica's
  ``GET /admin/deploy`` shows the change.
* ``leader``: ``kill -9`` of the leader: how long until another replica holds the lock, and a
  canary it rolls back on its own.
* ``bluegreen``: 3 replicas, blue/green; a switch through replica 1: how long until every replica
  routes to green, and the variant of the next streams through HAProxy.
* ``kill``: 12 streams (4 a replica), ``kill -9`` of one replica: finals lost, duplicated, and
  the time each of its streams took to resume on another.
* ``sigterm``: 8 streams over the 2 replicas left, SIGTERM of one: streams dropped, HAProxy's view
  of that replica (its stats page), the drain time.
* ``throughput``: 1 replica against 3 on this machine, N streams each (``--streams``): refused,
  lost, final latency, CPU seconds per second of audio (all replicas' processes).

    python benchmarks/cluster.py
    python benchmarks/cluster.py --phases kill sigterm --streams 8 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from live_streams import StreamAudio, build_stream, noises, utterances
from machine import machine_line
from streaming import cpu_seconds, refused

from speechpipe.pipeline.clients.client import StreamResult, paced, stream_pcm
from speechpipe.pipeline.deploy import share_of
from speechpipe.pipeline.protocol import Start

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin"
FRAME_S = 0.02
CANARY = {
    "deploy.mode": '"canary"',
    "deploy.candidate": '"mute"',
    "deploy.steps": "[0.5, 1.0]",
    "deploy.step_min_streams": "3",
    "deploy.step_min_s": "0",
    "deploy.gates.min_finals": "4",
    "deploy.gates.min_feedback_words": "20",
    "variants.mute.asr.min_avg_logprob": "-0.0001",
}
BLUEGREEN = {"deploy.mode": '"bluegreen"', "deploy.candidate": '"green"', "variants.green.vad.backend": '"webrtc"'}
PHASES = ("canary", "agree", "leader", "bluegreen", "kill", "sigterm", "throughput")


# -- the cluster ------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(replicas: int, settings: dict[str, str], *serve: str):
    options = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, str(ROOT / "deploy" / "local" / "cluster.py"), "--replicas", str(replicas), "--port", "0"]
    cmd += ["--", "--log-level", "WARNING", "--admin-token", ADMIN, *options, *serve]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the cluster did not start ({proc.wait(30)})")
        facts = json.loads(line)
        facts["ws"] = facts["url"].replace("http://", "ws://") + "/stream"
        yield facts
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return 0, {}


def state(replica: dict) -> dict:
    return call(replica["url"], "/admin/deploy")[1]


def until(check, timeout: float = 60.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        time.sleep(every)
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def key_for(candidate: str, below: float, on: bool, start: int = 0) -> str:
    k = start
    while (share_of(f"client:bench-{k}", candidate) < below) != on:
        k += 1
    return f"bench-{k}"


# -- streams ----------------------------------------------------------------------------------------


_UTTS: list | None = None


def streams(n: int, duration_s: float, seed: int = 0) -> list[StreamAudio]:
    global _UTTS
    _UTTS = _UTTS or utterances()
    noise = noises()
    return [build_stream(seed + k, _UTTS, duration_s, noise, (-45.0, -40.0, -35.0, -30.0)[k % 4]) for k in range(n)]


async def run_streams(url: str, audio: list[StreamAudio], keys=None, stagger: float = 0.3, reconnect: int = 5):
    async def one(k: int, s: StreamAudio) -> StreamResult:
        await asyncio.sleep(k * stagger)
        start = s.fmt.start
        if keys is not None:
            start = Start(start.sample_rate, start.encoding, start.channels, client=keys[k])
        return await stream_pcm(url, start, paced(s.frames(), FRAME_S, 1.0), reconnect=reconnect)

    return await asyncio.gather(*(one(k, s) for k, s in enumerate(audio)))


def duplicates(r: StreamResult) -> int:
    seen = [f["segment"] for f in r.finals]
    return len(seen) - len(set(seen))


def gaps(r: StreamResult) -> int:
    """Indices the client never got a final or a discard for."""
    got = {f["segment"] for f in r.finals} | {d["segment"] for d in r.discarded}
    return len(set(range(max(got, default=-1) + 1)) - got)


def who_served(db: str) -> dict[str, str]:
    """session -> replica, from the shared ledger."""
    from sqlalchemy import create_engine, text

    engine = create_engine("postgresql+psycopg://" + db.split("://", 1)[1])
    try:
        with engine.connect() as c:
            return dict(c.execute(text("SELECT session, replica FROM deploy_sessions")).all())
    finally:
        engine.dispose()


# -- phases -----------------------------------------------------------------------------------------


def phase_canary(c: dict) -> None:
    reps = c["replicas"]
    print("\n## canary of a harmful candidate (mute), 3 replicas, feedback through another replica")
    assert call(reps[0]["url"], "/admin/deploy", {"action": "pause"})[0] == 200
    audio = streams(6, 20.0, seed=10)
    keys = [key_for("mute", 0.5, k % 2 == 1, start=100 * k) for k in range(6)]
    results = asyncio.run(run_streams(c["ws"], audio, keys))
    served = who_served(c["db"])
    names = [s["replication"]["replica"] for s in (state(r) for r in reps)]
    for r, s in zip(results, audio, strict=True):
        session = r.ready["session"]
        through = reps[(names.index(served[session]) + 1) % len(reps)]
        status, body = call(through["url"], "/v1/feedback", {"session": session, "text": s.reference})
        assert status == 200, body
        print(
            f"  session {session} ({r.ready['variant']:7s}) served by {served[session]}, feedback through "
            f"{through['url']}: WER {next(iter(body['scores'].values()))['wer']:.3f}"
        )
    t0 = time.monotonic()
    assert call(reps[1]["url"], "/admin/deploy", {"action": "resume"})[0] == 200
    done = until(lambda: all(state(r)["state"] == "rolled_back" for r in reps), timeout=30)
    took = time.monotonic() - t0
    st = [state(r) for r in reps]
    rollbacks = [sum(ch["action"] == "rollback" for ch in s["history"]) for s in st]
    print(
        f"  rolled back on every replica: {bool(done)}, {took:.2f} s after the resume; rollbacks in each history: {rollbacks}"
    )
    last = st[0]["history"][-1]
    print(f"  reason: {last['reason']}")
    print("  | gate | passed | candidate | primary | limit |")
    print("  |---|---|---|---|---|")
    for g in last["gates"]:
        print(f"  | {g['name']} | {g['passed']} | {g['candidate']} | {g['primary']} | {g['threshold']} |")
    rep = st[0]["replication"]["replicas"]
    print("  per replica: " + ", ".join(f"{x['replica']} {x['finals']} finals" for x in rep))
    by = {}
    for session, replica in served.items():
        by[replica] = by.get(replica, 0) + 1
    print(f"  sessions served per replica (shared ledger): {by}")


def phase_agree(c: dict) -> None:
    reps = c["replicas"]
    print("\n## admin actions through each replica: until every other replica shows the change")
    print("| action | through | version | seen by the others after (s) |")
    print("|---|---|---|---|")
    actions = [{"action": "set_weight", "variant": "mute", "weight": w} for w in (0.25, 0.5)]
    actions += [{"action": "pause"}, {"action": "resume"}, {"action": "rollback"}]
    delays = []
    for k, action in enumerate(actions):
        via = reps[k % len(reps)]
        t0 = time.monotonic()
        status, body = call(via["url"], "/admin/deploy", action)
        assert status == 200, body
        n = len(body["deploy"]["history"])
        seen = []
        for other in reps:
            if other is via:
                continue
            until(lambda o=other, n=n: len(state(o).get("history", [])) >= n, timeout=10)
            seen.append(time.monotonic() - t0)
        delays += seen
        print(f"| {action['action']} | {via['url']} | {body['deploy']['replication']['version']} | {max(seen):.3f} |")
    print(f"  max {max(delays):.3f} s, median {statistics.median(delays):.3f} s over {len(delays)} (action, replica)")


def phase_leader(c: dict) -> None:
    reps = c["replicas"]
    print("\n## kill -9 of the leader")
    leader = next(r for r in reps if state(r)["replication"]["leader"])
    os.kill(leader["pid"], signal.SIGKILL)
    t0, killed_at = time.monotonic(), time.time()
    rest = [r for r in reps if r is not leader]
    new = until(lambda: next((r for r in rest if state(r).get("replication", {}).get("leader")), None), every=0.05)
    print(f"  leader {leader['url']} killed; {new['url']} leads after {time.monotonic() - t0:.2f} s")
    assert call(new["url"], "/admin/deploy", {"action": "set_weight", "variant": "mute", "weight": 0.5})[0] == 200
    audio = streams(4, 12.0, seed=40)
    keys = [key_for("mute", 0.5, k % 2 == 1, start=1000 + 100 * k) for k in range(4)]
    asyncio.run(run_streams(c["ws"], audio, keys))
    done = until(lambda: state(rest[0])["state"] == "rolled_back", timeout=30, every=0.05)
    last = state(rest[0])["history"][-1]
    print(
        f"  a new canary (set_weight 0.5, then 4 streams) judged by the new leader: "
        f"{last['action'] if done else 'not rolled back'} {last['at'] - killed_at:.1f} s after the kill "
        f"({last['reason'][:100]})"
    )
    c["replicas"] = rest


def phase_bluegreen(c: dict) -> None:
    reps = c["replicas"]
    print("\n## blue/green switch through one replica")
    before = asyncio.run(run_streams(c["ws"], streams(3, 6.0, seed=60), stagger=0.0))
    t0 = time.monotonic()
    status, body = call(reps[0]["url"], "/admin/deploy", {"action": "switch", "active": "green"})
    assert status == 200, body
    until(lambda: all(state(r).get("active") == "green" for r in reps), timeout=10)
    took = time.monotonic() - t0
    after = asyncio.run(run_streams(c["ws"], streams(6, 6.0, seed=70), stagger=0.0))
    print(f"  before: {[r.ready['variant'] for r in before]}")
    print(
        f"  every replica routes to green {took:.3f} s after the switch answered; next 6 streams through HAProxy: "
        f"{[r.ready['variant'] for r in after]}"
    )


def phase_kill(c: dict) -> None:
    reps = c["replicas"]
    print(f"\n## kill -9 of a replica holding live streams ({len(reps)} replicas, 12 streams through HAProxy)")
    audio = streams(12, 30.0, seed=80)

    async def scenario():
        task = asyncio.ensure_future(run_streams(c["ws"], audio, stagger=0.1))
        await asyncio.sleep(10.0)
        held = await asyncio.to_thread(lambda: [(r, active(r)) for r in reps])
        victim, n = max(held, key=lambda x: x[1])
        os.kill(victim["pid"], signal.SIGKILL)
        return victim, n, held, await task

    victim, n, held, results = asyncio.run(scenario())
    print(f"  open streams per replica at the kill: {[h[1] for h in held]}; killed {victim['url']} holding {n}")
    print("| stream | format | resumed | resume s | from s | finals | lost | duplicates | gaps | end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, (r, s) in enumerate(zip(results, audio, strict=True)):
        res = r.resumes[0] if r.resumes else {}
        print(
            f"| {k} | {s.fmt.name} | {len(r.resumes)} | {res.get('resume_s', float('nan')):.3f} | "
            f"{res.get('from_s', float('nan')):.2f} | {len(r.finals)} | {r.lost} | {duplicates(r)} | {gaps(r)} | "
            f"{r.end['reason'] if r.end else r.errors} |"
        )
    times = [r.resumes[0]["resume_s"] for r in results if r.resumes and "resume_s" in r.resumes[0]]
    print(
        f"  {sum(bool(r.resumes) for r in results)} resumed, resume time max {max(times, default=float('nan')):.3f} s; "
        f"finals lost {sum(r.lost for r in results)}, duplicated {sum(duplicates(r) for r in results)}"
    )
    c["replicas"] = [r for r in reps if r is not victim]


def active(replica: dict) -> float:
    try:
        with urllib.request.urlopen(f"{replica['url']}/metrics", timeout=5) as r:
            page = r.read().decode()
    except (urllib.error.URLError, OSError):
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith("speechpipe_streams_active")
    )


def haproxy_view(c: dict) -> dict[str, str]:
    with urllib.request.urlopen(c["haproxy_stats"] + ";csv", timeout=5) as r:
        rows = csv.DictReader(io.StringIO(r.read().decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "replicas"}


def phase_sigterm(c: dict) -> None:
    reps = c["replicas"]
    print(f"\n## SIGTERM of a replica under traffic ({len(reps)} replicas, 8 streams)")
    audio = streams(8, 25.0, seed=90)
    view: list[tuple[float, dict]] = []

    async def scenario():
        task = asyncio.ensure_future(run_streams(c["ws"], audio, stagger=0.1))
        await asyncio.sleep(8.0)
        victim = reps[0]
        held = await asyncio.to_thread(active, victim)
        t0 = time.monotonic()
        os.kill(victim["pid"], signal.SIGTERM)
        while alive(victim["pid"]):
            view.append((time.monotonic() - t0, await asyncio.to_thread(haproxy_view, c)))
            await asyncio.sleep(0.2)
        drained = time.monotonic() - t0
        return victim, held, drained, await task

    victim, held, drained, results = asyncio.run(scenario())
    changes, last = [], None
    for t, v in view:
        if v != last:
            changes.append(f"{t:.1f} s {v}")
            last = v
    print(f"  {victim['url']} held {held:g} streams; exited {drained:.2f} s after SIGTERM (drain)")
    print("  HAProxy's view: " + "; ".join(changes))
    dropped = [r for r in results if not r.end or r.end["reason"] != "stop" or r.errors]
    resumed = [r for r in results if r.resumes]
    print(
        f"  streams dropped {len(dropped)}, resumed {len(resumed)} "
        f"(resume s: {[round(r.resumes[0].get('resume_s', float('nan')), 3) for r in resumed]}); "
        f"finals lost {sum(r.lost for r in results)}, duplicated {sum(duplicates(r) for r in results)}"
    )


def nearest(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted values (nan for none)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def phase_throughput(levels: list[int]) -> None:
    print("\n## throughput: 1 replica against 3 on this machine (HAProxy in front of both)")
    print("| replicas | streams | refused | lost | p50 latency s | p95 latency s | CPU s per audio s | server CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    for n_rep in (1, 3):
        with cluster(n_rep, {}) as c:
            pids = [r["pid"] for r in c["replicas"]]
            for n in levels:
                audio = streams(n, 30.0, seed=200 + n)
                cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
                results = asyncio.run(run_streams(c["ws"], audio, stagger=2.0 / max(1, n), reconnect=0))
                cpu, wall = sum(cpu_seconds(p) for p in pids) - cpu0, time.monotonic() - t0
                served = [r for r in results if not refused(r)]
                lat = sorted(f["latency_s"] for r in served for f in r.finals if "latency_s" in f)
                audio_s = sum(r.sent_s for r in served)
                p = functools.partial(nearest, lat)
                print(
                    f"| {n_rep} | {n} | {len(results) - len(served)} | {sum(r.lost for r in served)} | {p(0.5):.2f} | "
                    f"{p(0.95):.2f} | {cpu / max(audio_s, 1e-9):.3f} | {100 * cpu / wall / os.cpu_count():.0f} |"
                )
                time.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--streams", nargs="+", type=int, default=[4, 8, 12])
    args = ap.parse_args()
    print(machine_line())
    if {"canary", "agree", "leader"} & set(args.phases):
        with cluster(3, CANARY) as c:
            for name in ("canary", "agree", "leader"):
                if name in args.phases:
                    globals()[f"phase_{name}"](c)
    if {"bluegreen", "kill", "sigterm"} & set(args.phases):
        with cluster(3, BLUEGREEN) as c:
            for name in ("bluegreen", "kill", "sigterm"):
                if name in args.phases:
                    globals()[f"phase_{name}"](c)
    if "throughput" in args.phases:
        phase_throughput(args.streams)


if __name__ == "__main__":
    main()
