"""The review store's tables and their versioned migrations (SQLAlchemy Core, one definition for
SQLite and PostgreSQL).

``speechpipe_schema`` holds the version a database is at; :func:`migrate` applies every step
above it in one transaction, so a server of this version upgrades an older database on start,
and refuses a newer one instead of writing into a shape it does not know. On PostgreSQL the
transaction holds an advisory lock first: replicas that start together on a new database migrate
one after the other (at once, one of them failed on a duplicate ``CREATE TABLE``).

Versions: 1, the queue and each variant's transcripts; 2, ``review_items.owner``, the principal
that opened the item's session, so a session's owner may still read it after a restart (the
server's record of owners lives in memory). Rows of version 1 have no owner: their sessions are
answered to reviewers and admins only, as they were. 3, each stage's errors: the margins an
item's clip holds around its segment (``margin_before_s``, ``margin_after_s``), what the reviewer
heard in them (``text_before``, ``text_after``), and the review scored by stage: the ASR's word
errors against the segment's words (``asr_errors`` of ``asr_words``), the VAD's cuts (words in
the margins, ``vad_cut_words``) and misses (words in rejected audio, ``vad_miss_words``). Rows of
earlier versions have none of them (NULL: no margin, not scored by stage). 4, who last gave an
item back and when (``released_by``, ``released_at``): a reviewer is not handed back at once the
item they skipped or gave back (:meth:`~speechpipe.pipeline.review.store.ReviewStore.claim`). Rows
of earlier versions have none (NULL: never given back since).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

#: the version this code writes and reads.
SCHEMA_VERSION = 4

schema = Table("speechpipe_schema", metadata, Column("version", Integer, nullable=False))

#: one segment of one live session waiting for, or done by, a human.
items = Table(
    "review_items",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("session", String(64), nullable=False),
    Column("segment", Integer, nullable=False),
    Column("variant", String(64), nullable=False),
    Column("level", String(16), nullable=False),  # the automation level it was sent under
    Column("reason", String(16), nullable=False),  # why: level, low_confidence, empty, audit, vad_audit
    Column("start_s", Float, nullable=False),
    Column("end_s", Float, nullable=False),
    Column("draft", Text),  # the AI text the reviewer starts from (None: from scratch)
    Column("confidence", Float),  # the primary's mean word probability (None: not transcribed)
    Column("created_at", Float, nullable=False),
    Column("state", String(12), nullable=False),  # queued, claimed, done, expired
    Column("claim", String(32)),  # the current claim's id
    Column("claimed_by", String(128)),
    Column("claimed_until", Float),
    Column("text", Text),  # the human transcript
    Column("reviewer", String(128)),
    Column("done_at", Float),
    Column("audio", String(255)),  # FLAC path under the data directory (None once expired)
    Column("owner", String(128)),  # the principal that opened the session (None: unknown, version 1)
    # version 3: each stage's errors
    Column("margin_before_s", Float),  # audio in the clip before the segment (None: none, before version 3)
    Column("margin_after_s", Float),  # and after it
    Column("text_before", Text),  # what the reviewer heard in the margins
    Column("text_after", Text),
    Column("asr_errors", Integer),  # the item's variant's word errors against the segment's words
    Column("asr_words", Integer),  # the segment's words (the reference)
    Column("vad_cut_words", Integer),  # words heard in the margins: the VAD cut them off
    Column("vad_miss_words", Integer),  # words heard in audio the VAD rejected (vad_audit)
    # version 4: who skipped or gave the item back last, and when
    Column("released_by", String(128)),
    Column("released_at", Float),
    UniqueConstraint("session", "segment", name="uq_review_items_segment"),
)
Index("ix_review_items_queue", items.c.state, items.c.confidence, items.c.created_at)
Index("ix_review_items_session", items.c.session)

#: what each variant (primary or shadow) transcribed of an item's audio, scored at review.
ai = Table(
    "review_ai",
    metadata,
    Column("item", String(32), ForeignKey("review_items.id", ondelete="CASCADE"), primary_key=True),
    Column("variant", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("confidence", Float),
    Column("errors", Integer),  # against the human transcript, once reviewed
    Column("words", Integer),
)


def _v1(conn: Connection) -> None:
    for table in (items, ai):
        table.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    """Add ``review_items.owner``. Version 1 creates the tables from today's definitions, so a
    database made empty at this version has the column already: it is added only where missing."""
    if "owner" not in {c["name"] for c in inspect(conn).get_columns(items.name)}:
        conn.execute(text(f"ALTER TABLE {items.name} ADD COLUMN owner VARCHAR(128)"))


#: the columns version 3 adds to ``review_items``, with their SQL types.
V3_COLUMNS = {
    "margin_before_s": "FLOAT",
    "margin_after_s": "FLOAT",
    "text_before": "TEXT",
    "text_after": "TEXT",
    "asr_errors": "INTEGER",
    "asr_words": "INTEGER",
    "vad_cut_words": "INTEGER",
    "vad_miss_words": "INTEGER",
}


def _v3(conn: Connection) -> None:
    """Add each stage's columns (:data:`V3_COLUMNS`) where missing (as :func:`_v2`)."""
    have = {c["name"] for c in inspect(conn).get_columns(items.name)}
    for name, kind in V3_COLUMNS.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {items.name} ADD COLUMN {name} {kind}"))


#: the columns version 4 adds to ``review_items``, with their SQL types.
V4_COLUMNS = {"released_by": "VARCHAR(128)", "released_at": "FLOAT"}


def _v4(conn: Connection) -> None:
    """Add who gave an item back and when (:data:`V4_COLUMNS`) where missing (as :func:`_v2`)."""
    have = {c["name"] for c in inspect(conn).get_columns(items.name)}
    for name, kind in V4_COLUMNS.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {items.name} ADD COLUMN {name} {kind}"))


#: the advisory lock a migration holds on PostgreSQL ("spreview" in ASCII, as a bigint).
MIGRATE_LOCK = 0x7370_7265_7669_6577

#: migration to version N is MIGRATIONS[N - 1]
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4]


def version_of(conn: Connection) -> int:
    """The schema version of the database (0: empty)."""
    schema.create(conn, checkfirst=True)
    found = conn.execute(select(schema.c.version)).scalar()
    return int(found or 0)


def migrate(engine: Engine) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it was at.

    Raises:
        ValueError: the database was written by a newer speechpipe.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # replicas starting at once on a new database: one migrates, the others wait for it
            # (two CREATE TABLE at once fail on PostgreSQL's catalogue, not with IF NOT EXISTS)
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
        was = version_of(conn)
        if was > SCHEMA_VERSION:
            raise ValueError(f"the review database is at schema version {was}, newer than this speechpipe's")
        for step in MIGRATIONS[was:]:
            step(conn)
        if was == 0:
            conn.execute(insert(schema).values(version=SCHEMA_VERSION))
        elif was < SCHEMA_VERSION:
            conn.execute(update(schema).values(version=SCHEMA_VERSION))
    return was
