"""A live server's deployment: which variant serves each new stream, the controller fed by what
the streams produce, shadow comparisons and human feedback, persisted and reported.

The decisions are the pure :class:`~speechpipe.pipeline.deploy.DeployController`'s; this module
is the glue around it: one lock (events come from the event loop, shadow results from the ASR
worker threads), the state store, and a report of every change and score as an event
(:class:`WeightChanged`, :class:`DeployChanged`, :class:`RolledBack`, :class:`ShadowSegment`,
:class:`ShadowScored`, :class:`FeedbackScored`) to an observer: the server's parts (telemetry
turns them into spans and metrics, drift monitoring takes the human scores).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

from speechpipe.pipeline.deploy import Assignment, Change, DeployController, DeployError, DeploySettings, DeployStore
from speechpipe.pipeline.deploy.golden import GoldenVerdict
from speechpipe.pipeline.deploy.ledger import Comparison, Ledger, Piece, Score
from speechpipe.pipeline.deploy.replication import SYNC_S, ReplicaInfo, Replicator
from speechpipe.pipeline.deploy.reports import (
    ClientFeedback,
    DeployChanged,
    FeedbackScored,
    RolledBack,
    ShadowScored,
    ShadowSegment,
    WeightChanged,
)
from speechpipe.pipeline.deploy.shared import SharedStore, is_shared
from speechpipe.pipeline.hooks import AsrJob, Event, FinalLost, FinalTranscript, Observer, StreamEnded
from speechpipe.pipeline.monitoring.quality import Calibration, expected
from speechpipe.stages.features import output_features

log = logging.getLogger("speechpipe.deploy")

#: the most feedback kept in memory while the state store cannot be written; more is refused
#: (:class:`FeedbackBacklog`) rather than held without bound or dropped.
MAX_UNSAVED_FEEDBACK = 10_000


class FeedbackBacklog(Exception):
    """Feedback refused: :data:`MAX_UNSAVED_FEEDBACK` wait to be written to a store that fails."""


class SessionOpen(Exception):
    """A resume of a session still open on this replica (its connection has not ended here)."""


__all__ = [
    "ClientFeedback",
    "DeployChanged",
    "DeployError",
    "Deployment",
    "FeedbackBacklog",
    "FeedbackScored",
    "ReplicaInfo",
    "RolledBack",
    "SessionOpen",
    "ShadowScored",
    "ShadowSegment",
    "WeightChanged",
]


class Deployment:
    """See the module docstring.

    Args:
        settings: the ``[deploy]`` table, with ``primary`` resolved.
        variant_ids: every loaded variant's config id, by name.
        reports: told what the deployment does (the events above; None: nobody listens).
        clock: wall-clock seconds (the times in the deploy history).
        max_unsaved_feedback: the most feedback kept in memory while the store cannot be written.
        calibration: the estimated WER's (``[monitoring] baseline``'s): each final's expected word
            errors and reference words go to the ``estimated_wer_delta`` gate. None: no estimate.
        replica: who this replica is, when ``settings.db`` is shared (PostgreSQL): then the state
            lives there, one replica judges the gates on every replica's evidence
            (:mod:`~speechpipe.pipeline.deploy.replication`), and a thread syncs every
            :data:`~speechpipe.pipeline.deploy.replication.SYNC_S` until :meth:`close`.
        golden: evaluates ``(primary, candidate)`` on ``settings.golden``
            (:func:`~speechpipe.pipeline.deploy.golden.run_golden`): run in a thread of its own
            when the controller wants a verdict (a gated canary or shadow, a blue/green pair), the
            verdict recorded when it comes; meanwhile the candidate takes no traffic.
    """

    def __init__(
        self,
        settings: DeploySettings,
        variant_ids: dict[str, str],
        *,
        reports: Observer | None = None,
        clock: Callable[[], float] = time.time,
        max_unsaved_feedback: int = MAX_UNSAVED_FEEDBACK,
        replica: ReplicaInfo | None = None,
        calibration: Calibration | None = None,
        golden: Callable[[str, str], GoldenVerdict] | None = None,
    ) -> None:
        self.calibration = calibration
        self.settings = settings
        self.max_unsaved_feedback = max_unsaved_feedback
        self.clock = clock
        self.reports = reports
        shared = is_shared(settings.db)
        replica = replica or ReplicaInfo(f"replica-{uuid.uuid4().hex[:8]}")
        self.store = SharedStore(settings.db, replica.name) if shared else DeployStore(settings.state_file)
        self.ledger = Ledger()
        #: feedback received since start: ``counted`` (scored into the figures), ``client`` (kept apart)
        self.feedback_counts = {"counted": 0, "client": 0}
        #: since when something in memory could not be written (None: all saved): a change or
        #: feedback that could not be written (a full disk, a read-only mount) is kept, served,
        #: and written at the next tick that can (:meth:`_flush`).
        self.unsaved_since: float | None = None
        self._state_dirty = True  # the controller's state is newer than the one written
        self._unsaved_feedback: list[dict] = []  # feedback accepted, not yet written (in order)
        self._lock = threading.RLock()
        now = clock()
        # shared: routed as the settings start until the first sync has read the stored state
        state = None if shared else self.store.load()
        self.controller = DeployController(settings, variant_ids, now, state=state)
        self.replicator: Replicator | None = None
        self._stop = threading.Event()
        self._sync: threading.Thread | None = None
        if shared:
            self.replicator = Replicator(self.store, self.controller, self.ledger, self._lock, replica, clock)
            self._state_dirty = False  # the replicator writes the state
        else:
            self._report(list(self.controller.history[-1:]) if self.controller.history else [])
        self._flush()
        self._weights = self.controller.weights()
        for name, weight in self._weights.items():
            self._emit(WeightChanged(name, self.controller.role_of(name), weight))
        if shared:
            self._sync = threading.Thread(target=self._sync_loop, name="deploy-sync", daemon=True)
            self._sync.start()
        self.golden = golden
        self._golden: threading.Thread | None = None
        self._start_golden()

    # -- the golden set ---------------------------------------------------------------------------

    def _start_golden(self) -> None:
        """Evaluate the candidate on the golden set off the serving path, if a verdict is wanted."""
        wanted = self.controller.golden_wanted()
        if wanted is None or self.golden is None or self.replicator is not None:
            return
        self._golden = threading.Thread(target=self._judge_golden, args=wanted, name="deploy-golden", daemon=True)
        self._golden.start()

    def _judge_golden(self, primary: str, candidate: str) -> None:
        log.info("deploy: evaluating %s against %s on the golden set %s", candidate, primary, self.settings.golden)
        verdict = self.golden(primary, candidate)
        with self._lock:
            if self._stop.is_set():
                return
            change = self.controller.record_golden(self.clock(), verdict)
            if change is not None:
                self._changed([change])

    def wait_golden(self, timeout: float | None = None) -> bool:
        """Wait for the golden evaluation under way (tests, benchmarks); True when none runs."""
        if self._golden is not None:
            self._golden.join(timeout)
        return self._golden is None or not self._golden.is_alive()

    # -- routing --------------------------------------------------------------------------------

    def assign(self, client_key: str | None, stream_id: str) -> Assignment:
        with self._lock:
            rep = self.replicator
            out = self.controller.assign(self.clock(), client_key=client_key, stream_id=stream_id, count=rep is None)
            if rep is not None:
                for name in (out.variant, out.shadow):
                    if name:
                        rep.record("assigned", name)
            return out

    def opened(
        self, stream_id: str, assignment: Assignment, shared_segments: bool, principal: str | None = None
    ) -> None:
        with self._lock:
            a = assignment
            self.ledger.open(stream_id, a.variant, a.role, a.shadow, shared_segments, principal)
            self._touch(stream_id)

    def fetch_session(self, session: str) -> None:
        """Bring a session another replica kept into the ledger (no-op unless shared); raises
        when the shared store cannot answer. Called off the event loop."""
        if self.replicator is not None:
            self.replicator.fetch(session)

    def resume(self, session: str, principal: str | None) -> tuple[Assignment, bool]:
        """A stream resuming ``session`` (after :meth:`fetch_session`): the variant that served it
        and whether its shadow shared its segments. KeyError (the unknown-session answer) when
        it is unknown or another principal's; :class:`SessionOpen` while it is still open here."""
        with self._lock:
            rec = self.ledger.get(session)
            if rec is None or rec.principal != principal:
                raise self.ledger.unknown(session)
            if not rec.ended:
                raise SessionOpen(f"session {session!r} is still open on this server; resume once it has ended")
            rec.ended = False
            self._touch(session)
            if self.replicator is not None:
                self.replicator.record("assigned", rec.variant)
            return Assignment(rec.variant, rec.role, rec.shadow), rec.shared_segments

    def session_owner(self, session: str) -> str | None:
        """Who opened ``session`` as the ledger keeps it (None: unknown here)."""
        with self._lock:
            rec = self.ledger.get(session)
            return rec.principal if rec is not None else None

    def observer(self, stream_id: str, variant: str) -> _StreamObserver:
        """The observer of one stream served by ``variant``: feeds its finals to the controller."""
        return _StreamObserver(self, stream_id, variant)

    # -- what the streams produce ---------------------------------------------------------------

    def _on_event(self, stream_id: str, variant: str, event: Event) -> None:
        with self._lock:
            now = self.clock()
            comparisons: list[Comparison] = []
            scores: list[Score] = []
            if isinstance(event, FinalTranscript):
                tr, seg = event.transcript, event.segment
                self._evidence(
                    "final",
                    variant,
                    now,
                    latency_s=event.latency_s,
                    error=False,
                    empty=not tr.text.strip(),
                    avg_logprob=tr.avg_logprob,
                    guard_dropped=tr.dropped > 0,
                    **self._estimated(tr, seg.duration_s, seg.speech_ratio),
                )
                comparisons = self.ledger.final(stream_id, Piece(seg.index, seg.start_s, seg.end_s, tr.text))
            elif isinstance(event, FinalLost):
                self._evidence("final", variant, now, error=True)
            elif isinstance(event, StreamEnded):
                self._evidence("ended", variant, now)
                comparisons, scores = self.ledger.ended(stream_id)
            self._touch(stream_id)
            self._after(stream_id, comparisons, scores)

    def on_shadow(self, stream_id: str, job: AsrJob, future: Future) -> None:
        """A shadow job was queued; its result is compared with the primary's when it comes."""
        with self._lock:
            self.ledger.shadow_queued(stream_id)
        future.add_done_callback(lambda f: self._shadow_done(stream_id, job, f))

    def _shadow_done(self, stream_id: str, job: AsrJob, future: Future) -> None:
        outcome, pieces, transcripts = "shed", None, []
        if not future.cancelled():
            if future.exception() is not None:
                outcome = "failed"
            elif future.result() is not None:
                transcripts, _run = future.result()
                outcome = "done"
                pieces = [Piece(s.index, s.start_s, s.end_s, t.text) for s, t in zip(job.segments, transcripts)]
        # job.created: when the segment closed (monotonic, like the worker's clock)
        latency = time.monotonic() - job.created if outcome == "done" else None
        self._emit(ShadowSegment(job.variant, "shadow", outcome, latency))
        with self._lock:
            if outcome == "done":  # the shadow's own figures (its latency waits below the clients')
                for seg, tr in zip(job.segments, transcripts):
                    self._evidence(
                        "final",
                        job.variant,
                        self.clock(),
                        latency_s=None,
                        empty=not tr.text.strip(),
                        avg_logprob=tr.avg_logprob,
                        guard_dropped=tr.dropped > 0,
                        **self._estimated(tr, seg.duration_s, seg.speech_ratio),
                    )
            comparisons, scores = self.ledger.shadow_done(stream_id, pieces)
            self._touch(stream_id)
            self._after(stream_id, comparisons, scores)

    def _after(self, stream_id: str, comparisons: list[Comparison], scores: list[Score]) -> None:
        rec = self.ledger.get(stream_id)
        for c in comparisons:
            if rec is not None and rec.shadow:
                self._evidence("agreement", rec.shadow, self.clock(), score=c.agreement)
                self._emit(ShadowScored(rec.shadow, "shadow", c.agreement, c.empty_mismatch))
        for s in scores:
            self._scored(s)  # feedback that waited for the shadow: its session is not told

    def _scored(self, s: Score, session: str = "", segment: int | None = None) -> None:
        self._evidence("feedback", s.variant, self.clock(), errors=s.errors, words=s.words)
        self._emit(FeedbackScored(s.variant, s.role, s.errors, s.words, session, segment))

    def _evidence(self, kind: str, variant: str, now: float, **doc: object) -> None:
        """What a variant produced, for the gates: to the controller, or (shared) to the store,
        where the leader folds every replica's."""
        if self.replicator is not None:
            self.replicator.record(kind, variant, **doc)
        elif kind == "final":
            self.controller.record_final(variant, now, **doc)
        elif kind == "feedback":
            self.controller.record_feedback(variant, now, doc["errors"], doc["words"])
        elif kind == "agreement":
            self.controller.record_agreement(variant, now, doc["score"])
        elif kind == "ended":
            self.controller.stream_ended(variant, now)

    def _estimated(self, transcript, duration_s: float, speech_ratio: float) -> dict:
        """A final's expected word errors and reference words (nothing without a calibration)."""
        if self.calibration is None:
            return {}
        features = output_features(transcript, duration_s) | {"duration_s": duration_s, "speech_ratio": speech_ratio}
        errors, words = expected(features, self.calibration)
        return {"est_errors": errors, "est_words": words}

    def _touch(self, session: str) -> None:
        if self.replicator is not None:
            self.replicator.touch(session)

    # -- feedback, admin, time ------------------------------------------------------------------

    def feedback(
        self,
        session: str,
        segment: int | None,
        text: str,
        counted: bool = True,
        *,
        keep: bool = False,
        principal: str | None = None,
    ) -> list[Score]:
        """Score a human reference (``POST /v1/feedback``, a review); KeyError for an unknown
        session/segment. Only ``counted`` feedback (from a principal trusted with it: the
        ``feedback``, ``review`` or ``admin`` scope) moves the gates and, through
        :class:`FeedbackScored`, drift; the rest is client feedback, kept apart on the session
        and reported as :class:`ClientFeedback`. A made-up reference from any stream client must
        not be able to roll a canary back.

        ``keep``: write the feedback (its text, ``principal``, whether it counted, each variant's
        score and hypothesis) to the state store, with the same care as a deploy change: a write
        that fails keeps it in memory, in order, and the next tick that can writes it
        (:meth:`feedback_saved` says whether everything accepted is written). A review does not
        ask for it: the review store keeps reviews."""
        with self._lock:
            if keep and len(self._unsaved_feedback) >= self.max_unsaved_feedback:
                raise FeedbackBacklog(
                    f"{len(self._unsaved_feedback)} feedback wait to be written to the deploy state "
                    f"(unwritable since {self.unsaved_since:.0f}); try again later"
                )
            scores = self.ledger.feedback(session, segment, text, counted=counted)
            self.feedback_counts["counted" if counted else "client"] += 1
            for s in scores:
                if counted:
                    self._scored(s, session, segment)
                elif s.role != "shadow":
                    self._emit(ClientFeedback(s.variant, s.role, s.errors, s.words))
            if keep:
                record = {
                    "at": self.clock(),
                    "session": session,
                    "segment": segment,
                    "principal": principal,
                    "counted": counted,
                    "text": text,
                    "scores": [
                        {
                            "variant": s.variant,
                            "role": s.role,
                            "errors": s.errors,
                            "words": s.words,
                            "hypothesis": s.hypothesis,
                        }
                        for s in scores
                    ],
                }
                self._unsaved_feedback.append(record)
                self._flush()
            return scores

    def feedback_saved(self) -> bool:
        """Whether every feedback kept so far is written to the state store."""
        return self.unsaved_feedback() == 0

    def unsaved_feedback(self) -> int:
        """How many accepted feedback wait to be written to the state store."""
        with self._lock:
            return len(self._unsaved_feedback)

    def stored_feedback(self, after: int = 0, limit: int = 1000, session: str | None = None) -> list[dict]:
        """The feedback written to the state store (:meth:`DeployStore.feedback`)."""
        with self._lock:
            return self.store.feedback(after, limit, session)

    def unknown_session(self, session: str) -> str:
        """What an unknown session is answered with (also told to a caller who may not see one)."""
        return str(self.ledger.unknown(session).args[0])

    def owner_variant(self, session: str) -> str | None:
        """The variant that served ``session`` to its client (None: unknown)."""
        with self._lock:
            rec = self.ledger.get(session)
            return rec.variant if rec is not None else None

    def finals_of(self, session: str, segments: tuple[int, ...]) -> tuple[str, dict[int, Piece]] | None:
        """The variant that served ``session`` and its finals of ``segments`` as the client got
        them (those the ledger has; None: the session is unknown here)."""
        with self._lock:
            rec = self.ledger.get(session)
            if rec is None:
                return None
            return rec.variant, {i: rec.finals[i] for i in segments if i in rec.finals}

    def apply(self, action: dict, reason: str = "admin") -> Change:
        """An admin action (``POST /admin/deploy``); DeployError for a bad one. Shared: made on
        the stored state (a store that cannot be written raises, nothing changed); call it off
        the event loop."""
        if self.replicator is not None:
            change, adopted = self.replicator.apply(action, reason)
            with self._lock:
                self._changed(adopted, report=False)
                self._changed([change])
            return change
        with self._lock:
            change = self.controller.apply(action, self.clock(), reason=reason)
            self._changed([change])
            return change

    def tick(self) -> list[Change]:
        """Evaluate the canary's gates (called every second by the server); first write the state
        if a change could not be written before."""
        with self._lock:
            if self.unsaved_since is not None:
                self._flush()
            if self.replicator is not None:
                return []  # the leader judges, in the sync thread
            changes = self.controller.tick(self.clock())
            if changes:
                self._changed(changes)
            return changes

    def snapshot(self) -> dict:
        """The controller's state, with the feedback received since start (``counted`` and
        ``client``: the client feedback kept apart), and the rules a step advances by (``steps``,
        ``step_min_s``, ``step_min_streams``, and ``previous_primary``, what ``revert`` goes back to)."""
        with self._lock:
            s = self.settings
            saved = {"saved": self.unsaved_since is None, "unsaved_since": self.unsaved_since}
            saved |= {"steps": list(s.steps), "step_min_s": s.step_min_s, "step_min_streams": s.step_min_streams}
            saved["previous_primary"] = s.primary
            golden = {"folder": s.golden, "max_wer_delta": s.max_golden_wer_delta, "candidate": s.candidate}
            saved["golden_set"] = golden if s.golden else None
            feedback = {**self.feedback_counts, "unsaved": len(self._unsaved_feedback)}
            rep = self.replicator
            if rep is None:
                return {**self.controller.snapshot(), "feedback": feedback, **saved}
            # the stored state (the leader's figures): the same on every replica
            view = dict(rep.view) if rep.view is not None else self.controller.snapshot()
            return {**view, "feedback": feedback, **saved, "replication": rep.status()}

    def close(self) -> None:
        """Stop syncing (shared): what waits is written, the leader's lock let go."""
        self._stop.set()
        if self._sync is not None:
            self._sync.join(timeout=10)
        if self.replicator is not None:
            self.replicator.close()

    def _sync_loop(self) -> None:
        rep = self.replicator
        while not self._stop.wait(SYNC_S):
            try:
                adopted, decided = rep.sync()
                if adopted or decided:
                    with self._lock:
                        self._changed(adopted, report=False)
                        self._changed(decided)
            except Exception:  # a bug here must not stop the syncing
                log.exception("deploy sync failed")

    # -- bookkeeping ----------------------------------------------------------------------------

    def _changed(self, changes: list[Change], report: bool = True) -> None:
        """After ``changes``: the state written, the changes reported (``report``: made here; a
        change adopted from another replica was reported there), the weights' moves reported."""
        if not changes:
            return
        if self.replicator is None:
            self._state_dirty = True
            self._flush()
        if report:
            self._report(changes)
        weights = self.controller.weights()
        for name in set(weights) | set(self._weights):
            delta = weights.get(name, 0.0) - self._weights.get(name, 0.0)
            self._emit(WeightChanged(name, self.controller.role_of(name), delta))
        self._weights = weights

    def _flush(self) -> None:
        """Write what waits: the state if it changed, then the feedback kept, in order. A full
        disk must not stop serving: what could not be written stays in memory, is logged once
        per outage, and is written at the next tick that can."""
        try:
            if self._state_dirty:
                self.store.save(self.controller.snapshot())
                self._state_dirty = False
            if self._unsaved_feedback:
                self.store.add_feedback(self._unsaved_feedback)
                self._unsaved_feedback = []
        except Exception:
            if self.unsaved_since is None:  # once per outage, not once per tick
                log.exception("could not save the deploy state to %s; retried at each tick", self.settings.state_file)
                self.unsaved_since = self.clock()
            return
        if self.unsaved_since is not None:
            log.warning(
                "deploy state saved to %s again (unsaved since %.0f)", self.settings.state_file, self.unsaved_since
            )
        self.unsaved_since = None

    def _report(self, changes: list[Change]) -> None:
        for change in changes:
            doc = change.to_dict()
            variant = self.controller.candidate or self.controller.primary
            if not variant:
                continue
            role = self.controller.role_of(variant)
            self._emit(DeployChanged(variant, role, doc["action"], doc["reason"], doc))
            if change.action == "rollback":
                failed = [g["name"] for g in doc.get("gates", []) if g.get("passed") is False]
                self._emit(RolledBack(variant, role, failed[0] if failed else "admin"))

    def _emit(self, event: object) -> None:
        if self.reports is None or not event.variant:
            return
        try:
            self.reports.on_event(event)
        except Exception:  # whoever listens must never break serving
            log.exception("deploy report failed")


class _StreamObserver:
    def __init__(self, deployment: Deployment, stream_id: str, variant: str) -> None:
        self.deployment = deployment
        self.stream_id = stream_id
        self.variant = variant

    def on_event(self, event: Event) -> None:
        if isinstance(event, (FinalTranscript, FinalLost, StreamEnded)):
            self.deployment._on_event(self.stream_id, self.variant, event)
