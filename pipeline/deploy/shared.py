"""The deploy state shared by replicas, in PostgreSQL (``[deploy] db = "postgresql://..."``, or
``speechpipe serve --db postgresql://...``): what :class:`~speechpipe.pipeline.deploy.replication.Replicator`
reads and writes. Only I/O here; the decisions are the controller's.

Tables (all ``deploy_``-prefixed, so they share a database with the review queue):

* ``deploy_state``: one row, the controller's snapshot (its history included) and ``version``,
  raised by every change of the deployment (a step, a rollback, an admin action). Changes are made
  in a transaction that holds the row (``SELECT ... FOR UPDATE``): two replicas never decide from
  the same old state. The leader also rewrites the snapshot every second without raising the
  version, so that its gate figures are what every replica shows.
* ``deploy_changes``: append-only, every change as JSON (the record; the snapshot's history is
  what a replica routes by).
* ``deploy_feedback``: append-only, every accepted ``POST /v1/feedback`` (as the SQLite store's
  ``feedback`` table).
* ``deploy_evidence``: append-only, what each replica's streams produced (finals, feedback scores,
  agreements, ended streams), tagged with the state version the replica routed by; the leader
  folds it into the gate windows and deletes what no window needs any more.
* ``deploy_sessions``: the session ledger (who opened a session, which variant served it, its
  finals' texts), so that feedback through any replica, and a resume on any replica, find it.
* ``deploy_replicas``: each replica's heartbeat (url, pid, whether it leads, its open streams).

Leadership is a session-level advisory lock (:data:`LEADER_LOCK`) held on a connection of its
own: a replica that dies (even ``kill -9``) closes its connection and PostgreSQL frees the lock at
once, so another replica takes it at its next try.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text

log = logging.getLogger("speechpipe.deploy")

#: the advisory lock key of the replica that judges the gates ("spdeploy" in ASCII, as a bigint).
LEADER_LOCK = 0x7370_6465_706C_6F79
#: the advisory lock taken while the tables are created (two replicas starting at once).
SCHEMA_LOCK = LEADER_LOCK + 1
#: how long a connection attempt and a statement may take before the replica gives up on it.
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS deploy_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL,
        snapshot TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        updated_by TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deploy_changes (
        seq BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        version BIGINT NOT NULL,
        replica TEXT NOT NULL,
        action TEXT NOT NULL,
        change TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deploy_feedback (
        seq BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        session TEXT NOT NULL,
        segment INTEGER,
        principal TEXT,
        counted INTEGER NOT NULL,
        text TEXT NOT NULL,
        scores TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deploy_feedback_session ON deploy_feedback (session)",
    """CREATE TABLE IF NOT EXISTS deploy_evidence (
        seq BIGSERIAL PRIMARY KEY,
        version BIGINT NOT NULL,
        replica TEXT NOT NULL,
        kind TEXT NOT NULL,
        variant TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deploy_evidence_version ON deploy_evidence (version, seq)",
    """CREATE TABLE IF NOT EXISTS deploy_sessions (
        session TEXT PRIMARY KEY,
        updated_at DOUBLE PRECISION NOT NULL,
        replica TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deploy_replicas (
        replica TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL
    )""",
]

#: what a change-making transaction returns: the snapshot to write, whether it is a new version,
#: and the changes to append (as dicts); None writes nothing.
Write = tuple[dict, bool, list[dict]] | None


def engine_url(db: str) -> str:
    """A ``postgresql://`` URL as SQLAlchemy's psycopg URL."""
    return "postgresql+psycopg://" + db.split("://", 1)[1] if "://" in db else db


def is_shared(db: str) -> bool:
    """Whether ``[deploy] db`` names a shared (PostgreSQL) store."""
    return db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


class SharedStore:
    """See the module docstring. ``replica``: this replica's name (written with what it writes).

    Thread-safe: SQLAlchemy's pool gives each call a connection of its own; the leader's lock
    lives on a connection kept apart."""

    def __init__(self, db: str, replica: str) -> None:
        self.db = db
        self.replica = replica
        self._engine: Engine | None = None
        self._leader: Connection | None = None
        self._lock = threading.Lock()  # the leader connection

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(
                engine_url(self.db),
                pool_pre_ping=True,
                pool_size=4,
                connect_args={
                    "connect_timeout": CONNECT_TIMEOUT_S,
                    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                },
            )
        return self._engine

    def setup(self) -> None:
        """Create the tables that are missing (one replica at a time)."""
        with self.engine.begin() as db:
            db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            for statement in _SCHEMA:
                db.execute(text(statement))

    # -- the state --------------------------------------------------------------------------------

    def read_state(self) -> tuple[int, dict | None]:
        """``(version, snapshot)`` as stored; ``(0, None)`` before any replica wrote one."""
        with self.engine.connect() as db:
            row = db.execute(text("SELECT version, snapshot FROM deploy_state WHERE id = 1")).first()
        return (0, None) if row is None else (int(row[0]), json.loads(row[1]))

    def read_version(self) -> int:
        with self.engine.connect() as db:
            row = db.execute(text("SELECT version FROM deploy_state WHERE id = 1")).first()
        return 0 if row is None else int(row[0])

    def transact(self, decide: Callable[[int, dict | None], Write], now: float) -> int:
        """Hold the state row, let ``decide(version, snapshot)`` say what to write, write it, and
        return the version stored afterwards. An exception of ``decide`` writes nothing."""
        with self.engine.begin() as db:
            row = db.execute(text("SELECT version, snapshot FROM deploy_state WHERE id = 1 FOR UPDATE")).first()
            if row is None:  # the first replica: the row, then hold it
                db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                row = db.execute(text("SELECT version, snapshot FROM deploy_state WHERE id = 1 FOR UPDATE")).first()
            version, stored = (0, None) if row is None else (int(row[0]), json.loads(row[1]))
            out = decide(version, stored)
            if out is None:
                return version
            snapshot, bump, changes = out
            new = version + 1 if bump or row is None else version
            params = {"v": new, "s": json.dumps(snapshot), "at": now, "by": self.replica}
            if row is None:
                db.execute(
                    text(
                        "INSERT INTO deploy_state (id, version, snapshot, updated_at, updated_by) "
                        "VALUES (1, :v, :s, :at, :by)"
                    ),
                    params,
                )
            else:
                db.execute(
                    text("UPDATE deploy_state SET version = :v, snapshot = :s, updated_at = :at, updated_by = :by"),
                    params,
                )
            for change in changes:
                db.execute(
                    text(
                        "INSERT INTO deploy_changes (at, version, replica, action, change) "
                        "VALUES (:at, :v, :by, :action, :change)"
                    ),
                    {
                        **params,
                        "at": float(change.get("at", now)),
                        "action": change.get("action", ""),
                        "change": json.dumps(change, sort_keys=True),
                    },
                )
            return new

    def changes(self) -> list[dict]:
        """Every change ever stored, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(text("SELECT change FROM deploy_changes ORDER BY seq")).all()
        return [json.loads(r[0]) for r in rows]

    # -- evidence ---------------------------------------------------------------------------------

    def add_evidence(self, rows: list[dict]) -> None:
        """Append evidence rows (``version``, ``kind``, ``variant``, ``doc``), all or none."""
        if not rows:
            return
        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO deploy_evidence (version, replica, kind, variant, doc) "
                    "VALUES (:version, :replica, :kind, :variant, :doc)"
                ),
                [{**r, "replica": self.replica, "doc": json.dumps(r["doc"])} for r in rows],
            )

    def evidence(self, after: int, from_version: int, limit: int = 5000) -> list[dict]:
        """Evidence rows after ``seq`` ``after`` recorded at ``from_version`` or later, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(
                text(
                    "SELECT seq, version, replica, kind, variant, doc FROM deploy_evidence "
                    "WHERE seq > :after AND version >= :v ORDER BY seq LIMIT :n"
                ),
                {"after": after, "v": from_version, "n": limit},
            ).all()
        keys = ("seq", "version", "replica", "kind", "variant", "doc")
        return [dict(zip(keys, r[:5], strict=False)) | {"doc": json.loads(r[5])} for r in rows]

    def prune_evidence(self, below_version: int) -> int:
        """Delete evidence recorded before ``below_version`` (no window counts it any more)."""
        with self.engine.begin() as db:
            return db.execute(text("DELETE FROM deploy_evidence WHERE version < :v"), {"v": below_version}).rowcount

    # -- sessions ---------------------------------------------------------------------------------

    def put_sessions(self, docs: dict[str, dict], now: float) -> None:
        """Write session records (by session id), replacing older ones."""
        if not docs:
            return
        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO deploy_sessions (session, updated_at, replica, doc) VALUES (:s, :at, :by, :doc) "
                    "ON CONFLICT (session) DO UPDATE SET updated_at = excluded.updated_at, "
                    "replica = excluded.replica, doc = excluded.doc"
                ),
                [{"s": s, "at": now, "by": self.replica, "doc": json.dumps(d)} for s, d in docs.items()],
            )

    def get_session(self, session: str) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(text("SELECT doc FROM deploy_sessions WHERE session = :s"), {"s": session}).first()
        return None if row is None else json.loads(row[0])

    # -- feedback (the SQLite store's API) ----------------------------------------------------------

    def add_feedback(self, records: list[dict]) -> None:
        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO deploy_feedback (at, session, segment, principal, counted, text, scores) "
                    "VALUES (:at, :session, :segment, :principal, :counted, :text, :scores)"
                ),
                [{**r, "counted": int(bool(r["counted"])), "scores": json.dumps(r["scores"])} for r in records],
            )

    def feedback(self, after: int = 0, limit: int = 1000, session: str | None = None) -> list[dict]:
        where, args = "seq > :after", {"after": after, "n": limit}
        if session is not None:
            where, args = where + " AND session = :s", {**args, "s": session}
        with self.engine.connect() as db:
            rows = db.execute(
                text(
                    "SELECT seq, at, session, segment, principal, counted, text, scores FROM deploy_feedback "
                    f"WHERE {where} ORDER BY seq LIMIT :n"
                ),
                args,
            ).all()
        keys = ("seq", "at", "session", "segment", "principal", "counted", "text", "scores")
        docs = [dict(zip(keys, r, strict=True)) for r in rows]
        for d in docs:
            d["counted"], d["scores"] = bool(d["counted"]), json.loads(d["scores"])
        return docs

    # -- replicas and the leader ------------------------------------------------------------------

    def heartbeat(self, doc: dict[str, Any], now: float) -> list[dict]:
        """Write this replica's heartbeat; returns every replica's last one (``replica``,
        ``seen_at`` and its doc), by name."""
        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO deploy_replicas (replica, seen_at, doc) VALUES (:r, :at, :doc) "
                    "ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at, doc = excluded.doc"
                ),
                {"r": self.replica, "at": now, "doc": json.dumps(doc)},
            )
            rows = db.execute(text("SELECT replica, seen_at, doc FROM deploy_replicas ORDER BY replica")).all()
        return [{"replica": r[0], "seen_at": float(r[1]), **json.loads(r[2])} for r in rows]

    def forget_replica(self) -> None:
        with self.engine.begin() as db:
            db.execute(text("DELETE FROM deploy_replicas WHERE replica = :r"), {"r": self.replica})

    def try_lead(self) -> bool:
        """Whether this replica holds the leader's lock now (taken if free). A broken leader
        connection loses it: PostgreSQL has freed the lock with the session."""
        with self._lock:
            if self._leader is not None:
                try:
                    self._leader.execute(text("SELECT 1"))
                    return True
                except Exception:  # noqa: BLE001  # the connection is gone, and the lock with it
                    self._drop_leader()
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}).scalar())
            except Exception:
                conn.invalidate()
                conn.close()
                raise
            if held:
                self._leader = conn
            else:
                conn.close()
            return held

    def resign(self) -> None:
        """Let the leader's lock go (a replica that stops)."""
        with self._lock:
            if self._leader is not None:
                try:
                    self._leader.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK})
                except Exception as exc:  # noqa: BLE001  # closing the connection frees it anyway
                    log.debug("advisory unlock failed (%s); the connection is closed instead", exc)
                self._drop_leader()

    def _drop_leader(self) -> None:
        conn, self._leader = self._leader, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: its session held the lock
                conn.close()
            except Exception as exc:  # noqa: BLE001  # a broken connection: nothing left to free
                log.debug("closing the leader connection: %s", exc)

    def close(self) -> None:
        self.resign()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
