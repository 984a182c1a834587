"""The local cluster (deploy/local/cluster.py): replicas of ``speechpipe serve`` behind Debian's
HAProxy, all on 127.0.0.1. Streams go through HAProxy to the replica with the fewest; a replica
that gets SIGTERM turns unready, HAProxy sends its new streams elsewhere, and the stream it holds
drains to its last final."""

from __future__ import annotations

import asyncio
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

import pytest
from conftest import SPEECH

from speechpipe.pipeline.clients.client import stream_file

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


@pytest.fixture(scope="module")
def cluster():
    cmd = [sys.executable, str(ROOT / "deploy" / "local" / "cluster.py"), "--replicas", "2", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--", "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        line = proc.stdout.readline()  # the cluster prints one JSON line once everything is ready
        assert line, f"the cluster exited ({proc.wait(10)}) before it was ready"
        yield json.loads(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0


def test_streams_go_through_haproxy_to_the_replica_with_the_fewest(cluster):
    assert get(f"{cluster['url']}/readyz")[0] == 200
    url = cluster["url"].replace("http://", "ws://") + "/stream"

    async def two():
        first = asyncio.create_task(stream_file(url, JFK, speed=1.0))
        await asyncio.sleep(1.5)
        held = [active(r) for r in cluster["replicas"]]
        second = await stream_file(url, JFK, speed=0)
        return held, await first, second

    held, first, second = asyncio.run(two())
    assert sorted(held) == [0.0, 1.0]  # the first stream is on one replica...
    for result in (first, second):  # ...and both came back whole, through HAProxy
        assert result.end and result.end["reason"] == "stop" and not result.errors
        assert len(result.finals) == result.end["segments"] >= 2
        assert all(f["status"] == "ok" for f in result.finals)


def test_a_replica_stopped_under_a_stream_sends_its_finals_and_new_streams_go_elsewhere(cluster):
    """SIGTERM drains a replica: the stream it holds gets a final for every segment it began and
    ``end`` with reason ``shutdown`` (close 1001), never a lost final; the rest of that stream's
    audio needs the client to resume on another replica (issue 25's next step). New streams go
    to the other replica."""
    url = cluster["url"].replace("http://", "ws://") + "/stream"

    async def scenario():
        held = asyncio.create_task(stream_file(url, JFK, speed=1.0))  # 11 s in real time
        await asyncio.sleep(3.5)  # past the first segment's end (2.4 s)
        [victim] = [r for r in cluster["replicas"] if active(r) == 1.0]
        os.kill(victim["pid"], signal.SIGTERM)
        # HAProxy checks /readyz every second and takes a replica out after one failed check
        await asyncio.sleep(2.5)
        after = await stream_file(url, JFK, speed=0)
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
