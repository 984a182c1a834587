"""One deployment across replicas: what each replica does with the shared store
(:mod:`~speechpipe.pipeline.deploy.shared`) so that they route alike, one of them judges the gates
on every replica's evidence, and a session opened on one is known to all.

Every :data:`SYNC_S` a replica's sync (a thread of the :class:`~speechpipe.pipeline.deploy.deployment.Deployment`):

* **follows**: reads the stored state; a newer version (a change made by another replica: the
  leader's step or rollback, an admin action through any replica) is adopted, so routing moves
  on every replica within a sync or two;
* **writes what its streams produced** (buffered in memory between syncs, written in order,
  kept while the store is down, at most :data:`MAX_WAITING` rows, the oldest dropped and counted
  beyond): evidence rows for the gates and the session records of the ledger;
* every :data:`LEAD_S`, a **heartbeat**, and the **leader's lock**: the replica that holds it
  folds every replica's new evidence into the gate windows and runs the controller's tick,
  in one transaction that holds the state row (an admin action elsewhere waits for it, or it
  for the action). A new leader rebuilds the current window from the evidence stored since it
  began (the evidence carries the version it was recorded at; what was recorded before the
  window's change, by a replica that had not seen it yet, is not counted in it).

Admin actions are made in the same kind of transaction by the replica that received them
(:meth:`Replicator.apply`), so the answer is the change as stored. While the store cannot be
reached, a replica keeps routing by the last state it read, its evidence waits, admin actions
are refused (503) and no gate is judged; ``status()`` says since when.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from speechpipe.pipeline.deploy.controller import WINDOW_ACTIONS, DeployController
from speechpipe.pipeline.deploy.events import Change
from speechpipe.pipeline.deploy.ledger import Ledger, SessionRecord
from speechpipe.pipeline.deploy.shared import SharedStore

log = logging.getLogger("speechpipe.deploy")

#: seconds between two syncs (follow the state, write the evidence).
SYNC_S = 0.25
#: seconds between two heartbeats and leader turns (the leader judges the gates at this pace).
LEAD_S = 1.0
#: a replica not heard from for this long is shown as gone (three missed heartbeats).
GONE_S = 3.0
#: evidence rows and session records that may wait for the store; beyond, the oldest are dropped.
MAX_WAITING = 100_000


@dataclass(frozen=True)
class ReplicaInfo:
    """Who this replica is (its name must be unique among the replicas sharing the store)."""

    name: str
    url: str = ""
    pid: int = field(default_factory=os.getpid)


class Replicator:
    """See the module docstring. ``controller`` and ``ledger`` are the deployment's, guarded by
    its ``lock``; the store calls are made without it."""

    def __init__(
        self,
        store: SharedStore,
        controller: DeployController,
        ledger: Ledger,
        lock: threading.RLock,
        replica: ReplicaInfo,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.controller = controller
        self.ledger = ledger
        self.lock = lock
        self.replica = replica
        self.clock = clock
        self.version = 0  # the stored version this replica routes by (0: not joined yet)
        self.joined = False
        self.leader = False
        self.view: dict | None = None  # the last stored snapshot (the leader's gate figures)
        self.replicas: list[dict] = []
        self.unsynced_since: float | None = None
        self.last_error = ""
        self.dropped = 0  # evidence rows dropped while the store was down
        self.open_streams = 0
        self.finals = 0
        self._evidence: list[dict] = []
        self._sessions: set[str] = set()
        self._window_version = 0  # leader: the version its window began at
        self._cursor = 0  # leader: the last evidence row folded
        self._rebuild = True  # leader: read the window again from the store
        self._counted = 0  # leader: the last "assigned" row counted in the stored stream counts
        self._next_lead = 0.0

    # -- what the deployment tells it (under its lock) --------------------------------------------

    def record(self, kind: str, variant: str, **doc: object) -> None:
        """Evidence for the gates (``assigned``, ``final``, ``feedback``, ``agreement``, ``ended``)."""
        if kind == "assigned":
            self.open_streams += 1
        elif kind == "ended":
            self.open_streams = max(0, self.open_streams - 1)
        elif kind == "final":
            self.finals += 1
        self._evidence.append({"version": self.version, "kind": kind, "variant": variant, "doc": doc})
        if len(self._evidence) > MAX_WAITING:
            self.dropped += len(self._evidence) - MAX_WAITING
            del self._evidence[: len(self._evidence) - MAX_WAITING]

    def touch(self, session: str) -> None:
        """``session``'s record changed: written at the next sync."""
        self._sessions.add(session)

    # -- calls from the request threads -------------------------------------------------------------

    def fetch(self, session: str) -> None:
        """Bring ``session``'s record into the ledger when another replica kept it (a resume, or
        feedback through this replica); raises when the store cannot answer."""
        with self.lock:
            if self.ledger.get(session) is not None:
                return
        doc = self.store.get_session(session)
        if doc is None:
            return
        with self.lock:
            if self.ledger.get(session) is None:
                self.ledger.put(SessionRecord.from_doc(doc))

    def apply(self, action: dict, reason: str) -> tuple[Change, list[Change]]:
        """An admin action, made on the stored state: ``(the change, changes adopted first)``.
        DeployError for a bad action; a store error when it cannot be written (nothing changed)."""
        now, out, adopted = self.clock(), [], []

        def decide(version: int, stored: dict | None):
            with self.lock:
                if stored is not None and version != self.version:
                    adopted.extend(self._adopt(stored, version, now) or [])
                change = self.controller.apply(action, now, reason=reason)
                out.append(change)
                if change.action in WINDOW_ACTIONS:  # the window it starts is the new version's
                    self._window_version = version + 1
                return self._snapshot(), True, [change.to_dict()]

        try:
            version = self.store.transact(decide, now)
        except Exception:
            if out:  # changed here, not stored: read the stored state again at the next sync
                with self.lock:
                    self.version, self._rebuild = -1, True
            raise
        with self.lock:
            self.version = version
            self.view = self._snapshot()
        return out[0], adopted

    # -- the sync ---------------------------------------------------------------------------------

    def sync(self) -> tuple[list[Change], list[Change]]:
        """One sync (see the module docstring): ``(changes adopted, changes decided here)``."""
        now = self.clock()
        adopted: list[Change] = []
        decided: list[Change] = []
        try:
            if not self.joined:
                decided += self._join(now)
            self._write(now)
            judged = False
            if now >= self._next_lead:
                self._next_lead = now + LEAD_S
                self._heartbeat(now)
                was = self.leader
                self.leader = self.store.try_lead()
                if self.leader and not was:
                    log.info("replica %s leads the deployment (judges the gates)", self.replica.name)
                    self._rebuild = True
                if self.leader:
                    a, d = self._judge(now)
                    adopted, decided, judged = adopted + a, decided + d, True
            if not judged:
                adopted += self._follow(now)
        except Exception as exc:  # noqa: BLE001  # the store is down: serve on, say so, retry
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.unsynced_since is None:
                log.warning("deploy store unreachable (%s); routing by the last state read", self.last_error)
                self.unsynced_since = now
            if self.leader:
                self.leader, self._rebuild = False, True
                self.store.resign()
            return adopted, decided
        if self.unsynced_since is not None:
            log.warning("deploy store reachable again (unreachable since %.0f)", self.unsynced_since)
        self.unsynced_since, self.last_error = None, ""
        return adopted, decided

    def _join(self, now: float) -> list[Change]:
        """The first sync: the stored deployment is adopted when it is the one configured here;
        otherwise (none yet, or other settings) this replica's is written."""
        self.store.setup()
        decided: list[Change] = []

        def decide(version: int, stored: dict | None):
            with self.lock:
                if stored is not None and self._adopt(stored, version, now) is not None:
                    return None
                if stored is not None:  # other settings: ours start over, the stored history kept
                    self.controller.load(stored, now)
                decided.extend(self.controller.history[-1:])
                self._window_version = version + 1
                return self._snapshot(), True, [c.to_dict() for c in self.controller.history[-1:]]

        version = self.store.transact(decide, now)
        with self.lock:
            self.version, self.joined = version, True
            self.view = self._snapshot()
        return decided

    def _follow(self, now: float) -> list[Change]:
        version, stored = self.store.read_state()
        with self.lock:
            if stored is None:
                return []
            self.view = stored
            if version == self.version:
                return []
            return self._adopt(stored, version, now) or []

    def _adopt(self, stored: dict, version: int, now: float) -> list[Change] | None:
        new = self.controller.adopt(stored, now)
        if new is None:
            log.warning("the stored deployment is not the one configured here; routing by this replica's own")
            return None
        self.version = version
        if any(c.action in WINDOW_ACTIONS for c in new):
            self._window_version = version  # evidence recorded before it belongs to the old window
        return new

    def _judge(self, now: float) -> tuple[list[Change], list[Change]]:
        """The leader's turn: new evidence folded, the gates judged, the state written."""
        adopted: list[Change] = []
        decided: list[Change] = []
        if self._rebuild:  # a new leader, or one whose write failed: the window from the store
            version, stored = self.store.read_state()
            with self.lock:
                if stored is not None:
                    adopted += self._adopt(stored, version, now) or []
                    window = stored.get("window") or {}
                    self.controller.begin_window(float(window.get("started_at", now)))
                    self._window_version = int(window.get("version", version))
                    self._counted = int(window.get("cursor", 0))
                self._cursor = 0
            self._rebuild = False
        rows = self.store.evidence(self._cursor, self._window_version)

        def decide(version: int, stored: dict | None):
            with self.lock:
                if stored is not None and version != self.version:
                    adopted.extend(self._adopt(stored, version, now) or [])
                for row in rows:
                    self._cursor = max(self._cursor, row["seq"])
                    if row["version"] >= self._window_version:
                        self._fold(row, now)
                changes = self.controller.tick(now)
                decided.extend(changes)
                if any(c.action in WINDOW_ACTIONS for c in changes):  # the new version's window
                    self._window_version = version + 1
                return self._snapshot(), bool(changes), [c.to_dict() for c in changes]

        try:
            version = self.store.transact(decide, now)
        except Exception:
            self._rebuild = True
            raise
        with self.lock:
            self.version = version
            self.view = self._snapshot()
        if decided:
            self.store.prune_evidence(self._window_version)
        return adopted, decided

    def _fold(self, row: dict, now: float) -> None:
        c, kind, variant, doc = self.controller, row["kind"], row["variant"], row["doc"]
        if kind == "final":
            c.record_final(variant, now, **doc)
        elif kind == "feedback":
            c.record_feedback(variant, now, int(doc["errors"]), int(doc["words"]))
        elif kind == "agreement":
            c.record_agreement(variant, now, float(doc["score"]))
        elif kind == "ended":
            c.stream_ended(variant, now)
        elif kind == "assigned" and row["seq"] > self._counted:  # counted once, ever
            c.streams[variant] = c.streams.get(variant, 0) + 1

    def _snapshot(self) -> dict:
        snap = self.controller.snapshot()
        snap["window"] |= {"version": self._window_version, "cursor": self._cursor}
        return snap

    def _write(self, now: float) -> None:
        """Write the evidence and the session records that wait, in order (kept on failure)."""
        with self.lock:
            rows, self._evidence = self._evidence, []
            names, self._sessions = self._sessions, set()
            docs = {s: rec.to_doc() for s in names if (rec := self.ledger.get(s)) is not None}
        try:
            self.store.add_evidence(rows)
            self.store.put_sessions(docs, now)
        except Exception:
            with self.lock:
                self._evidence[:0] = rows
                self._sessions |= names
            raise

    def _heartbeat(self, now: float) -> None:
        doc = {
            "url": self.replica.url,
            "pid": self.replica.pid,
            "leader": self.leader,
            "streams": self.open_streams,
            "finals": self.finals,
            "version": self.version,
        }
        self.replicas = self.store.heartbeat(doc, now)

    # -- reporting --------------------------------------------------------------------------------

    def status(self) -> dict:
        """This replica and the others, as the admin API and the dashboard show them."""
        now = self.clock()
        others = [
            {**r, "seen_s_ago": round(now - r["seen_at"], 1), "alive": now - r["seen_at"] <= GONE_S}
            for r in self.replicas
        ]
        return {
            "replica": self.replica.name,
            "leader": self.leader,
            "leader_name": self.replica.name
            if self.leader
            else next(
                (r["replica"] for r in sorted(others, key=lambda r: -r["seen_at"]) if r.get("leader") and r["alive"]),
                None,
            ),
            "version": self.version,
            "synced": self.unsynced_since is None and self.joined,
            "unsynced_since": self.unsynced_since,
            "error": self.last_error,
            "waiting": {"evidence": len(self._evidence), "sessions": len(self._sessions)},
            "dropped_evidence": self.dropped,
            "replicas": others,
        }

    def close(self) -> None:
        """A last write of what waits, then the leader's lock let go and the heartbeat removed."""
        try:
            self._write(self.clock())
        except Exception as exc:  # noqa: BLE001  # stopping anyway: say what is lost
            waiting = (len(self._evidence), len(self._sessions))
            if any(waiting):
                log.warning("deploy store: %d evidence row(s), %d session(s) not written at stop (%s)", *waiting, exc)
        try:
            self.store.forget_replica()
        except Exception as exc:  # noqa: BLE001  # its heartbeat ages out instead
            log.debug("deploy store: heartbeat not removed at stop (%s)", exc)
        self.store.close()
