"""The review queue's store on SQLite and on a real PostgreSQL server, with real corpus audio:
order of claims, no item twice, expiry, release (and who released it, held from them a while),
submit and its scoring, neighbouring segments, retention, migrations and a restart that loses
nothing."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from conftest import SPEECH
from sqlalchemy import create_engine, text

from speechpipe.pipeline.review.policy import VAD_AUDIT, audit_key
from speechpipe.pipeline.review.schema import SCHEMA_VERSION, V4_COLUMNS
from speechpipe.pipeline.review.store import AiText, NewItem, ReviewError, ReviewStore, database_url, given_back_by
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


def test_an_item_given_back_is_not_handed_straight_back_to_its_reviewer(review_db, tmp_path):
    """Issue 28: after Skip or Esc the page claimed the same item again at once. An item a reviewer
    released is held from them for ``hold_s`` while anything else is free; with nothing else it
    comes back only when they ask (``take_back``), and the rule is theirs alone."""
    store = ReviewStore(review_db, tmp_path / "audio")
    a, b = store.add(new(0, 0.2), T0), store.add(new(1, 0.5), T0)
    first = store.claim("ann", T0 + 1, 60, hold_s=60)
    assert first.id == a.id and (first.released_by, first.released_at) == (None, None)
    skipped = store.release(a.id, first.claim, T0 + 2)
    assert (skipped.state, skipped.released_by, skipped.released_at) == ("queued", "ann", T0 + 2)
    second = store.claim("ann", T0 + 3, 60, hold_s=60)
    assert second.id == b.id  # a is the lowest confidence, but ann just put it down
    store.release(b.id, second.claim, T0 + 4)
    assert store.claim("ann", T0 + 5, 60, hold_s=60, take_back=False) is None  # both held, both waiting
    assert [i.state for i in store.queue(T0 + 5)] == ["queued", "queued"]
    back = store.claim("ann", T0 + 5, 60, hold_s=60)  # nothing else free, and ann asks: it comes back
    assert back.id == a.id and given_back_by(back, "ann", T0 + 5, 60) and not given_back_by(back, "bob", T0 + 5, 60)
    other = store.claim("bob", T0 + 5, 60, hold_s=60, take_back=False)  # not held from anyone else
    assert other.id == b.id and not given_back_by(other, "bob", T0 + 5, 60)
    store.release(a.id, back.claim, T0 + 6)
    store.close()
    # The hold is in the database (every replica's claims keep it, and a restart), and it runs out.
    again = ReviewStore(review_db, tmp_path / "audio")
    assert again.claim("ann", T0 + 65, 60, hold_s=60, take_back=False) is None
    later = again.claim("ann", T0 + 66, 60, hold_s=60, take_back=False)
    assert later.id == a.id and not given_back_by(later, "ann", T0 + 66, 60)
    # the one who gives it back is named where the page renamed its reviewer since the claim
    assert again.release(a.id, later.claim, T0 + 67, reviewer="ann at home").released_by == "ann at home"
    again.close()


def test_neighbours_are_the_segments_around_an_item_in_its_session_and_variant(review_db, tmp_path):
    """What the page shows above and below the text box: the items of segment - 1 and + 1 of the
    same session and variant; around an audit of rejected audio, the nearest segments in time.
    Another session, another variant and the audits (whose keys are negative) are no neighbours."""
    store = ReviewStore(review_db, tmp_path / "audio")
    length = AUDIO.size / 16000

    def at(segment: int, session: str = "s1", **more) -> NewItem:
        item = replace(new(segment, 0.5, session=session), start_s=segment * 10.0, end_s=segment * 10.0 + length)
        return replace(item, **more)

    audit = {"reason": VAD_AUDIT, "draft": None, "confidence": None, "transcripts": []}
    items = {k: store.add(at(k), T0 + k) for k in (0, 1, 2, 4)}
    store.add(at(3, session="s2"), T0)
    green = store.add(at(5, variant="green"), T0)
    first_audit = store.add(replace(at(0), segment=audit_key(0), start_s=0.0, end_s=0.0, **audit), T0)
    gap = store.add(replace(at(0), segment=audit_key(25 * 16000), start_s=25.0, end_s=28.0, **audit), T0)
    assert first_audit.segment == -1  # the key segment 0's "segment - 1" would meet
    claimed = store.claim("ann", T0 + 10, 60)
    while claimed.id != items[1].id:
        claimed = store.claim("ann", T0 + 10, 60)
    store.submit(items[1].id, REFERENCE, claimed.claim, "ann", T0 + 11)

    def around(item) -> tuple:
        return tuple(n.segment if n is not None else None for n in store.neighbours(item))

    assert around(items[0]) == (None, 1)
    assert around(items[1]) == (0, 2) and around(items[2]) == (1, None)  # segment 3 is another session's
    assert around(items[4]) == (None, None)  # segment 5 is another variant's
    assert around(green) == (None, None)
    assert around(gap) == (2, 4) and around(first_audit) == (None, 0)
    before, _ = store.neighbours(items[2])
    assert (before.state, before.text) == ("done", REFERENCE)  # what the reviewer typed, once reviewed
    store.close()


def downgrade(db: str, columns, version: int) -> None:
    """Put a store's database back in an older version's shape: ``columns`` dropped (what the
    versions after ``version`` added), the schema version set to ``version``."""
    engine = create_engine(database_url(db))
    with engine.begin() as conn:
        for column in columns:
            conn.execute(text(f"ALTER TABLE review_items DROP COLUMN {column}"))
        conn.execute(text(f"UPDATE speechpipe_schema SET version = {int(version)}"))
    engine.dispose()


def test_a_version_3_database_gains_who_gave_an_item_back_and_keeps_its_items(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    old = store.add(new(0, 0.5), T0)
    store.close()
    downgrade(review_db, V4_COLUMNS, 3)
    again = ReviewStore(review_db, tmp_path / "audio")
    assert again.schema_was == 3
    kept = again.get(old.id)
    assert (kept.state, kept.released_by, kept.released_at) == ("queued", None, None)
    claimed = again.claim("ann", T0 + 1, 60, hold_s=60)
    assert again.release(old.id, claimed.claim, T0 + 2).released_by == "ann"
    again.close()
