"""The deploy state in SQLite (stdlib ``sqlite3``, one file), so that a restart resumes a deployment.

Three tables: ``state``, one row with the latest snapshot less its history; ``changes``,
append-only, one row per :class:`~speechpipe.pipeline.deploy.events.Change` (as JSON); and
``feedback``, append-only, one row per human reference accepted by ``POST /v1/feedback`` (who sent
it, whether it counted, the text and what each variant had said: ground truth kept, not only its
effect on the gates). The snapshot's history is the run of ``changes`` rows from
``state.history_from`` on; a snapshot whose history does not continue the stored one (a
controller that did not resume this file) starts a new run, and the older rows stay as a record.
The schema version is ``PRAGMA user_version`` (see :data:`SCHEMA_VERSION`); an older file is
migrated in place on open (1 -> 2 adds ``feedback``), a newer one refused.

Not thread-safe by itself: the caller serialises calls (one at a time, from any thread).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Self

#: the schema this module writes; a file with a newer one is refused rather than misread.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot TEXT NOT NULL,      -- the snapshot without its history (JSON)
    history_from INTEGER NOT NULL -- changes.seq of the snapshot's first change
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    change TEXT NOT NULL          -- the Change (JSON)
);
"""
#: version 2: the feedback received (one row per accepted ``POST /v1/feedback``).
_FEEDBACK = """
CREATE TABLE feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    session TEXT NOT NULL,
    segment INTEGER,               -- NULL: the whole session
    principal TEXT,                -- who sent it (a key's name), NULL when unknown
    counted INTEGER NOT NULL,      -- 1: it moved the figures; 0: client feedback, kept apart
    text TEXT NOT NULL,            -- the human reference
    scores TEXT NOT NULL           -- [{variant, role, errors, words, hypothesis}] (JSON)
);
CREATE INDEX feedback_session ON feedback (session);
"""


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class DeployStore:
    """See the module docstring.

    Args:
        path: the SQLite file, created with its folder on first use; "" keeps everything in memory
            (the same API, gone with the object).
    """

    def __init__(self, path: str | Path = "") -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = None
        self._run: list[str] | None = None  # the canonical JSON of the current run of changes

    def load(self) -> dict | None:
        """The last snapshot saved, its history included, or None when nothing was saved yet."""
        db = self._connect()
        row = db.execute("SELECT snapshot, history_from FROM state WHERE id = 1").fetchone()
        if row is None:
            return None
        snapshot = json.loads(row[0])
        run = self._current_run(db, row[1])
        snapshot["history"] = [json.loads(c) for c in run]
        return snapshot

    def save(self, snapshot: dict) -> None:
        """Keep ``snapshot``; the changes of its history not stored yet are appended."""
        db = self._connect()
        history = [_canonical(c) for c in snapshot.get("history", [])]
        row = db.execute("SELECT history_from FROM state WHERE id = 1").fetchone()
        run = self._current_run(db, row[0]) if row else []
        with db:
            if history[: len(run)] == run:
                new = history[len(run) :]
                history_from = row[0] if row else None
            else:  # not a continuation: a new run, the old rows kept
                new, history_from = history, None
            first = None
            for text in new:
                doc = json.loads(text)
                cur = db.execute(
                    "INSERT INTO changes (at, action, change) VALUES (?, ?, ?)",
                    (float(doc.get("at", 0.0)), str(doc.get("action", "")), text),
                )
                first = cur.lastrowid if first is None else first
            if history_from is None:
                history_from = first if first is not None else self._next_seq(db)
            rest = {k: v for k, v in snapshot.items() if k != "history"}
            db.execute(
                "INSERT INTO state (id, snapshot, history_from) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET snapshot = excluded.snapshot, history_from = excluded.history_from",
                (json.dumps(rest), history_from),
            )
        self._run = history

    def add_feedback(self, records: list[dict]) -> None:
        """Append feedback records (the keys of :data:`_FEEDBACK` but ``seq``; ``scores`` a list),
        all or none, in order."""
        db = self._connect()
        with db:
            db.executemany(
                "INSERT INTO feedback (at, session, segment, principal, counted, text, scores) "
                "VALUES (:at, :session, :segment, :principal, :counted, :text, :scores)",
                [{**r, "counted": int(bool(r["counted"])), "scores": json.dumps(r["scores"])} for r in records],
            )

    def feedback(self, after: int = 0, limit: int = 1000, session: str | None = None) -> list[dict]:
        """The stored feedback with ``seq`` above ``after``, oldest first (``limit`` rows at most),
        of one ``session`` if given."""
        where, args = "seq > ?", [after]
        if session is not None:
            where, args = where + " AND session = ?", [*args, session]
        db = self._connect()
        rows = db.execute(
            "SELECT seq, at, session, segment, principal, counted, text, scores FROM feedback "
            f"WHERE {where} ORDER BY seq LIMIT ?",
            (*args, limit),
        ).fetchall()
        keys = ("seq", "at", "session", "segment", "principal", "counted", "text", "scores")
        docs = [dict(zip(keys, row)) for row in rows]
        for d in docs:
            d["counted"], d["scores"] = bool(d["counted"]), json.loads(d["scores"])
        return docs

    def changes(self) -> list[dict]:
        """Every change ever stored, oldest first (all runs)."""
        return [json.loads(c) for (c,) in self._connect().execute("SELECT change FROM changes ORDER BY seq")]

    def close(self) -> None:
        """Close the file (a later call opens it again; a memory store loses its content)."""
        if self._db is not None:
            self._db.close()
            self._db, self._run = None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the caller serialises, possibly from different threads
        db = sqlite3.connect(self.path or ":memory:", check_same_thread=False)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise ValueError(
                f"{self.path}: the deploy state has schema version {version}, newer than this speechpipe's "
                f"({SCHEMA_VERSION}); it was written by a later version"
            )
        if version == 0:  # a new file: the tables and the version in one transaction
            db.executescript(f"BEGIN; {_SCHEMA} {_FEEDBACK} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version == 1:  # written before feedback was kept
            db.executescript(f"BEGIN; {_FEEDBACK} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        self._db = db
        return db

    def _current_run(self, db: sqlite3.Connection, history_from: int) -> list[str]:
        if self._run is None:
            rows = db.execute("SELECT change FROM changes WHERE seq >= ? ORDER BY seq", (history_from,))
            self._run = [_canonical(json.loads(c)) for (c,) in rows]
        return self._run

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return (row[0] if row else 0) + 1
