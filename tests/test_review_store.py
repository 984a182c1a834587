"""The review queue's store on SQLite and on a real PostgreSQL server, with real corpus audio:
order of claims, no item twice, expiry, release, submit and its scoring, retention, migrations and
a restart that loses nothing."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from conftest import SPEECH
from sqlalchemy import create_engine, text

from speechpipe.pipeline.review.schema import SCHEMA_VERSION
from speechpipe.pipeline.review.store import AiText, NewItem, ReviewError, ReviewStore, database_url
from speechpipe.stages.audio import load_audio

pytestmark = pytest.mark.corpus

AUDIO, _ = load_audio(SPEECH / "cmuarctic_aew_a0001.wav")
REFERENCE = "Author of the danger trail, Philip Steels, etc."
T0 = 1_800_000_000.0


def new(
    segment: int, confidence: float | None, session: str = "s1", text_: str = "Author of the danger trail"
) -> NewItem:
    return NewItem(
        session=session,
        segment=segment,
        variant="default",
        level="partial",
        reason="low_confidence",
        start_s=segment * 3.0,
        end_s=segment * 3.0 + AUDIO.size / 16000,
        audio=AUDIO,
        draft=text_,
        confidence=confidence,
        transcripts=[AiText("default", "primary", text_, confidence), AiText("green", "shadow", "Author of the")],
    )


def test_items_keep_their_audio_and_are_claimed_lowest_confidence_first(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    a = store.add(new(0, 0.9), T0)
    b = store.add(new(1, 0.4), T0 + 1)
    c = store.add(new(2, 0.4), T0 + 2)
    assert store.add(new(1, 0.1), T0 + 3).id == b.id  # the same segment twice is one item
    audio, rate = sf.read(store.audio_path(a), dtype="float32")
    assert rate == 16000 and audio.size == AUDIO.size and np.max(np.abs(audio - AUDIO)) < 1 / 32767 + 1e-6
    assert [i.id for i in store.queue(T0 + 5)] == [b.id, c.id, a.id]
    first = store.claim("ann", T0 + 5, claim_s=60)
    second = store.claim("bob", T0 + 5, claim_s=60)
    assert (first.id, second.id) == (b.id, c.id) and first.claim != second.claim
    assert first.claimed_until == T0 + 65 and first.state == "claimed"
    assert store.claim("cy", T0 + 5, 60).id == a.id and store.claim("cy", T0 + 5, 60) is None
    # a claim that ran out is free again; the late reviewer can no longer release it
    again = store.claim("dee", T0 + 70, 60)
    assert again.id == b.id and again.claim != first.claim
    with pytest.raises(ReviewError) as lost:
        store.release(b.id, first.claim, T0 + 71)
    assert lost.value.status == 409 and lost.value.code == "claim_lost"
    assert store.release(b.id, again.claim, T0 + 71).state == "queued"
    store.close()


def test_a_submitted_review_scores_every_variant_and_survives_a_restart(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    item = store.add(new(0, 0.5), T0)
    store.add(new(1, 0.6), T0)
    with pytest.raises(ReviewError) as unclaimed:
        store.submit(item.id, REFERENCE, None, "ann", T0 + 1)
    assert unclaimed.value.code == "not_claimed"
    claimed = store.claim("ann", T0 + 1, 60)
    done = store.submit(claimed.id, REFERENCE, claimed.claim, "ann", T0 + 90)  # past the claim, nobody took it
    assert (done.state, done.text, done.reviewer, done.done_at) == ("done", REFERENCE, "ann", T0 + 90)
    with pytest.raises(ReviewError) as twice:
        store.submit(claimed.id, "again", None, "ann", T0 + 91)
    assert twice.value.code == "already_reviewed"
    scored = {t["variant"]: (t["errors"], t["words"]) for t in store.transcripts(done.id)}
    assert scored == {"default": (3, 8), "green": (5, 8)}  # "Philip Steels etc" and more missing
    stats = store.stats(T0 + 100)
    assert (stats["queue"], stats["done"], stats["claimed"]) == (1, 1, 0)
    assert stats["oldest_age_s"] == 100.0
    assert stats["variants"]["default"] == {"items": 1, "errors": 3, "words": 8, "wer": 3 / 8}
    store.close()
    # A restart (a new process on the same database and folder) loses nothing.
    again = ReviewStore(review_db, tmp_path / "audio")
    assert again.schema_was == SCHEMA_VERSION
    assert [i.segment for i in again.queue(T0 + 200)] == [1]
    assert again.get(done.id).text == REFERENCE and again.audio_path(again.get(done.id)).is_file()
    assert again.reviewed() == [{"variant": "default", "confidence": 0.5, "errors": 3, "words": 8}]
    again.close()


def test_reviewers_racing_on_two_replicas_never_share_an_item(review_db, tmp_path):
    replicas = [ReviewStore(review_db, tmp_path / "audio"), ReviewStore(review_db, tmp_path / "audio")]
    for k in range(24):
        replicas[0].add(new(k, k / 24, session="race"), T0 + k)
    got: list[list[str]] = [[] for _ in range(4)]

    def reviewer(n: int) -> None:
        store = replicas[n % 2]
        while (item := store.claim(f"r{n}", T0 + 100, 60)) is not None:
            got[n].append(item.id)

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [i for g in got for i in g]
    assert len(ids) == 24 and len(set(ids)) == 24
    for store in replicas:
        store.close()


def test_retention_deletes_old_audio_and_expires_what_was_never_reviewed(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    old = store.add(new(0, 0.3), T0)
    reviewed = store.add(new(1, 0.2), T0)
    fresh = store.add(new(2, 0.9), T0 + 9 * 86400)
    claim = store.claim("ann", T0 + 10, 60)
    assert claim.id == reviewed.id
    store.submit(reviewed.id, REFERENCE, claim.claim, "ann", T0 + 20)
    paths = {i.id: store.audio_path(store.get(i.id)) for i in (old, reviewed, fresh)}
    assert store.purge(T0 + 10 * 86400, keep_days=7) == 2
    assert not paths[old.id].exists() and not paths[reviewed.id].exists() and paths[fresh.id].exists()
    assert store.get(old.id).state == "expired" and store.get(old.id).audio is None
    assert store.get(reviewed.id).state == "done" and store.get(reviewed.id).text == REFERENCE
    assert [i.id for i in store.queue(T0 + 10 * 86400)] == [fresh.id]
    store.close()


def test_a_database_of_a_newer_schema_is_refused(review_db, tmp_path):
    ReviewStore(review_db, tmp_path / "audio").close()
    url = review_db if "://" in review_db else f"sqlite:///{review_db}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE speechpipe_schema SET version = 99"))
    engine.dispose()
    with pytest.raises(ValueError, match="schema version 99, newer"):
        ReviewStore(review_db, tmp_path / "audio")


def test_a_version_1_database_gains_the_owner_column_and_keeps_its_items(review_db, tmp_path):
    """A database written before owners were stored (version 1: no ``owner`` column) is migrated
    on open: its items are kept, ownerless, and new items keep the principal that opened their
    session."""
    store = ReviewStore(review_db, tmp_path / "audio")
    old = store.add(new(0, 0.5, session="before"), T0)
    store.close()
    engine = create_engine(database_url(review_db))
    with engine.begin() as conn:  # back to version 1's shape
        conn.execute(text("ALTER TABLE review_items DROP COLUMN owner"))
        conn.execute(text("UPDATE speechpipe_schema SET version = 1"))
    engine.dispose()
    again = ReviewStore(review_db, tmp_path / "audio")
    assert again.schema_was == 1
    assert again.get(old.id).owner is None and again.get(old.id).session == "before"
    again.add(replace(new(0, 0.5, session="after"), owner="alice"), T0 + 1)
    assert [i.owner for i in again.session("after")] == ["alice"]
    again.close()
    current = ReviewStore(review_db, tmp_path / "audio")
    assert current.schema_was == SCHEMA_VERSION
    current.close()


def test_replicas_starting_together_on_a_new_postgresql_database_migrate_it_once(postgres_url):
    """Three replicas of a cluster started at once on a fresh database: before the migration held
    an advisory lock, two ``CREATE TABLE speechpipe_schema`` met in PostgreSQL's catalogue and one
    replica exited with a duplicate key (issue 25's local cluster)."""
    import pg

    from speechpipe.pipeline.review.schema import migrate

    with pg.fresh_database(postgres_url) as url:
        engines = [create_engine(url) for _ in range(4)]
        start, was, failed = threading.Barrier(len(engines)), [], []

        def replica(engine) -> None:
            start.wait()
            try:
                was.append(migrate(engine))
            except Exception as exc:  # noqa: BLE001  # collected: the assertion says which
                failed.append(exc)

        threads = [threading.Thread(target=replica, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for e in engines:
            e.dispose()
    assert not failed, failed
    assert sorted(was) == [0] + [SCHEMA_VERSION] * (len(engines) - 1)  # one migrated, the others found it done
