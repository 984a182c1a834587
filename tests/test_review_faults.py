"""Review items when the store fails: a real PostgreSQL stopped under live streams at ``partial``
(every final the clients were told is ``pending`` reaches the queue once it is back, once, with its
audio and no audio without its row; the review API and the dashboard answer 503 JSON with
``Retry-After`` meanwhile), and the SQLite spool read back by a new service after the process that
filled it is gone."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pg
import pytest
import soundfile as sf
from livehelp import ServerThread
from test_review_server import ADMIN, REVIEWER, STREAM, call, live_client_stop_early
from test_review_store import AUDIO, T0, new

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.review.service import RETRY_MAX_S, SWEEP_GRACE_S, ReviewService
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings
from speechpipe.pipeline.review.spool import ReviewSpool
from speechpipe.pipeline.review.store import ReviewStore

pytestmark = pytest.mark.corpus


@pytest.fixture
def cluster():
    """A throwaway PostgreSQL cluster of this test alone (tests/pg.py's, in a folder the server's
    user can enter), which the test stops and starts: ``(cluster, port)``."""
    bindir = pg.server_bindir()
    if bindir is None:
        pytest.skip(pg.SKIP_REASON)
    owner = pg.server_owner()
    root = Path(tempfile.mkdtemp(prefix="speechpipe-pg-faults-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        c = pg.Cluster(bindir, root, None if owner is None else owner.pw_name)
        c.init()
        port = c.start()
        try:
            yield c, port
        finally:
            c.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def files_of(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*/*") if p.is_file())


def get(srv, path: str, token: str):
    """``(status, headers, body)`` of a GET."""
    req = urllib.request.Request(srv.http + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_finals_told_pending_reach_the_queue_after_postgresql_comes_back(engine, noisy_speech, tmp_path, cluster):
    pgc, port = cluster
    data_dir = tmp_path / "audio"
    cfg = Config().with_overrides(
        {
            "automation.level": "partial",
            "automation.review_below": 0.9,
            "review.db": f"postgresql://{pg.SUPERUSER}@127.0.0.1:{port}/postgres",
            "review.data_dir": str(data_dir),
            "review.spool": str(tmp_path / "spool" / "review-spool.db"),
        }
    )
    offset = [0.0]  # the server's clock: the wall clock, moved on by the test
    srv_clock = lambda: time.time() + offset[0]
    third = len(noisy_speech) // 3
    server = ServerThread(engine, config=cfg, token=STREAM, reviewer_token=REVIEWER, admin_token=ADMIN, clock=srv_clock)
    with server as srv:
        service = srv.part("review").service
        out: list[list[dict]] = [[], [], []]

        def stream(i: int) -> None:
            out[i] = asyncio.run(live_client_stop_early(srv.url, noisy_speech[i * third : (i + 1) * third]))

        clients = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        for c in clients:
            c.start()
        pgc.stop()  # under the three live streams
        for c in clients:
            c.join(300)
        srv.call(service.flush())
        pending = {
            (messages[0]["session"], m["segment"])
            for messages in out
            for m in messages
            if m["type"] == "final" and m["review"] == "pending"
        }
        assert all(messages[-1]["type"] == "end" for messages in out)  # the streams were fine
        assert pending and service.waiting() > 0  # items the store could not take wait in the spool

        # While the database is down: JSON 503 with Retry-After, never a bare 500.
        session = out[0][0]["session"]
        for method, path, token in (
            ("POST", "/v1/review/claim", REVIEWER),
            ("GET", "/v1/review/stats", REVIEWER),
            ("GET", "/v1/review/queue", REVIEWER),
            ("GET", "/v1/review/0123456789abcdef/audio", REVIEWER),
            ("POST", "/v1/review/0123456789abcdef", REVIEWER),
            ("POST", "/v1/review/0123456789abcdef/release", REVIEWER),
            ("GET", f"/v1/sessions/{session}", STREAM),
            ("GET", "/dashboard/state", ADMIN),
        ):
            body = {"text": "words", "claim": "x"} if method == "POST" else None
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(
                srv.http + path,
                data=data,
                method=method,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=30)
            e = refused.value
            assert e.code == 503 and int(e.headers["Retry-After"]) > 0, (path, e.code)
            assert e.headers.get_content_type() == "application/json"
            assert json.loads(e.read())["error"] == "store_unavailable", path

        # An audio file left without its row (a crash of an older server) waits for the sweeper.
        day = data_dir / "20000"
        day.mkdir(parents=True, exist_ok=True)
        orphan = day / "feedfacefeedfacefeedfacefeedface.flac"
        sf.write(orphan, AUDIO, 16000, format="FLAC", subtype="PCM_16")

        pgc.start(port)
        offset[0] += max(RETRY_MAX_S, SWEEP_GRACE_S) + 1  # past any backoff and the sweeper's grace
        srv.tick()  # the mover starts again, and the sweeper runs
        srv.call(service.flush())
        assert service.waiting() == 0
        status, queue = call(srv, "GET", "/v1/review/queue")
        assert status == 200
        store = service.store
        rows = [i for s in sorted({s for s, _ in pending}) for i in store.session(s)]
    queued = [(i.session, i.segment) for i in rows]
    assert sorted(queued) == sorted(pending)  # every one told pending, and only once
    assert len({i["id"] for i in queue["items"]}) == len(pending)
    owned = {data_dir / i.audio for i in rows}
    assert all(p.is_file() for p in owned)
    assert files_of(data_dir) == sorted(owned)  # no orphan, no temporary file, the planted one gone
    assert not orphan.exists()


def test_a_new_service_moves_what_a_gone_process_left_in_the_spool(tmp_path):
    """The first process spooled three items and died before moving them, but for one whose row
    had committed just before (its audio still under its temporary name, the spool not told); it
    also left a FLAC without a row. A new service on the same files moves the spool in order, adds
    no duplicate, and its sweeper settles both files."""
    db, data_dir, spool_file = str(tmp_path / "reviews.db"), tmp_path / "audio", tmp_path / "spool.db"
    first = ReviewSpool(spool_file)
    items = [new(i, 0.5, session="gone") for i in range(3)]
    assert all(first.put(item, T0 + i) for i, item in enumerate(items))
    assert not first.put(items[0], T0 + 9)  # the same segment again is the same item
    first.close()
    store = ReviewStore(db, data_dir)
    committed = store.add(items[1], T0 + 1)  # the row went in; the process died before the rename
    final = store.audio_path(committed)
    final.rename(final.with_suffix(".tmp"))
    orphan = final.parent / "0badc0de0badc0de0badc0de0badc0de.flac"
    sf.write(orphan, AUDIO, 16000, format="FLAC", subtype="PCM_16")
    store.close()

    async def restart() -> ReviewService:
        clock = [T0 + 10]
        store = ReviewStore(db, data_dir)
        service = ReviewService(
            store,
            AutomationSettings(level="partial"),
            ReviewSettings(db=db, spool=str(spool_file)),
            push=lambda session, message: False,
            clock=lambda: clock[0],
            spool=ReviewSpool(spool_file),
        )
        await service.upkeep(clock[0])  # a tick: the mover starts; files older than the grace are swept
        await service.flush()
        return service

    service = asyncio.run(restart())
    rows = service.store.session("gone")
    assert [r.segment for r in rows] == [0, 1, 2] and len(service.spool) == 0
    assert [r.created_at for r in rows] == [T0, T0 + 1, T0 + 2]  # queued at the time they were spooled
    assert next(r for r in rows if r.segment == 1).id == committed.id
    assert files_of(data_dir) == sorted(data_dir / r.audio for r in rows)
    for r in rows:
        audio, _ = sf.read(data_dir / r.audio, dtype="float32")
        assert audio.size == AUDIO.size and np.max(np.abs(audio - AUDIO)) < 1 / 32767 + 1e-6
    assert service.counters.queued == 3 and service.counters.store_failures == 0


class PausingSpool(ReviewSpool):
    """A spool whose first empty read waits until told to go on: the moment when the mover has
    found the spool empty in its thread and has not yet stopped."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.found_empty = threading.Event()
        self.go_on = threading.Event()

    def head(self, limit: int):
        rows = super().head(limit)
        if not rows and not self.found_empty.is_set():
            self.found_empty.set()
            self.go_on.wait(30)
        return rows


def test_an_item_spooled_while_the_mover_finds_the_spool_empty_is_moved_in_the_same_flush(tmp_path):
    """A segment handed over while the mover reads an empty spool (its last look, in a worker
    thread) reaches the store without waiting for the next hand-over or tick: the end of a stream's
    last after-margin was left spooled that way (an item with no after-margin in a test's queue)."""
    from speechpipe.pipeline.live.actions import SubmitReview

    db, spool_file = str(tmp_path / "reviews.db"), tmp_path / "spool.db"

    def segment(i: int) -> SubmitReview:
        return SubmitReview(
            i, float(i), i + AUDIO.size / 16000, AUDIO, reason="low_confidence", text="a", draft="a", confidence=0.5
        )

    async def run() -> ReviewService:
        spool = PausingSpool(spool_file)
        service = ReviewService(
            ReviewStore(db, tmp_path / "audio"),
            AutomationSettings(level="partial"),
            ReviewSettings(db=db, spool=str(spool_file)),
            push=lambda session, message: False,
            clock=lambda: T0,
            spool=spool,
        )
        service.enqueue("default", "primary", "s1", segment(0))  # the mover starts, moves it, finds none
        await asyncio.to_thread(spool.found_empty.wait, 30)
        service.enqueue("default", "primary", "s1", segment(1))  # handed over meanwhile
        spool.go_on.set()
        await service.flush()
        return service

    service = asyncio.run(run())
    assert [r.segment for r in service.store.session("s1")] == [0, 1] and len(service.spool) == 0
    assert service.counters.queued == 2
