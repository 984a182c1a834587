"""Each stage's errors from the reviews, in the store on SQLite and on a real PostgreSQL server with
real corpus audio: a review scored by stage (ASR errors against the segment's words, words in the
margins as the VAD's cuts, words in an audit of rejected audio as its misses) and summed per
variant in ``by_stage``; an after-margin that extends a clip once, whatever step a retry finds it
at; a version 2 database migrated to version 3 with its rows; and the spool of an older
speechpipe, which gains its ``kind`` column and moves an item and its margin in order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import asdict, replace

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import create_engine, text
from test_review_store import AUDIO, REFERENCE, T0, downgrade, new

from speechpipe.pipeline.review.schema import SCHEMA_VERSION, V3_COLUMNS, V4_COLUMNS
from speechpipe.pipeline.review.service import ReviewService
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings
from speechpipe.pipeline.review.spool import ReviewSpool
from speechpipe.pipeline.review.store import MarginAfter, NewItem, ReviewError, ReviewStore, database_url

pytestmark = pytest.mark.corpus

SR = 16000


def audit(start_s: float, session: str = "s1") -> NewItem:
    """A stretch of rejected audio sent to review (no AI text, a negative key)."""
    return NewItem(
        session=session,
        segment=-1 - round(start_s * 100),
        variant="default",
        level="partial",
        reason="vad_audit",
        start_s=start_s,
        end_s=start_s + AUDIO.size / SR,
        audio=AUDIO,
    )


def review_all(store: ReviewStore, answers: dict, now: float) -> None:
    """Claim every queued item and submit ``answers[segment]`` (text, before, after)."""
    while (item := store.claim("ann", now, 60)) is not None:
        text_, before, after = answers[item.segment]
        store.submit(item.id, text_, item.claim, "ann", now, before, after)


def test_reviews_are_scored_by_stage_and_summed_per_variant(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    store.add(replace(new(0, 0.5), margin_before_s=0.5, margin_after_s=1.0), T0)
    store.add(new(1, 0.6), T0)
    store.add(replace(new(2, None), variant="green", transcripts=[]), T0)  # level human: no AI text
    store.add(audit(20.0), T0 - 2)
    store.add(audit(40.0), T0 - 1)
    first = store.claim("ann", T0 + 1, 60)
    assert first.reason == "vad_audit"  # no confidence, and the oldest: first in line
    with pytest.raises(ReviewError) as bad:
        store.submit(first.id, "", first.claim, "ann", T0 + 1, before="words")
    assert bad.value.status == 400
    store.release(first.id, first.claim, T0 + 1)
    review_all(
        store,
        {
            0: (REFERENCE, "well then", ""),  # two words the VAD cut off before the segment
            1: (REFERENCE, "", ""),
            2: ("the human alone", "", "one more"),
            -2001: ("is anyone there", "", ""),  # speech the VAD missed
            -4001: ("", "", ""),  # no speech: the VAD was right
        },
        T0 + 2,
    )
    done = {i.segment: i for i in store.session("s1")}
    assert (done[0].text_before, done[0].text_after, done[0].vad_cut_words) == ("well then", "", 2)
    assert (done[0].asr_errors, done[0].asr_words) == (3, 8)  # as review_ai scores it
    assert (done[0].margin_before_s, done[0].margin_after_s) == (0.5, 1.0)
    assert (done[2].asr_errors, done[2].asr_words, done[2].vad_cut_words) == (None, None, 2)
    assert (done[-2001].vad_miss_words, done[-2001].vad_cut_words, done[-4001].vad_miss_words) == (3, None, 0)
    stats = store.stats(T0 + 3)
    assert stats["variants"]["default"] == {"items": 2, "errors": 6, "words": 16, "wer": 6 / 16}  # kept
    assert stats["by_stage"] == {
        "default": {
            "segments": 2,
            "asr_segments": 2,
            "asr_errors": 6,
            "ref_words": 16,
            "asr_wer": 6 / 16,
            "vad_cuts": 2,
            "vad_cut_segments": 1,
            "vad_audits": 2,
            "vad_misses": 3,
            "vad_miss_items": 1,
            "per_100_segments": {"asr_errors": 300.0, "cuts": 100.0, "misses": 150.0},
        },
        "green": {
            "segments": 1,
            "asr_segments": 0,
            "asr_errors": 0,
            "ref_words": 0,
            "asr_wer": None,
            "vad_cuts": 2,
            "vad_cut_segments": 1,
            "vad_audits": 0,
            "vad_misses": 0,
            "vad_miss_items": 0,
            "per_100_segments": {"asr_errors": None, "cuts": 200.0, "misses": None},
        },
    }
    store.close()


def test_an_after_margin_extends_the_clip_once_whatever_step_a_retry_finds(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    stream = np.concatenate([AUDIO, AUDIO[: SR * 3]])  # the segment is AUDIO[SR : SR * 2] of this stream
    before, after = stream[: SR // 2], stream[SR * 2 : SR * 2 + SR // 4]  # 0.25 s had come by the final
    clip = np.concatenate([before, stream[SR : SR * 2], after])
    head = replace(new(0, 0.5), start_s=1.0, end_s=2.0, audio=clip, margin_before_s=0.5, margin_after_s=0.25)
    item = store.add(head, T0)
    rest = MarginAfter("s1", 0, "default", stream[SR * 2 + SR // 4 : SR * 3], 0.25, 1.0)
    assert store.add_margin(rest)
    path = store.audio_path(store.get(item.id))
    audio, _ = sf.read(path, dtype="float32")
    assert audio.size == SR // 2 + SR + SR and store.get(item.id).margin_after_s == 1.0
    assert np.max(np.abs(audio - np.concatenate([before, stream[SR : SR * 3]]))) < 1 / 32767 + 1e-6
    assert store.add_margin(rest) and sf.info(path).frames == audio.size  # a retry: nothing twice
    # A retry after the file was replaced and before the row said so: the row only.
    engine = create_engine(database_url(review_db))
    with engine.begin() as conn:
        conn.execute(text("UPDATE review_items SET margin_after_s = 0.25"))
    engine.dispose()
    assert store.add_margin(rest) and sf.info(path).frames == audio.size
    assert store.get(item.id).margin_after_s == 1.0
    # Nothing to extend: an unknown segment, or a clip of another length than the margin follows.
    assert not store.add_margin(replace(rest, segment=7))
    assert not store.add_margin(replace(rest, after_from_s=0.5, margin_after_s=1.5))
    assert store.get(item.id).margin_after_s == 1.0
    store.close()


def test_a_version_2_database_gains_the_stage_columns_and_keeps_its_reviews(review_db, tmp_path):
    store = ReviewStore(review_db, tmp_path / "audio")
    old = store.add(new(0, 0.5, session="before"), T0)
    claimed = store.claim("ann", T0, 60)
    store.submit(claimed.id, REFERENCE, claimed.claim, "ann", T0)
    store.close()
    downgrade(review_db, (*V3_COLUMNS, *V4_COLUMNS), 2)  # back to version 2's shape
    again = ReviewStore(review_db, tmp_path / "audio")
    assert again.schema_was == 2
    kept = again.get(old.id)
    assert (kept.state, kept.text, kept.margin_before_s, kept.vad_cut_words) == ("done", REFERENCE, None, None)
    stats = again.stats(T0 + 1)
    assert stats["variants"]["default"]["items"] == 1 and stats["by_stage"] == {}  # not scored by stage
    again.add(replace(new(0, 0.5, session="after"), margin_before_s=1.0), T0 + 1)
    claimed = again.claim("ann", T0 + 1, 60)
    again.submit(claimed.id, REFERENCE, claimed.claim, "ann", T0 + 1, after="and more")
    by_stage = again.stats(T0 + 2)["by_stage"]["default"]
    assert (by_stage["segments"], by_stage["vad_cuts"], by_stage["asr_errors"]) == (1, 2, 3)
    assert again.session("after")[0].margin_before_s == 1.0
    again.close()
    current = ReviewStore(review_db, tmp_path / "audio")
    assert current.schema_was == SCHEMA_VERSION
    current.close()


def test_an_older_spool_gains_its_kind_and_moves_an_item_then_its_margin(tmp_path):
    """A spool written by a speechpipe before margins (no ``kind`` column, an item without margin
    fields) is opened by this one, which spools the item's after-margin behind it; a service
    moves both in order, and the clip in the store holds the margin."""
    spool_file, db = tmp_path / "spool.db", str(tmp_path / "reviews.db")
    doc = asdict(new(0, 0.5, session="old"))
    doc.pop("audio")
    for key in ("margin_before_s", "margin_after_s"):
        doc.pop(key)
    old = sqlite3.connect(spool_file)
    old.execute(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, doc TEXT NOT NULL,"
        " audio BLOB NOT NULL, spooled_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)"
    )
    old.execute(
        "INSERT INTO spool (key, doc, audio, spooled_at) VALUES (?, ?, ?, ?)",
        ("old/0/default", json.dumps(doc), AUDIO.astype(np.float32).tobytes(), T0),
    )
    old.commit()
    old.close()
    spool = ReviewSpool(spool_file)
    more = MarginAfter("old", 0, "default", AUDIO[:SR], 0.0, 1.0)
    assert spool.put(more, T0 + 1) and not spool.put(more, T0 + 2)  # once
    kinds = [type(s.item).__name__ for s in spool.head()]
    assert kinds == ["NewItem", "MarginAfter"]
    spool.close()

    async def move() -> ReviewService:
        service = ReviewService(
            ReviewStore(db, tmp_path / "audio"),
            AutomationSettings(level="partial"),
            ReviewSettings(db=db, spool=str(spool_file)),
            push=lambda session, message: False,
            clock=lambda: T0 + 10,
            spool=ReviewSpool(spool_file),
        )
        await service.upkeep(T0 + 10)
        await service.flush()
        return service

    service = asyncio.run(move())
    [row] = service.store.session("old")
    assert len(service.spool) == 0 and service.counters.queued == 1 and service.counters.margins == 1
    assert (row.margin_before_s, row.margin_after_s) == (0.0, 1.0)
    assert sf.info(service.store.audio_path(row)).frames == AUDIO.size + SR
    service.store.close()
