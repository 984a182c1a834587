"""The ASR scheduler shared by all live streams: one worker thread per model, fair between streams,
finals before partials, stale partials dropped under load (never a final), bounded queues.

Whisper costs a fixed encoder pass per call (about 0.2-0.45 s for tiny.en on 2 CPU cores, whatever
the audio length), plus decoding. Each call is one of, in this order of priority:

1. finals: the next stream in round-robin order that has finals waiting gets all of them that fit
   one window, plus its speculative job if it fits. With ``pack_streams`` (off by default) and
   finals of ``pack_backlog`` or more streams waiting, one call carries finals of several streams
   instead, one per stream per round;
2. speculative jobs (a segment transcribed during the VAD's hangover; see
   :meth:`~speechpipe.pipeline.session.StreamSession.speculative_job`), finals-to-be, the same way;
3. partials, only when no final or speculative job waits (with ``pack_streams``, several streams'
   partials in a window of at most ``partial_window_s``); a partial that waited longer than
   ``partial_max_age_s`` is dropped as stale.

Each stream has one slot for non-final work (a partial or a speculative job): offering a new one
replaces the one still queued, which is reported as dropped. Finals are never dropped; their queue
is bounded by the server, which stops reading a stream's audio while that stream has
``max_queued_finals`` waiting (so a client that sends faster than the model keeps up is slowed
down by TCP, and memory stays bounded).

Results come back as :class:`concurrent.futures.Future` objects resolving to ``(transcripts,
AsrRun)``, or to ``None`` for a partial that was dropped; the asyncio side wraps them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from speechpipe.pipeline.session import AsrJob, AsrRun
from speechpipe.stages.asr import AsrEngine, AudioPiece, Transcript

log = logging.getLogger("speechpipe.scheduler")

FINAL = 0
SPECULATIVE = 1
PARTIAL = 2
_KIND_NAMES = {FINAL: "final", SPECULATIVE: "speculative", PARTIAL: "partial"}

Result = tuple[list[Transcript], AsrRun]


@dataclass(eq=False)
class Ticket:
    """A job waiting for (or holding) the worker."""

    job: AsrJob
    kind: int
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    #: called once when the ticket leaves the queue (taken by the worker, dropped or cancelled);
    #: from the worker thread when taken. Telemetry keeps the queue depth with it.
    on_leave: Callable[[], None] | None = None

    def left(self) -> None:
        callback, self.on_leave = self.on_leave, None
        if callback is not None:
            try:
                callback()
            except Exception:  # telemetry must never break scheduling
                log.exception("on_leave callback failed")

    @property
    def stream_id(self) -> str:
        return self.job.stream_id


@dataclass
class SchedulerStats:
    """Counters since start (read them through :meth:`AsrScheduler.stats`)."""

    calls: int = 0
    finals: int = 0
    speculative: int = 0
    partials: int = 0
    partials_dropped: int = 0
    busy_s: float = 0.0
    max_batch: int = 0
    mixed_calls: int = 0  # calls that carried audio of more than one stream


class _Batch:
    """Tickets gathered for one Whisper call, within a window of ``window_s`` seconds."""

    def __init__(self, window_s: float, gap_s: float) -> None:
        self.window_s = window_s
        self.gap_s = gap_s
        self.used = 0.0
        self.tickets: list[Ticket] = []

    def fits(self, t: Ticket) -> bool:
        return not self.tickets or self.used + self.gap_s + t.job.audio_s <= self.window_s

    def take(self, t: Ticket) -> bool:
        t.left()
        if not t.future.set_running_or_notify_cancel():
            return False  # cancelled by its owner
        self.used += t.job.audio_s + (self.gap_s if self.tickets else 0.0)
        self.tickets.append(t)
        return True


class QueueObserver:
    """Told the queue depth whenever it changes; telemetry implements it. The default does nothing."""

    def queue_depth(self, finals: int, partials: int) -> None:
        """Jobs waiting for the worker (not counting those it is running)."""


class AsrScheduler:
    """Runs :class:`AsrJob` objects of many streams on one engine from one worker thread.

    Args:
        engine: the shared engine (one model).
        pack_streams: let one Whisper call carry pieces of several streams (partials always,
            finals and speculative jobs under backlog). Off by default: Whisper's word times can
            put a word at the edge of one stream's piece into its neighbour's, i.e. into another
            user's transcript.
        stream_gap_s: silence between packed pieces (at least the engine's own ``gap_s``); a wider
            gap keeps Whisper from running one stream's words into the next stream's piece.
        partial_max_age_s: a partial that waited longer is dropped instead of run.
        pack_backlog: how many streams must have finals waiting before they share calls.
        partial_window_s: the most audio one call of partials carries.
        partial_rest: after a call that took ``d`` seconds, no partial call starts for
            ``partial_rest * d``: partials use at most 1 / (1 + partial_rest) of the worker, so a
            final or speculative job that arrives finds it idle more often than not, and under
            load (calls for finals back to back) partials stop.
        tail_filler_s: the first seconds of the call's last piece are appended once more after it,
            and their transcript discarded. Whisper (tiny.en above all) garbles the end of the
            audio it is given when nothing follows it; a live segment is always at the end of its
            call, unlike offline where packed segments follow one another. On the 12 benchmark
            streams this took live WER from 7.5 % to 6.6 % (offline: 6.2 %).
        observer: told the queue depth (telemetry).
    """

    def __init__(
        self,
        engine: AsrEngine,
        *,
        pack_streams: bool = False,
        stream_gap_s: float = 1.0,
        partial_max_age_s: float = 2.0,
        pack_backlog: int = 2,
        partial_window_s: float = 12.0,
        partial_rest: float = 1.0,
        tail_filler_s: float = 3.0,
        observer: QueueObserver | None = None,
    ) -> None:
        self.engine = engine
        gap = max(engine.config.gap_s, stream_gap_s)
        # Same model, wider gap between packed pieces: no second copy of the weights.
        self._packer = (
            AsrEngine(replace(engine.config, gap_s=gap), model=engine.model) if gap != engine.config.gap_s else engine
        )
        self.window_s = engine.config.window_s
        self.gap_s = gap
        self.pack_streams = pack_streams
        self.partial_max_age_s = partial_max_age_s
        self.pack_backlog = pack_backlog
        self.partial_window_s = partial_window_s
        self.partial_rest = partial_rest
        self.tail_filler_s = tail_filler_s
        self._partials_after = 0.0  # monotonic time before which no partial call starts
        # Audio one call may carry: the window less room for the filler (a lone long segment
        # still goes alone, without filler).
        self._budget = max(1.0, self.window_s - (self.tail_filler_s + gap if tail_filler_s > 0 else 0.0))
        self.observer = observer or QueueObserver()
        self._lock = threading.Condition()
        self._finals: dict[str, deque[Ticket]] = {}
        self._side: dict[str, Ticket] = {}  # one partial or speculative job per stream
        self._order: deque[str] = deque()  # round-robin order of streams
        self._running: list[Ticket] = []
        self._stats = SchedulerStats()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="asr-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish queued finals, drop queued partials, and stop the worker."""
        with self._lock:
            self._stopping = True
            for t in list(self._side.values()):
                self._drop(t)
            self._side.clear()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- submissions (any thread) -------------------------------------------------------------

    def submit_final(self, job: AsrJob, on_leave: Callable[[], None] | None = None) -> Future:
        """Queue a final job; its future resolves to ``(transcripts, run)``. Never dropped."""
        ticket = Ticket(job, FINAL, on_leave=on_leave)
        with self._lock:
            self._finals.setdefault(job.stream_id, deque()).append(ticket)
            self._touch(job.stream_id)
            self._changed()
        return ticket.future

    def offer_partial(
        self, job: AsrJob, speculative: bool = False, on_leave: Callable[[], None] | None = None
    ) -> Future:
        """Offer a partial (or speculative) job for the stream's single slot, replacing a queued one.

        The future resolves to ``(transcripts, run)``, or to ``None`` if the job was dropped
        (replaced, stale, or the scheduler stopped) before it ran.
        """
        ticket = Ticket(job, SPECULATIVE if speculative else PARTIAL, on_leave=on_leave)
        with self._lock:
            if self._stopping:
                self._drop(ticket)
                return ticket.future
            old = self._side.get(job.stream_id)
            if old is not None:
                self._drop(old)
            self._side[job.stream_id] = ticket
            self._touch(job.stream_id)
            self._changed()
        return ticket.future

    def promote(self, future: Future) -> bool:
        """Turn a queued speculative/partial job into a final (it now holds a closed segment's
        exact audio). True if it was still queued or already running/done; False if it was
        dropped, in which case the caller submits the final itself."""
        with self._lock:
            for sid, t in self._side.items():
                if t.future is future:
                    del self._side[sid]
                    t.kind = FINAL
                    self._finals.setdefault(sid, deque()).appendleft(t)
                    self._changed()
                    return True
            if any(t.future is future for t in self._running):
                return True
        return future.done() and not future.cancelled() and future.exception() is None and future.result() is not None

    def drop_partial(self, stream_id: str) -> None:
        """Drop the stream's queued partial/speculative job, if any (its segment changed)."""
        with self._lock:
            t = self._side.pop(stream_id, None)
            if t is not None:
                self._drop(t)
                self._changed()

    def cancel_stream(self, stream_id: str) -> int:
        """Forget every queued job of a stream that went away; returns how many were removed.
        A job already running finishes, and its result is ignored by its owner."""
        with self._lock:
            n = 0
            for t in self._finals.pop(stream_id, ()):
                t.future.cancel()
                t.left()
                n += 1
            t = self._side.pop(stream_id, None)
            if t is not None:
                t.future.cancel()
                t.left()
                n += 1
            try:
                self._order.remove(stream_id)
            except ValueError:
                pass
            self._changed()
            return n

    # -- introspection ------------------------------------------------------------------------

    def depth(self) -> tuple[int, int]:
        """(queued finals, queued partials/speculative)."""
        with self._lock:
            return self._depth()

    def streams(self) -> set[str]:
        """Streams with queued or running work."""
        with self._lock:
            ids = {s for s, q in self._finals.items() if q} | set(self._side)
            return ids | {t.stream_id for t in self._running}

    def stats(self) -> SchedulerStats:
        with self._lock:
            return replace(self._stats)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._running and self._depth() == (0, 0)

    # -- worker -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while True:
                    batch = self._pick()
                    if batch or (self._stopping and not any(self._finals.values())):
                        break
                    rest = self._partials_after - time.monotonic()
                    self._lock.wait(rest if self._side and rest > 0 else None)
                if not batch:
                    return
                self._running = batch
                self._changed()
            try:
                self._run(batch)
            finally:
                with self._lock:
                    self._running = []

    def _run(self, batch: list[Ticket]) -> None:
        pieces: list[AudioPiece] = [p for t in batch for p in t.job.pieces]
        filler = False
        if self.tail_filler_s > 0 and pieces:
            # Only where it fits the same window: a window of its own would cost a whole call.
            used = sum(p.duration_s for p in pieces) + self.gap_s * len(pieces)
            n = int(min(self.tail_filler_s, self.window_s - used - 0.05) * 16000)
            if n >= 8000:
                last = pieces[-1]
                pieces.append(AudioPiece(last.index, last.start_sample, last.audio[:n]))
                filler = True
        engine = self._packer if len({t.stream_id for t in batch}) > 1 else self.engine
        started_ns = time.time_ns()
        t0 = time.monotonic()
        try:
            transcripts, windows = engine.transcribe(pieces)
        except Exception as exc:  # delivered to every owner; the worker lives on
            log.exception("ASR call failed for %d job(s)", len(batch))
            for t in batch:
                t.future.set_exception(exc)
            return
        ended_ns = time.time_ns()
        if filler:
            transcripts = transcripts[:-1]
        with self._lock:
            # Partials are for spare capacity: after any call of ``d`` seconds, none starts for
            # ``partial_rest * d``; so they use at most 1 / (1 + partial_rest) of the worker, less
            # as finals take more of it, and none when finals keep it busy.
            now = time.monotonic()
            self._partials_after = max(self._partials_after, now + self.partial_rest * (now - t0))
            st = self._stats
            st.calls += 1
            st.busy_s += time.monotonic() - t0
            st.max_batch = max(st.max_batch, len(batch))
            st.mixed_calls += len({t.stream_id for t in batch}) > 1
            for t in batch:
                if t.kind == FINAL:
                    st.finals += 1
                elif t.kind == SPECULATIVE:
                    st.speculative += 1
                else:
                    st.partials += 1
        k = 0
        for t in batch:
            n = len(t.job.pieces)
            run = AsrRun(
                started_ns=started_ns,
                ended_ns=ended_ns,
                queue_wait_s=max(0.0, t0 - t.submitted),
                windows=windows,
                model=engine.model_name,
                device=engine.device,
                compute_type=engine.compute_type,
            )
            t.future.set_result((transcripts[k : k + n], run))
            k += n

    # -- picking (lock held) ------------------------------------------------------------------

    def _pick(self) -> list[Ticket]:
        """The tickets of the next call (empty: nothing to do now)."""
        now = time.monotonic()
        # Partials that waited too long are stale: drop them, whatever happens next.
        for sid, t in list(self._side.items()):
            if t.kind == PARTIAL and now - t.submitted > self.partial_max_age_s:
                del self._side[sid]
                self._drop(t)
        for q in self._finals.values():
            while q and q[0].future.cancelled():
                q.popleft()
        waiting = [s for s in self._order if self._finals.get(s)]
        if waiting:
            if self.pack_streams and len(waiting) >= self.pack_backlog:
                return self._pack(waiting, FINAL, self._budget)
            return self._one_stream(waiting[0])
        specs = sorted((t for t in self._side.values() if t.kind == SPECULATIVE), key=lambda t: t.submitted)
        if specs:
            if self.pack_streams and len(specs) >= self.pack_backlog:
                return self._pack([t.stream_id for t in specs], SPECULATIVE, self._budget)
            return self._one_stream(specs[0].stream_id)
        partials = sorted(self._side.values(), key=lambda t: t.submitted)
        if partials and now >= self._partials_after:
            if self.pack_streams:
                return self._pack([t.stream_id for t in partials], PARTIAL, self.partial_window_s)
            return self._one_stream(partials[0].stream_id)
        return []

    def _one_stream(self, sid: str) -> list[Ticket]:
        """One stream's queued finals (oldest first) and its speculative or partial job, as fit one
        window."""
        batch = _Batch(self._budget, self.gap_s)
        q = self._finals.get(sid)
        while q and batch.fits(q[0]):
            batch.take(q.popleft())
        side = self._side.get(sid)
        if side is not None and (side.kind != PARTIAL or not batch.tickets) and batch.fits(side):
            del self._side[sid]
            batch.take(side)
        self._served(sid)
        return batch.tickets

    def _pack(self, order: list[str], kind: int, window_s: float) -> list[Ticket]:
        """Jobs of ``kind`` from several streams, round-robin (one per stream per round), in one window."""
        batch = _Batch(window_s, self.gap_s)
        progress = True
        while progress:
            progress = False
            for sid in order:
                if kind == FINAL:
                    q = self._finals.get(sid)
                    t = q[0] if q else None
                else:
                    t = self._side.get(sid)
                    t = t if t is not None and t.kind == kind else None
                if t is None or not batch.fits(t):
                    continue
                if kind == FINAL:
                    self._finals[sid].popleft()
                else:
                    del self._side[sid]
                progress = batch.take(t) or progress
        if batch.tickets:
            self._served(batch.tickets[0].stream_id)
        return batch.tickets

    def _served(self, sid: str) -> None:
        """The stream served first goes to the back of the round-robin order."""
        try:
            self._order.remove(sid)
        except ValueError:
            pass
        self._order.append(sid)

    def _touch(self, stream_id: str) -> None:
        if stream_id not in self._order:
            self._order.append(stream_id)

    def _drop(self, ticket: Ticket) -> None:
        ticket.left()
        if not ticket.future.done():
            ticket.future.set_result(None)
            self._stats.partials_dropped += 1

    def _depth(self) -> tuple[int, int]:
        return sum(len(q) for q in self._finals.values()), len(self._side)

    def _changed(self) -> None:
        self._lock.notify_all()
        finals, partials = self._depth()
        try:
            self.observer.queue_depth(finals, partials)
        except Exception:  # telemetry must never break scheduling
            log.exception("queue observer failed")


def kind_name(kind: int) -> str:
    """``"final"``, ``"speculative"`` or ``"partial"``."""
    return _KIND_NAMES[kind]
