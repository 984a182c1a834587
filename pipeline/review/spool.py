"""The review items' local spool: where a segment sent to review is kept, on this machine's disk,
from the moment its client is told ``review: pending`` until the store has it.

The store may be a PostgreSQL server across the network, which can be down or restarting; a
segment the client was promised a review of must survive that, and survive this process dying
too. So the live stream's hand-over writes the item here first, synchronously and durably (SQLite
in WAL mode, ``synchronous=FULL``: the commit is on disk before the final leaves the server), and
the review service moves the spooled items to the store in the order they came, deleting each one
here only once the store has committed it. The store's insert is idempotent on (session, segment),
so an item moved twice (the store committed, then the answer was lost) is one row.

An item is kept whole (its fields as JSON, its audio as a blob): the owner of its session
included, so the store learns who may read the session even when the item is moved by the next
process; an item spooled by an older speechpipe has no owner and is moved without one. More of an
item's after-margin (:class:`~speechpipe.pipeline.review.store.MarginAfter`, the audio that came
after its segment once the item had left) is spooled the same way, behind its item, as a row of
kind ``margin`` (a spool of an older speechpipe gains the ``kind`` column on open, its rows items).

Every method is synchronous and thread-safe (one connection behind a lock): the service calls
:meth:`put` on the event loop, the rest from worker threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechpipe.pipeline.review.store import AiText, MarginAfter, NewItem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL,
    audio BLOB NOT NULL,
    spooled_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    kind TEXT NOT NULL DEFAULT 'item'
)
"""
ITEM, MARGIN = "item", "margin"


def item_key(new: NewItem | MarginAfter) -> str:
    """The idempotency key of an item: its session, segment and variant (and ``/after`` for more
    of its after-margin)."""
    key = f"{new.session}/{new.segment}/{new.variant}"
    return key + "/after" if isinstance(new, MarginAfter) else key


@dataclass(frozen=True)
class Spooled:
    """An item waiting in the spool: ``seq`` is its place in line."""

    seq: int
    key: str
    item: NewItem | MarginAfter
    spooled_at: float
    attempts: int


class ReviewSpool:
    """See the module docstring.

    Args:
        path: the spool's SQLite file (created, with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # autocommit mode: each statement below is its own transaction, committed when it returns.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        if "kind" not in {row[1] for row in self._db.execute("PRAGMA table_info(spool)")}:
            self._db.execute(f"ALTER TABLE spool ADD COLUMN kind TEXT NOT NULL DEFAULT '{ITEM}'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, new: NewItem | MarginAfter, now: float) -> bool:
        """Keep ``new`` until :meth:`done`; False when an item of the same key is already here."""
        doc = asdict(new)
        audio = np.ascontiguousarray(doc.pop("audio"), dtype=np.float32)
        kind = MARGIN if isinstance(new, MarginAfter) else ITEM
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO spool (key, doc, audio, spooled_at, kind) VALUES (?, ?, ?, ?, ?)",
                (item_key(new), json.dumps(doc), audio.tobytes(), now, kind),
            )
            return cur.rowcount == 1

    def head(self, limit: int = 16) -> list[Spooled]:
        """The oldest ``limit`` items, in the order they came."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, key, doc, audio, spooled_at, attempts, kind FROM spool ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Spooled(seq, key, _item(doc, audio, kind), at, n) for seq, key, doc, audio, at, n, kind in rows]

    def done(self, seq: int) -> None:
        """The store has item ``seq``: it leaves the spool."""
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))

    def failed(self, seq: int, error: str) -> int:
        """A try to move item ``seq`` failed with ``error``; returns how many tries it has had."""
        with self._lock:
            self._db.execute(
                "UPDATE spool SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error[:500], seq)
            )
            row = self._db.execute("SELECT attempts FROM spool WHERE seq = ?", (seq,)).fetchone()
        return int(row[0]) if row else 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])


def _item(doc: str, audio: bytes, kind: str) -> NewItem | MarginAfter:
    fields = json.loads(doc)
    samples = np.frombuffer(audio, dtype=np.float32).copy()
    if kind == MARGIN:
        return MarginAfter(audio=samples, **fields)
    fields["transcripts"] = [AiText(**t) for t in fields["transcripts"]]
    return NewItem(audio=samples, **fields)
