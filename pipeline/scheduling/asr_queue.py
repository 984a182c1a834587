"""What the ASR worker runs next: the live streams' queued jobs and the choice of the next call.

Pure and synchronous (no thread, no lock, time passed in): :class:`~speechpipe.pipeline.scheduling.scheduler.AsrScheduler`
holds one :class:`AsrQueue` under its lock and runs what :meth:`AsrQueue.pick` returns. Each call is
one of, in this order of priority:

1. finals: the next stream in round-robin order that has finals waiting gets all of them that fit
   one window, plus its speculative job if it fits. With ``pack_streams`` (off by default) and
   finals of ``pack_backlog`` or more streams waiting, one call carries finals of several streams
   instead, one per stream per round;
2. speculative jobs (a segment transcribed during the VAD's hangover), finals-to-be, the same way;
3. fixed finals (an upload's windows, fixed by its audio: :attr:`AsrJob.fixed`), one job per call
   and never with another, round-robin between uploads, while the caller allows one more such
   call (the scheduler keeps a worker for the live streams);
4. partials, only once ``partials_after`` has passed (with ``pack_streams``, several streams'
   partials in a window of at most ``partial_window_s``); a partial that waited longer than
   ``partial_max_age_s`` is dropped as stale;
5. shadow jobs (a shadow variant's finals, never shown), oldest first, while the caller allows one
   more shadow call (the scheduler keeps a worker free for the clients). At most
   ``shadow_max_queued`` wait: beyond that the oldest is shed (its future resolves to ``None``,
   counted), so shadow work is what gives way under load.

Each stream has one slot for non-final work (a partial or a speculative job): offering a new one
replaces the one still queued, which is dropped (its future resolves to ``None``). Finals are
never dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.stages.asr.packing import WindowFill

log = logging.getLogger("speechpipe.scheduler")


@dataclass(eq=False)
class Ticket:
    """A job waiting for (or holding) the worker; ``kind`` is its class in the queue (a promoted
    speculative job is served as a final)."""

    job: AsrJob
    submitted: float
    kind: JobKind = JobKind.FINAL
    future: Future = field(default_factory=Future)
    #: called once when the ticket leaves the queue (taken by the worker, dropped or cancelled);
    #: from the worker thread when taken, under the scheduler's lock: it must be quick. A live
    #: session's reports an AsrDequeued event, which only queues it for the stream's observers
    #: (their worker thread keeps the queue depth), so no observer runs on an ASR worker.
    on_leave: Callable[[], None] | None = None

    def left(self) -> None:
        callback, self.on_leave = self.on_leave, None
        if callback is not None:
            try:
                callback()
            except Exception:  # whatever it does must never break scheduling
                log.exception("on_leave callback failed")

    @property
    def stream_id(self) -> str:
        return self.job.stream_id


@dataclass
class SchedulerStats:
    """Counters since start."""

    calls: int = 0
    finals: int = 0
    speculative: int = 0
    partials: int = 0
    partials_dropped: int = 0
    shadow: int = 0
    shadow_shed: int = 0
    fixed: int = 0  # fixed finals (upload windows) run
    busy_s: float = 0.0
    max_batch: int = 0
    mixed_calls: int = 0  # calls that carried audio of more than one stream
    #: pieces of those calls decoded again alone because a word crossed between streams' slots
    crossed: int = 0
    #: Whisper encoder passes (windows) of every call, retries and second decodes included
    windows: int = 0
    max_concurrent: int = 0  # the most calls that ran at the same time
    max_windows: int = 0  # the most windows one call decoded in one batch


class AsrQueue:
    """The queued jobs of every stream, and the policy that picks the tickets of the next call.

    Args:
        budget_s: the most audio one call may carry (a lone longer job still goes alone).
        gap_s: silence between packed jobs.
        pack_streams: let one call carry jobs of several streams (see the module docstring).
        pack_backlog: how many streams must have finals waiting before they share calls.
        partial_window_s: the most audio one call of partials carries (with ``pack_streams``).
        partial_max_age_s: a partial that waited longer is dropped instead of run.
        shadow_max_queued: shadow jobs that may wait; more sheds the oldest.
    """

    def __init__(
        self,
        *,
        budget_s: float,
        gap_s: float,
        pack_streams: bool = False,
        pack_backlog: int = 2,
        partial_window_s: float = 12.0,
        partial_max_age_s: float = 2.0,
        shadow_max_queued: int = 32,
    ) -> None:
        self.budget_s = budget_s
        self.gap_s = gap_s
        self.pack_streams = pack_streams
        self.pack_backlog = pack_backlog
        self.partial_window_s = partial_window_s
        self.partial_max_age_s = partial_max_age_s
        self.shadow_max_queued = shadow_max_queued
        #: no partial call starts before this (monotonic) time; see ``server.partial_rest``.
        self.partials_after = 0.0
        self.stats = SchedulerStats()
        self._finals: dict[str, deque[Ticket]] = {}
        self._side: dict[str, Ticket] = {}  # one partial or speculative job per stream
        self._order: deque[str] = deque()  # round-robin order of streams
        self._shadow: deque[Ticket] = deque()  # shadow jobs of every stream, oldest first
        self._fixed: dict[str, deque[Ticket]] = {}  # fixed finals (uploads), per stream
        self._fixed_order: deque[str] = deque()  # round-robin order of the uploads

    # -- submissions ------------------------------------------------------------------------------

    def add_final(self, ticket: Ticket) -> None:
        if ticket.job.fixed:
            self._fixed.setdefault(ticket.stream_id, deque()).append(ticket)
            if ticket.stream_id not in self._fixed_order:
                self._fixed_order.append(ticket.stream_id)
            return
        self._finals.setdefault(ticket.stream_id, deque()).append(ticket)
        self._touch(ticket.stream_id)

    def add_shadow(self, ticket: Ticket) -> int:
        """Queue a shadow ticket; returns how many older shadow tickets were shed to make room."""
        self._shadow.append(ticket)
        shed = 0
        while len(self._shadow) > self.shadow_max_queued:
            self.shed(self._shadow.popleft())
            shed += 1
        return shed

    def shed(self, ticket: Ticket) -> None:
        """Give up a shadow ticket unrun: its future resolves to None, counted as shed."""
        ticket.left()
        if not ticket.future.done():
            ticket.future.set_result(None)
            self.stats.shadow_shed += 1

    def shed_all_shadow(self) -> None:
        while self._shadow:
            self.shed(self._shadow.popleft())

    def offer_side(self, ticket: Ticket) -> None:
        """Put a partial or speculative ticket in its stream's slot, dropping the one queued there."""
        old = self._side.get(ticket.stream_id)
        if old is not None:
            self.drop(old)
        self._side[ticket.stream_id] = ticket
        self._touch(ticket.stream_id)

    def promote(self, future: Future) -> bool:
        """Serve the queued side ticket of ``future`` as a final; False if it is not queued."""
        for sid, t in self._side.items():
            if t.future is future:
                del self._side[sid]
                t.kind = JobKind.FINAL
                self._finals.setdefault(sid, deque()).appendleft(t)
                return True
        return False

    def drop_side(self, stream_id: str) -> bool:
        """Drop the stream's queued partial/speculative ticket; True if there was one."""
        t = self._side.pop(stream_id, None)
        if t is not None:
            self.drop(t)
        return t is not None

    def cancel_stream(self, stream_id: str) -> int:
        """Forget every queued ticket of a stream; returns how many were removed. Its shadow jobs
        stay: they are measured after the stream is over."""
        tickets = list(self._finals.pop(stream_id, ())) + list(self._fixed.pop(stream_id, ()))
        if stream_id in self._fixed_order:
            self._fixed_order.remove(stream_id)
        side = self._side.pop(stream_id, None)
        if side is not None:
            tickets.append(side)
        for t in tickets:
            t.future.cancel()
            t.left()
        if stream_id in self._order:
            self._order.remove(stream_id)
        return len(tickets)

    def drop_all_side(self) -> None:
        for t in list(self._side.values()):
            self.drop(t)
        self._side.clear()

    def drop(self, ticket: Ticket) -> None:
        """Take ``ticket`` out of service: it left the queue and its future resolves to None."""
        ticket.left()
        if not ticket.future.done():
            ticket.future.set_result(None)
            self.stats.partials_dropped += 1

    # -- state --------------------------------------------------------------------------------

    def depth(self) -> tuple[int, int]:
        """(queued finals, fixed ones included; queued partials/speculative)."""
        finals = sum(len(q) for q in self._finals.values()) + sum(len(q) for q in self._fixed.values())
        return finals, len(self._side)

    def fixed_waiting(self) -> list[AsrJob]:
        """The fixed finals (upload windows) waiting, oldest of each upload first."""
        return [t.job for q in self._fixed.values() for t in q]

    @property
    def shadow_depth(self) -> int:
        return len(self._shadow)

    def streams(self) -> set[str]:
        """Streams with queued work."""
        return {s for s, q in self._finals.items() if q} | {s for s, q in self._fixed.items() if q} | set(self._side)

    @property
    def has_finals(self) -> bool:
        return any(self._finals.values()) or any(self._fixed.values())

    @property
    def has_side(self) -> bool:
        return bool(self._side)

    # -- picking ------------------------------------------------------------------------------

    def pick(self, now: float, shadow_ok: bool = True, fixed_ok: bool = True) -> list[Ticket]:
        """The tickets of the next call (empty: nothing to do now); stale partials are dropped.
        ``shadow_ok`` / ``fixed_ok``: whether a shadow call / a fixed (upload) call may start now."""
        for sid, t in list(self._side.items()):
            if t.kind is JobKind.PARTIAL and now - t.submitted > self.partial_max_age_s:
                del self._side[sid]
                self.drop(t)
        self._drop_cancelled_finals()
        waiting = [s for s in self._order if self._finals.get(s)]
        if waiting:
            if self.pack_streams and len(waiting) >= self.pack_backlog:
                return self._pack(waiting, JobKind.FINAL, self.budget_s)
            return self._one_stream(waiting[0])
        specs = sorted((t for t in self._side.values() if t.kind is JobKind.SPECULATIVE), key=lambda t: t.submitted)
        if specs:
            if self.pack_streams and len(specs) >= self.pack_backlog:
                return self._pack([t.stream_id for t in specs], JobKind.SPECULATIVE, self.budget_s)
            return self._one_stream(specs[0].stream_id)
        if fixed_ok:
            fixed = self._next_fixed()
            if fixed:
                return fixed
        partials = sorted(self._side.values(), key=lambda t: t.submitted)
        if partials and now >= self.partials_after:
            if self.pack_streams:
                return self._pack([t.stream_id for t in partials], JobKind.PARTIAL, self.partial_window_s)
            return self._one_stream(partials[0].stream_id)
        while shadow_ok and self._shadow:
            t = self._shadow.popleft()
            batch: list[Ticket] = []
            if self._take(WindowFill(self.budget_s, self.gap_s), batch, t):
                return batch
        return []

    def pick_like(self, like: Ticket) -> list[Ticket]:
        """One more window for a call that already carries ``like``'s (a device that decodes
        several windows in one batch): the next stream's finals, else the oldest speculative
        job, of the same variant and decoding, as :meth:`pick` would take them alone; never a
        partial, an upload's window or shadow work. Empty when none is waiting."""

        def same(t: Ticket) -> bool:
            return (t.job.variant, t.job.decoding) == (like.job.variant, like.job.decoding)

        self._drop_cancelled_finals()
        for sid in [s for s in self._order if self._finals.get(s)]:
            if same(self._finals[sid][0]):
                return self._one_stream(sid)
        specs = sorted(
            (t for t in self._side.values() if t.kind is JobKind.SPECULATIVE and same(t)), key=lambda t: t.submitted
        )
        return self._one_stream(specs[0].stream_id) if specs else []

    def _drop_cancelled_finals(self) -> None:
        """Finals cancelled by their owner leave the head of their stream's queue."""
        for q in self._finals.values():
            while q and q[0].future.cancelled():
                q.popleft()

    def _next_fixed(self) -> list[Ticket]:
        """The oldest fixed final of the next upload in round-robin order, alone."""
        for _ in range(len(self._fixed_order)):
            sid = self._fixed_order.popleft()
            q = self._fixed.get(sid)
            while q:
                t = q.popleft()
                t.left()
                if t.future.set_running_or_notify_cancel():
                    if q:
                        self._fixed_order.append(sid)
                    else:
                        del self._fixed[sid]
                    return [t]
            self._fixed.pop(sid, None)
        return []

    def _take(self, fill: WindowFill, batch: list[Ticket], t: Ticket) -> bool:
        t.left()
        if not t.future.set_running_or_notify_cancel():
            return False  # cancelled by its owner
        fill.add(t.job.audio_s)
        batch.append(t)
        return True

    def _one_stream(self, sid: str) -> list[Ticket]:
        """One stream's queued finals (oldest first) and its speculative or partial job, as fit one
        window."""
        fill, batch = WindowFill(self.budget_s, self.gap_s), []
        q = self._finals.get(sid)
        while q and fill.fits(q[0].job.audio_s) and _joins(batch, q[0]):
            self._take(fill, batch, q.popleft())
        side = self._side.get(sid)
        if (
            side is not None
            and (side.kind is not JobKind.PARTIAL or not batch)
            and fill.fits(side.job.audio_s)
            and _joins(batch, side)
        ):
            del self._side[sid]
            self._take(fill, batch, side)
        self._served(sid)
        return batch

    def _pack(self, order: list[str], kind: JobKind, window_s: float) -> list[Ticket]:
        """Jobs of ``kind`` from several streams, round-robin (one per stream per round), in one window."""
        fill, batch = WindowFill(window_s, self.gap_s), []
        progress = True
        while progress:
            progress = False
            for sid in order:
                if kind is JobKind.FINAL:
                    q = self._finals.get(sid)
                    t = q[0] if q else None
                else:
                    t = self._side.get(sid)
                    t = t if t is not None and t.kind is kind else None
                if t is None or not fill.fits(t.job.audio_s):
                    continue
                if not _joins(batch, t):
                    continue  # one call runs one variant's engine, with one prompt and temperature
                if kind is JobKind.FINAL:
                    self._finals[sid].popleft()
                else:
                    del self._side[sid]
                progress = self._take(fill, batch, t) or progress
        if batch:
            self._served(batch[0].stream_id)
        return batch

    def _served(self, sid: str) -> None:
        """The stream served first goes to the back of the round-robin order."""
        if sid in self._order:
            self._order.remove(sid)
        self._order.append(sid)

    def _touch(self, stream_id: str) -> None:
        if stream_id not in self._order:
            self._order.append(stream_id)


def _joins(batch: list[Ticket], t: Ticket) -> bool:
    """Whether ``t``'s job may share a window with ``batch``'s: one variant's engine, one prompt
    and temperature, and no prefix (a job whose decode must begin with its segment's committed
    words holds its window alone: the prefix is the start of the window's transcript)."""
    if not batch:
        return True
    first = batch[0].job
    if first.decoding.prefix or t.job.decoding.prefix:
        return False
    return (t.job.variant, t.job.decoding) == (first.variant, first.decoding)
