"""The review queue in a real database: SQLite by default, PostgreSQL where several replicas
share it, through one SQLAlchemy Core code path; the segments' audio as FLAC under a data
directory, deleted after the retention period.

Claims are a compare-and-set: an item is taken by an ``UPDATE ... WHERE`` that only matches
while it is free (queued, or claimed with the claim expired), so two reviewers, on one server or
on several sharing a database, never hold the same item. An item given back (skipped, or put
down) remembers who gave it back and when, so that reviewer is handed the others first for a
while (:meth:`ReviewStore.claim`). Times are passed in (Unix seconds).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from sqlalchemy import and_, case, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import IntegrityError

from speechpipe.pipeline.evaluate.quality import score
from speechpipe.pipeline.review.policy import VAD_AUDIT
from speechpipe.pipeline.review.schema import ai, items, migrate
from speechpipe.pipeline.review.stage_scores import by_stage, stage_columns
from speechpipe.stages.pcm import SAMPLE_RATE

#: the longest human transcript taken, in characters.
MAX_TEXT = 20000
QUEUED, CLAIMED, DONE, EXPIRED = "queued", "claimed", "done", "expired"
#: the suffix of an audio file written but not yet owned by a committed row.
TMP = ".tmp"


class ReviewError(Exception):
    """A review request that cannot be carried out; ``status`` is its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class AiText:
    """One variant's transcript of a segment."""

    variant: str
    role: str
    text: str
    confidence: float | None = None


@dataclass
class NewItem:
    """A segment sent to review, as the live stream hands it over."""

    session: str
    segment: int
    variant: str
    level: str
    reason: str
    start_s: float
    end_s: float
    audio: np.ndarray = field(repr=False)  # 16 kHz mono float32
    draft: str | None = None
    confidence: float | None = None
    transcripts: list[AiText] = field(default_factory=list)
    owner: str | None = None  # the principal that opened the session (its name)
    margin_before_s: float = 0.0  # the clip's audio before the segment
    margin_after_s: float = 0.0  # and after it


@dataclass
class MarginAfter:
    """More audio after an item's segment, as the live stream hands it over: its clip held
    ``after_from_s`` after the segment; ``audio`` follows, and then it holds ``margin_after_s``."""

    session: str
    segment: int
    variant: str
    audio: np.ndarray = field(repr=False)
    after_from_s: float
    margin_after_s: float


@dataclass(frozen=True)
class Item:
    """A row of the queue."""

    id: str
    session: str
    segment: int
    variant: str
    level: str
    reason: str
    start_s: float
    end_s: float
    draft: str | None
    confidence: float | None
    created_at: float
    state: str
    claim: str | None
    claimed_until: float | None
    text: str | None
    reviewer: str | None
    done_at: float | None
    audio: str | None
    owner: str | None = None  # the principal that opened the session (None: not recorded)
    margin_before_s: float | None = None  # the clip's audio around the segment (None: none)
    margin_after_s: float | None = None
    text_before: str | None = None  # what the reviewer heard in the margins
    text_after: str | None = None
    asr_errors: int | None = None  # the review scored by stage (None: not, or not that stage)
    asr_words: int | None = None
    vad_cut_words: int | None = None
    vad_miss_words: int | None = None
    released_by: str | None = None  # who last skipped or gave it back, and when (None: nobody since)
    released_at: float | None = None

    @classmethod
    def of(cls, row: RowMapping) -> Item:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


def samples(seconds: float) -> int:
    """A stream time or duration as 16 kHz samples (times are sample positions / 16000)."""
    return round(seconds * SAMPLE_RATE)


def given_back_by(item: Item, reviewer: str, now: float, hold_s: float) -> bool:
    """Whether ``reviewer`` skipped or gave ``item`` back less than ``hold_s`` before ``now``: while
    so, a claim of theirs takes any other free item first."""
    return item.released_by == reviewer and item.released_at is not None and item.released_at > now - hold_s


def _count(condition) -> object:
    return func.sum(case((condition, 1), else_=0))


_AUDIT = items.c.reason == VAD_AUDIT
#: each stage's errors per variant, over the reviews scored by stage (:func:`by_stage`)
_BY_STAGE = (
    select(
        items.c.variant,
        _count(and_(~_AUDIT, items.c.vad_cut_words.is_not(None))).label("segments"),
        _count(items.c.asr_words.is_not(None)).label("asr_segments"),
        func.sum(items.c.asr_errors).label("asr_errors"),
        func.sum(items.c.asr_words).label("asr_words"),
        func.sum(items.c.vad_cut_words).label("vad_cuts"),
        _count(items.c.vad_cut_words > 0).label("vad_cut_segments"),
        _count(and_(_AUDIT, items.c.vad_miss_words.is_not(None))).label("vad_audits"),
        func.sum(items.c.vad_miss_words).label("vad_misses"),
        _count(items.c.vad_miss_words > 0).label("vad_miss_items"),
    )
    .where(items.c.state == DONE, or_(items.c.vad_cut_words.is_not(None), items.c.vad_miss_words.is_not(None)))
    .group_by(items.c.variant)
)


def database_url(db: str) -> str:
    """``--db``: a path (SQLite, created on first use) or a URL; ``postgresql://`` gets psycopg."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def default_data_dir(db: str) -> Path:
    """Where the audio of ``--db`` is kept when ``[review] data_dir`` is unset: ``review-audio``
    beside a SQLite file, in the working directory for a database URL."""
    if "://" in db:
        return Path("review-audio")
    return Path(db).expanduser().resolve().parent / "review-audio"


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi, _record) -> None:  # WAL: readers do not wait for the writer
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class ReviewStore:
    """See the module docstring.

    Args:
        db: a SQLite path or a database URL (see :func:`database_url`).
        data_dir: where the segments' FLAC files go (created); None: rows only (tools that read).
    """

    def __init__(self, db: str, data_dir: str | Path | None = None) -> None:
        self.url = database_url(db)
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = _engine(self.url)
        self.schema_was = migrate(self.engine)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------------------

    def add(self, new: NewItem, now: float) -> Item:
        """Queue ``new`` (idempotent: a segment already queued, the same session and index, is
        returned as it is, so a retry after a lost answer adds nothing).

        The audio and its row land as one unit: the FLAC is written under a temporary name, the
        row committed, and only then is the file renamed to the name the row gives. A failure
        before the commit deletes the temporary file; a crash leaves at most a temporary file,
        which :meth:`sweep` renames when its row did commit and deletes when it did not. So no
        audio file is ever without its row for longer than the sweeper's grace period."""
        if self.data_dir is None:
            raise ValueError("this store was opened without a data directory: it cannot keep audio")
        item_id = uuid.uuid4().hex
        rel = Path(f"{int(now // 86400)}") / f"{item_id}.flac"
        path = self.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(TMP)
        sf.write(tmp, np.clip(new.audio, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        row = {
            "id": item_id,
            "session": new.session,
            "segment": new.segment,
            "variant": new.variant,
            "level": new.level,
            "reason": new.reason,
            "start_s": new.start_s,
            "end_s": new.end_s,
            "draft": new.draft,
            "confidence": new.confidence,
            "created_at": now,
            "state": QUEUED,
            "audio": rel.as_posix(),
            "owner": new.owner,
            "margin_before_s": new.margin_before_s,
            "margin_after_s": new.margin_after_s,
        }
        try:
            known = self._insert(new, row)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if known is None:
            os.replace(tmp, path)
            return self.get(item_id)
        # Already queued: by an earlier try whose answer was lost (it may have died before its
        # rename, so its audio is put in place from ours), or by another replica.
        there = self.data_dir / known.audio if known.audio else None
        if there is not None and not there.exists():
            there.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, there)
        else:
            tmp.unlink(missing_ok=True)
        return known

    def _insert(self, new: NewItem, row: dict) -> Item | None:
        """Insert ``row`` and its transcripts in one transaction; the item already there (None
        when the insert went in)."""
        same = select(items).where(items.c.session == new.session, items.c.segment == new.segment)
        try:
            with self.engine.begin() as conn:
                known = conn.execute(same).first()
                if known is not None:
                    return Item.of(known._mapping)
                conn.execute(insert(items).values(row))
                for t in new.transcripts:
                    conn.execute(
                        insert(ai).values(
                            item=row["id"], variant=t.variant, role=t.role, text=t.text, confidence=t.confidence
                        )
                    )
        except IntegrityError:  # inserted meanwhile by another writer (a replica sharing the store)
            with self.engine.connect() as conn:
                known = conn.execute(same).first()
            if known is None:
                raise
            return Item.of(known._mapping)
        return None

    def add_margin(self, more: MarginAfter) -> bool:
        """Append ``more`` to its item's clip (idempotent: a retry after the file or the row was
        done does the rest only). The new clip is written under the temporary name and renamed
        over the old one, then the row says how much after-margin it holds; the lengths tell
        which step a retry is at. False when there is nothing to extend (no such item, its audio
        gone, or a clip that is not the one the margin follows)."""
        if self.data_dir is None:
            raise ValueError("this store was opened without a data directory: it cannot keep audio")
        same = (items.c.session == more.session, items.c.segment == more.segment)
        with self.engine.connect() as conn:
            row = conn.execute(select(items).where(*same)).first()
        item = Item.of(row._mapping) if row is not None else None
        if item is None or item.audio is None or item.variant != more.variant:
            return False
        if (item.margin_after_s or 0.0) >= more.margin_after_s:
            return True  # done already (a retry)
        path = self.data_dir / item.audio
        if not path.is_file():
            return False
        base = samples(item.margin_before_s or 0.0) + samples(item.end_s) - samples(item.start_s)
        frames = sf.info(path).frames
        if frames == base + samples(more.after_from_s):
            old, _ = sf.read(path, dtype="float32")
            tmp = path.with_suffix(TMP)
            clip = np.concatenate([old, np.clip(more.audio, -1, 1).astype(np.float32)])
            sf.write(tmp, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            os.replace(tmp, path)
        elif frames != base + samples(more.after_from_s) + more.audio.size:
            return False
        with self.engine.begin() as conn:
            conn.execute(update(items).where(*same).values(margin_after_s=more.margin_after_s))
        return True

    def sweep(self, now: float, grace_s: float) -> int:
        """Remove the audio files no row owns that are older than ``grace_s`` (by their
        modification time against ``now``): leftovers of a crash between a file and its row, or of
        an older speechpipe that wrote the file first. A temporary file whose row did commit is
        renamed into place instead. Returns how many files were removed."""
        if self.data_dir is None:
            raise ValueError("this store was opened without a data directory")
        found: dict[str, list[Path]] = {}
        for day in self.data_dir.iterdir():
            if not (day.is_dir() and day.name.isdigit()):
                continue
            for f in day.iterdir():
                if f.suffix in (".flac", TMP) and f.stat().st_mtime < now - grace_s:
                    found.setdefault(f.stem, []).append(f)
        owned: dict[str, str | None] = {}
        ids = sorted(found)
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                owned.update(conn.execute(select(items.c.id, items.c.audio).where(items.c.id.in_(chunk))).all())
        removed = 0
        for item_id, files in found.items():
            rel = owned.get(item_id)
            for f in files:
                final = self.data_dir / rel if rel else None
                if f.suffix == TMP and final is not None and final.with_suffix(TMP) == f and not final.exists():
                    os.replace(f, final)
                elif item_id not in owned or rel is None or self.data_dir / rel != f:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed

    def claim(
        self, reviewer: str, now: float, claim_s: float, hold_s: float = 0.0, take_back: bool = True
    ) -> Item | None:
        """The next free item for ``reviewer`` (lowest confidence first, then oldest), claimed until
        ``now + claim_s``; None when the queue is empty.

        An item ``reviewer`` skipped or gave back less than ``hold_s`` ago (:func:`given_back_by`)
        is taken only when no other item is free, and then only with ``take_back`` (without it
        the answer is None, though that item waits): a reviewer who gives an item back is not
        handed it straight back while there is anything else to do."""
        free = or_(items.c.state == QUEUED, and_(items.c.state == CLAIMED, items.c.claimed_until < now))
        not_held = or_(
            items.c.released_by.is_(None),
            items.c.released_by != reviewer,
            items.c.released_at.is_(None),
            items.c.released_at <= now - hold_s,
        )
        order = (func.coalesce(items.c.confidence, -1.0), items.c.created_at, items.c.id)
        for _ in range(20):  # lost races retry with the next candidate
            with self.engine.begin() as conn:
                item_id = conn.execute(select(items.c.id).where(free, not_held).order_by(*order).limit(1)).scalar()
                if item_id is None and take_back:
                    item_id = conn.execute(select(items.c.id).where(free).order_by(*order).limit(1)).scalar()
                if item_id is None:
                    return None
                claim = uuid.uuid4().hex
                taken = conn.execute(
                    update(items)
                    .where(items.c.id == item_id, free)
                    .values(state=CLAIMED, claim=claim, claimed_by=reviewer, claimed_until=now + claim_s)
                ).rowcount
            if taken == 1:
                return self.get(item_id)
        raise ReviewError(503, "busy", "the queue is contended; retry")

    def release(self, item_id: str, claim: str | None, now: float, reviewer: str | None = None) -> Item:
        """Give a claimed item back to the queue (skipped, or put down), noting who gave it back
        (``reviewer``; None: who claimed it) and when: :meth:`claim` hands it to them again only
        when nothing else is free."""
        item = self._claimed(item_id, claim, now)
        with self.engine.begin() as conn:
            conn.execute(
                update(items)
                .where(items.c.id == item.id, items.c.claim == item.claim)
                .values(
                    state=QUEUED,
                    claim=None,
                    claimed_by=None,
                    claimed_until=None,
                    released_by=reviewer if reviewer is not None else items.c.claimed_by,
                    released_at=now,
                )
            )
        return self.get(item_id)

    def submit(
        self,
        item_id: str,
        text: str,
        claim: str | None,
        reviewer: str,
        now: float,
        before: str = "",
        after: str = "",
    ) -> Item:
        """The human transcript of a claimed item: ``text`` the segment's words, ``before`` and
        ``after`` the words heard in the margins (the VAD cut them off). Every variant's
        transcript of it is scored against ``text``, and the review by stage
        (:mod:`.stage_scores`). A claim that expired still counts while nobody else took it."""
        item = self._claimed(item_id, claim, now, expired_ok=True)
        if item.reason == VAD_AUDIT and (before or after):
            raise ReviewError(400, "bad_request", "a vad_audit item has no segment: give everything heard as text")
        with self.engine.begin() as conn:
            transcripts = conn.execute(select(ai).where(ai.c.item == item.id)).mappings().all()
            own = next((t["text"] for t in transcripts if t["variant"] == item.variant), None)
            stages = stage_columns(item.reason, text, before, after, own)
            done = conn.execute(
                update(items)
                .where(items.c.id == item.id, items.c.state == CLAIMED, items.c.claim == item.claim)
                .values(state=DONE, text=text, reviewer=reviewer, done_at=now, claimed_until=None, **stages)
            ).rowcount
            if done != 1:
                raise ReviewError(409, "claim_lost", "the item was claimed by someone else meanwhile")
            for row in transcripts:
                s = score(text, row["text"])
                conn.execute(
                    update(ai)
                    .where(ai.c.item == item.id, ai.c.variant == row["variant"])
                    .values(errors=s.errors, words=s.ref_words)
                )
        return self.get(item_id)

    def _claimed(self, item_id: str, claim: str | None, now: float, expired_ok: bool = False) -> Item:
        item = self.get(item_id)
        if item is None:
            raise ReviewError(404, "not_found", f"no review item {item_id!r}")
        if item.state == DONE:
            raise ReviewError(409, "already_reviewed", "the item has been reviewed already")
        if item.state != CLAIMED:
            raise ReviewError(409, "not_claimed", "claim the item first (POST /v1/review/claim)")
        if claim is not None and claim != item.claim:
            raise ReviewError(409, "claim_lost", "the item is claimed by someone else now")
        if not expired_ok and (item.claimed_until or 0) < now:
            raise ReviewError(409, "claim_expired", "the claim has expired")
        return item

    def purge(self, now: float, keep_days: float) -> int:
        """Delete the audio of items older than ``keep_days``; a queued one can no longer be
        reviewed and becomes ``expired``. Returns how many files went."""
        if self.data_dir is None:
            raise ValueError("this store was opened without a data directory")
        cutoff = now - keep_days * 86400
        with self.engine.begin() as conn:
            old = conn.execute(
                select(items.c.id, items.c.audio).where(items.c.created_at < cutoff, items.c.audio.is_not(None))
            ).all()
            for item_id, rel in old:
                (self.data_dir / rel).unlink(missing_ok=True)
                conn.execute(update(items).where(items.c.id == item_id).values(audio=None))
            conn.execute(
                update(items)
                .where(items.c.created_at < cutoff, items.c.state.in_((QUEUED, CLAIMED)))
                .values(state=EXPIRED, claim=None, claimed_by=None, claimed_until=None)
            )
        return len(old)

    # -- reading ------------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(items).where(items.c.id == item_id)).first()
        return Item.of(row._mapping) if row is not None else None

    def audio_path(self, item: Item) -> Path | None:
        return self.data_dir / item.audio if item.audio and self.data_dir is not None else None

    def queue(self, now: float, limit: int = 200) -> list[Item]:
        """What waits for review, in the order claims take it (claimed items included)."""
        order = (func.coalesce(items.c.confidence, -1.0), items.c.created_at, items.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items).where(items.c.state.in_((QUEUED, CLAIMED))).order_by(*order).limit(limit)
            ).all()
        return [Item.of(r._mapping) for r in rows]

    def session(self, session: str) -> list[Item]:
        """Every item of a live session, in segment order (each carries the session's owner, as
        recorded when it was queued)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(items).where(items.c.session == session).order_by(items.c.segment)).all()
        return [Item.of(r._mapping) for r in rows]

    def neighbours(self, item: Item) -> tuple[Item | None, Item | None]:
        """The items of the segments just before and just after ``item`` in its session and
        variant (None where the store has none): indices ``segment - 1`` and ``segment + 1``; for
        a ``vad_audit`` item, the nearest segments ending before it and starting after it. The
        store keeps only the segments sent to review, so at ``partial`` or ``full`` a neighbour
        that went out without review is not here."""
        same = (items.c.session == item.session, items.c.variant == item.variant, items.c.reason != VAD_AUDIT)
        if item.reason == VAD_AUDIT:
            before = select(items).where(*same, items.c.end_s <= item.start_s).order_by(items.c.start_s.desc())
            after = select(items).where(*same, items.c.start_s >= item.end_s).order_by(items.c.start_s)
        else:
            before = select(items).where(*same, items.c.segment == item.segment - 1)
            after = select(items).where(*same, items.c.segment == item.segment + 1)
        with self.engine.connect() as conn:
            rows = [conn.execute(q.limit(1)).first() for q in (before, after)]
        found = [Item.of(r._mapping) if r is not None else None for r in rows]
        return found[0], found[1]

    def transcripts(self, item_id: str) -> list[dict]:
        """Every variant's transcript of an item, with its errors against the human once reviewed."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(ai).where(ai.c.item == item_id)).mappings().all()]

    def stats(self, now: float) -> dict:
        """Queue length, the oldest waiting item's age, claimed and done counts, per variant the
        WER of its transcripts against the humans', and per variant each stage's errors
        (``by_stage``: :func:`~speechpipe.pipeline.review.stage_scores.by_stage`)."""
        with self.engine.connect() as conn:
            states = dict(conn.execute(select(items.c.state, func.count()).group_by(items.c.state)).all())
            oldest = conn.execute(
                select(func.min(items.c.created_at)).where(items.c.state.in_((QUEUED, CLAIMED)))
            ).scalar()
            active = conn.execute(
                select(func.count()).where(items.c.state == CLAIMED, items.c.claimed_until >= now)
            ).scalar()
            per = conn.execute(
                select(ai.c.variant, func.count(), func.sum(ai.c.errors), func.sum(ai.c.words))
                .where(ai.c.errors.is_not(None))
                .group_by(ai.c.variant)
            ).all()
            stages = [dict(r) for r in conn.execute(_BY_STAGE).mappings().all()]
        return {
            "queue": int(states.get(QUEUED, 0) + states.get(CLAIMED, 0)),
            "claimed": int(active or 0),
            "done": int(states.get(DONE, 0)),
            "expired": int(states.get(EXPIRED, 0)),
            "oldest_age_s": round(now - oldest, 3) if oldest is not None else None,
            "variants": {
                v: {"items": int(n), "errors": int(e or 0), "words": int(w or 0), "wer": (e or 0) / w if w else None}
                for v, n, e, w in per
            },
            "by_stage": by_stage(stages),
        }

    def reviewed(self, variant: str | None = None, limit: int | None = None) -> list[dict]:
        """Reviewed items with the primary transcript's confidence and errors (the threshold tool's
        data): ``{"variant", "confidence", "errors", "words"}`` per item that had a confidence, the
        most recent ``limit`` of them where given."""
        q = (
            select(items.c.variant, items.c.confidence, ai.c.errors, ai.c.words)
            .join(ai, and_(ai.c.item == items.c.id, ai.c.variant == items.c.variant))
            .where(items.c.state == DONE, items.c.confidence.is_not(None), ai.c.errors.is_not(None))
        )
        if variant is not None:
            q = q.where(items.c.variant == variant)
        if limit is not None:
            q = q.order_by(items.c.done_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]
