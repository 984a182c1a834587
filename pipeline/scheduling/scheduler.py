"""The ASR scheduler shared by all live streams and variants: worker threads (as many as the
model has CTranslate2 workers, sized from the cores) running what the
:class:`~speechpipe.pipeline.scheduling.asr_queue.AsrQueue` picks (finals before speculative jobs before
partials, fair between streams, stale partials dropped, never a final).

Whisper costs a fixed encoder pass per call (about 0.2-0.45 s for tiny.en on 2 CPU cores, whatever
the audio length), plus decoding; so a call carries all of one stream's queued finals that fit a
window. Finals' queues are bounded by the server, which stops reading a stream's audio while that
stream has ``max_queued_finals`` waiting (so a client that sends faster than the model keeps up
is slowed down by TCP, and memory stays bounded).

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
from dataclasses import dataclass, replace

from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.pipeline.scheduling.asr_queue import AsrQueue, SchedulerStats, Ticket
from speechpipe.stages.asr import AsrEngine, AsrRun, AudioPiece, Transcript
from speechpipe.stages.asr.packing import WindowFill
from speechpipe.stages.pcm import SAMPLE_RATE

log = logging.getLogger("speechpipe.scheduler")

#: what a fixed (upload) call is assumed to take until one has been measured (worker-seconds:
#: about a full window of tiny.en on one core of the 2-core machines here), and the weight of
#: each new measure in the moving mean.
FIXED_CALL_PRIOR_S = 1.0
FIXED_CALL_WEIGHT = 0.2
#: how long a speculative call that ran waits to be known used (its segment closed as predicted)
SPECULATIVE_KEEP_S = 60.0


@dataclass(frozen=True)
class Call:
    """An ASR call that carried promised work: when it ended, how long it ran, the streams whose
    audio it carried, and whether it was an upload's fixed window. A speculative job's call is
    promised work once its segment closed as predicted (it is that final's call); one whose
    speech went on was spare-time work, as a partial is."""

    ended: float
    seconds: float
    streams: frozenset[str]
    fixed: bool = False


class AsrScheduler:
    """Runs :class:`AsrJob` objects of many streams on one engine from one worker thread.

    Args:
        engine: the shared engine (one model).
        engines: more engines by variant name: a job whose ``variant`` names one runs on it (a
            call never mixes variants); the worker threads are shared, so the CPU is not
            oversubscribed however many models are loaded.
        shadow_max_queued: shadow jobs that may wait before the oldest is shed.
        pack_streams: let one Whisper call carry pieces of several streams (partials always,
            finals and speculative jobs under backlog). A piece a word crossed into or out of
            from another stream's slot is decoded again alone (``SchedulerStats.crossed``), so no
            word reaches another user's transcript. Off by default: it costs accuracy (see
            :class:`~speechpipe.pipeline.server.settings.ServerSettings`).
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
        workers: calls run at the same time, each from a thread of its own (the engine's model must
            have as many CTranslate2 workers, ``AsrConfig.workers``).
        batch_windows: windows one call may decode in one batch (a window each of several
            streams' finals, never mixing variants): a GPU decodes a batch in little more than
            the time of one window, a CPU in the time of them all. None: the engine's
            ``batch_size`` on CUDA, 1 elsewhere.
        clock: monotonic seconds (queue waits, staleness, partial rest).
    """

    def __init__(
        self,
        engine: AsrEngine,
        *,
        engines: dict[str, AsrEngine] | None = None,
        shadow_max_queued: int = 32,
        pack_streams: bool = False,
        stream_gap_s: float = 1.0,
        partial_max_age_s: float = 2.0,
        pack_backlog: int = 2,
        partial_window_s: float = 12.0,
        partial_rest: float = 1.0,
        tail_filler_s: float = 3.0,
        workers: int = 1,
        batch_windows: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        if batch_windows is None:
            batch_windows = engine.config.batch_size if engine.device == "cuda" else 1
        self.batch_windows = max(1, batch_windows)
        self.engines = dict(engines or {})
        gap = max(engine.config.gap_s, stream_gap_s)
        # Same model, wider gap between packed pieces: no second copy of the weights.
        self._packers = {
            name: AsrEngine(replace(e.config, gap_s=gap), model=e.model) if gap != e.config.gap_s else e
            for name, e in {"": engine, **self.engines}.items()
        }
        self.window_s = engine.config.window_s
        self.gap_s = gap
        self.partial_rest = partial_rest
        self.tail_filler_s = tail_filler_s
        self.clock = clock
        # The calls that carried promised work, until the server takes them (take_calls).
        self._calls: deque[Call] = deque(maxlen=10_000)
        # Each stream's last speculative call that ran, until its segment closes as predicted
        # (promote, reused: then it is a final's call) or the next one replaces it: (the job's
        # future, its job id, the call's share).
        self._speculative: dict[str, tuple[Future, int, Call]] = {}
        # the worker-seconds of a fixed (upload) call, a moving mean of the last ones
        self._fixed_call_s = FIXED_CALL_PRIOR_S
        # Audio one call may carry: the window less room for the filler (a lone long segment
        # still goes alone, without filler).
        budget = max(1.0, self.window_s - (tail_filler_s + gap if tail_filler_s > 0 else 0.0))
        self._queue = AsrQueue(
            budget_s=budget,
            gap_s=gap,
            pack_streams=pack_streams,
            pack_backlog=pack_backlog,
            partial_window_s=partial_window_s,
            partial_max_age_s=partial_max_age_s,
            shadow_max_queued=shadow_max_queued,
        )
        self._lock = threading.Condition()
        self.workers = workers
        self._running: list[list[Ticket]] = []  # the batch each busy worker is running now
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if not self._threads:
            for k in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"asr-worker-{k}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def take_calls(self) -> list[Call]:
        """The calls that carried promised work (finals: see :class:`Call`) since the last take, in
        the order they ended.
        The server's admission measures its load from them; it reads them when it decides, so a
        worker thread never calls up into the server."""
        with self._lock:
            calls = list(self._calls)
            self._calls.clear()
            # a speculative call not used within a minute never will be: its stream went on
            old = self.clock() - SPECULATIVE_KEEP_S
            for sid in [sid for sid, (_f, _j, call) in self._speculative.items() if call.ended < old]:
                del self._speculative[sid]
        return calls

    def stop(self, timeout: float | None = None) -> None:
        """Finish queued finals, drop queued partials, and stop the worker."""
        with self._lock:
            self._stopping = True
            self._queue.drop_all_side()
            self._queue.shed_all_shadow()
            self._lock.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._threads = []

    # -- submissions (any thread) -------------------------------------------------------------

    def submit_final(self, job: AsrJob, on_leave: Callable[[], None] | None = None) -> Future:
        """Queue a final job; its future resolves to ``(transcripts, run)``. Never dropped."""
        ticket = Ticket(job, self.clock(), JobKind.FINAL, on_leave=on_leave)
        with self._lock:
            self._queue.add_final(ticket)
            self._lock.notify_all()
        return ticket.future

    def submit_shadow(self, job: AsrJob) -> Future:
        """Queue a shadow variant's final job (``job.variant`` names its engine). Its future
        resolves to ``(transcripts, run)``, or to ``None`` when it was shed unrun (load, stop)."""
        ticket = Ticket(job, self.clock(), JobKind.SHADOW)
        with self._lock:
            if self._stopping:
                self._queue.shed(ticket)
                return ticket.future
            self._queue.add_shadow(ticket)
            self._lock.notify_all()
        return ticket.future

    def offer_partial(self, job: AsrJob, on_leave: Callable[[], None] | None = None) -> Future:
        """Offer a partial or speculative job (by its kind) for the stream's single slot, replacing
        a queued one. The future resolves to ``(transcripts, run)``, or to ``None`` if the job was
        dropped (replaced, stale, or the scheduler stopped) before it ran."""
        ticket = Ticket(job, self.clock(), job.kind, on_leave=on_leave)
        with self._lock:
            if self._stopping:
                self._queue.drop(ticket)
                return ticket.future
            self._queue.offer_side(ticket)
            self._lock.notify_all()
        return ticket.future

    def promote(self, future: Future) -> bool:
        """Turn a queued speculative job into a final (it now holds a closed segment's exact
        audio). True if it was still queued or already running/done; False if it was dropped, in
        which case its owner submits the final itself."""
        with self._lock:
            if self._queue.promote(future):
                self._lock.notify_all()
                return True
            ran = next((sid for sid, (f, _j, _c) in self._speculative.items() if f is future), None)
            if ran is not None:
                self._calls.append(self._speculative.pop(ran)[2])
            running = [t for batch in self._running for t in batch if t.future is future]
            for t in running:
                t.kind = JobKind.FINAL  # its call, when it ends, is this final's call
            if running:
                return True
        return future.done() and not future.cancelled() and future.exception() is None and future.result() is not None

    def reused(self, stream_id: str, job_id: int) -> None:
        """The stream's speculative job ``job_id`` had run when its segment closed as predicted:
        its transcription is the final, so its call counts as that final's (admission)."""
        with self._lock:
            ran = self._speculative.get(stream_id)
            if ran is not None and ran[1] == job_id:
                self._calls.append(self._speculative.pop(stream_id)[2])

    def drop_partial(self, stream_id: str) -> None:
        """Drop the stream's queued partial/speculative job, if any (its segment changed)."""
        with self._lock:
            if self._queue.drop_side(stream_id):
                self._lock.notify_all()

    def cancel_stream(self, stream_id: str) -> int:
        """Forget every queued job of a stream that went away; returns how many were removed.
        A job already running finishes, and its result is ignored by its owner."""
        with self._lock:
            n = self._queue.cancel_stream(stream_id)
            self._speculative.pop(stream_id, None)
            self._lock.notify_all()
            return n

    # -- introspection ------------------------------------------------------------------------

    def depth(self) -> tuple[int, int]:
        """(queued finals, queued partials/speculative)."""
        with self._lock:
            return self._queue.depth()

    def shadow_depth(self) -> int:
        """Shadow jobs waiting."""
        with self._lock:
            return self._queue.shadow_depth

    def streams(self) -> set[str]:
        """Streams with queued or running work."""
        with self._lock:
            return self._queue.streams() | {t.stream_id for batch in self._running for t in batch}

    def stats(self) -> SchedulerStats:
        with self._lock:
            return replace(self._queue.stats)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._running and self._queue.depth() == (0, 0) and not self._queue.shadow_depth

    # -- worker -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while True:
                    batch = self._queue.pick(self.clock(), self._shadow_ok(), self._fixed_ok())
                    if batch or (self._stopping and not self._queue.has_finals):
                        break
                    rest = self._queue.partials_after - self.clock()
                    self._lock.wait(rest if self._queue.has_side and rest > 0 else None)
                if not batch:
                    self._lock.notify_all()  # the other workers see the stop too
                    return
                windows = [batch]
                if self._batchable(batch):
                    while len(windows) < self.batch_windows and (more := self._queue.pick_like(batch[0])):
                        windows.append(more)
                batch = [t for w in windows for t in w]
                self._running.append(batch)
                self._queue.stats.max_concurrent = max(self._queue.stats.max_concurrent, len(self._running))
            try:
                self._run(windows)
            finally:
                with self._lock:
                    self._running.remove(batch)
                    self._lock.notify_all()

    def _batchable(self, batch: list[Ticket]) -> bool:
        """Whether more windows may join this one's call: a live stream's own finals or
        speculative job (a window shared by streams, an upload's window, partials and shadow work
        go alone)."""
        first = batch[0]
        return (
            self.batch_windows > 1
            and not first.job.fixed
            and first.kind in (JobKind.FINAL, JobKind.SPECULATIVE)
            and len({t.stream_id for t in batch}) == 1
        )

    def _shadow_ok(self) -> bool:
        """A shadow call may start while it leaves a worker free for the clients' work (with one
        worker: only when that worker is idle)."""
        shadow = sum(1 for batch in self._running if batch[0].kind is JobKind.SHADOW)
        return shadow < max(1, self.workers - 1) and len(self._running) < self.workers

    def _fixed_ok(self) -> bool:
        """A fixed call (an upload's window) may start while it leaves a worker free for the live
        streams' finals (with one worker: the queue's order alone keeps live finals first)."""
        fixed = sum(1 for batch in self._running if batch[0].job.fixed)
        return fixed < max(1, self.workers - 1)

    def fixed_backlog(self) -> tuple[int, float]:
        """Upload windows queued or running, and the worker-seconds they are expected to take
        (their count times the mean of the last fixed calls; :data:`FIXED_CALL_PRIOR_S` each
        until one has run)."""
        with self._lock:
            n = len(self._queue.fixed_waiting()) + sum(1 for b in self._running if b[0].job.fixed)
            return n, n * self._fixed_call_s

    def _engine_for(self, batch: list[Ticket]) -> AsrEngine:
        variant = batch[0].job.variant
        if len({t.stream_id for t in batch}) > 1:
            return self._packers.get(variant, self._packers[""])
        return self.engines.get(variant, self.engine)

    def _run(self, windows: list[list[Ticket]]) -> None:
        batch = [t for w in windows for t in w]
        engine = self._engine_for(windows[0])
        t0 = self.clock()
        fixed = batch[0].job.fixed
        try:
            if fixed:  # one upload window, decoded as offline decodes it: no filler, continuations on
                [job] = [t.job for t in batch]
                results = engine.run([job.pieces], job.decoding, resume=True)
            else:
                results = transcribe_calls(
                    engine, [[t.job for t in w] for w in windows], self.window_s, self.gap_s, self.tail_filler_s
                )
        except Exception as exc:  # delivered to every owner; the worker lives on
            log.exception("ASR call failed for %d job(s)", len(batch))
            for t in batch:
                t.future.set_exception(exc)
            return
        with self._lock:
            # Partials are for spare capacity: after any call of ``d`` seconds, none starts for
            # ``partial_rest * d``; so they use at most 1 / (1 + partial_rest) of the worker, less
            # as finals take more of it, and none when finals keep it busy.
            now = self.clock()
            q = self._queue
            q.partials_after = max(q.partials_after, now + self.partial_rest * (now - t0))
            st = q.stats
            st.calls += 1
            st.busy_s += now - t0
            st.max_batch = max(st.max_batch, len(batch))
            st.mixed_calls += any(len({t.stream_id for t in w}) > 1 for w in windows)
            st.max_windows = max(st.max_windows, len(windows))
            # each window's jobs share its run: count each window's run once
            passes, k = [], 0
            for w in windows:
                passes += results[k][1].windows if k < len(results) else []
                k += len(w)
            st.windows += len(passes)
            st.crossed += sum(p.crossed for p in passes)
            if fixed:
                st.fixed += 1
                self._fixed_call_s += FIXED_CALL_WEIGHT * (now - t0 - self._fixed_call_s)
            for t in batch:
                if t.kind is JobKind.FINAL:
                    st.finals += 1
                elif t.kind is JobKind.SPECULATIVE:
                    st.speculative += 1
                elif t.kind is JobKind.SHADOW:
                    st.shadow += 1
                else:
                    st.partials += 1
            streams = frozenset(t.stream_id for t in batch)
            if any(t.kind is JobKind.FINAL for t in batch):
                self._calls.append(Call(now, now - t0, streams, fixed))
            else:  # speculative jobs' calls wait to be known used; each its share of the call
                specs = [t for t in batch if t.kind is JobKind.SPECULATIVE]
                for t in specs:
                    share = Call(now, (now - t0) / len(specs), streams)
                    self._speculative[t.stream_id] = (t.future, t.job.job_id, share)
        for t, (transcripts, run) in zip(batch, results):
            t.future.set_result((transcripts, replace(run, queue_wait_s=max(0.0, t0 - t.submitted))))


def transcribe_call(
    engine: AsrEngine, jobs: list[AsrJob], window_s: float, gap_s: float, tail_filler_s: float
) -> list[tuple[list[Transcript], AsrRun]]:
    """One Whisper call for ``jobs``, their pieces in one window: :func:`transcribe_calls` of one."""
    return transcribe_calls(engine, [jobs], window_s, gap_s, tail_filler_s)


def transcribe_calls(
    engine: AsrEngine, windows: list[list[AsrJob]], window_s: float, gap_s: float, tail_filler_s: float
) -> list[tuple[list[Transcript], AsrRun]]:
    """One engine call for several windows of jobs (decoded in batches of the engine's
    ``batch_size``), each window's jobs' pieces in one group: each job's transcripts, in the order
    of the jobs, each with its window's run and its share of it. The first ``tail_filler_s`` of a
    window's last piece are appended once more where they fit the window (a window of its own
    would cost a whole call), and their words discarded. Jobs of several streams in one window:
    each piece is owned by its stream, so that no word passes from one stream's piece into
    another's (:func:`~speechpipe.stages.asr.windows.crossings`)."""
    groups: list[list[AudioPiece]] = []
    fillers: list[bool] = []
    for jobs in windows:
        pieces = [p for job in jobs for p in job.pieces]
        if len({job.stream_id for job in jobs}) > 1:
            pieces = [replace(p, owner=job.stream_id) for job in jobs for p in job.pieces]
        filler = False
        if tail_filler_s > 0 and pieces:
            fill = WindowFill(window_s, gap_s)
            for p in pieces:
                fill.add(p.duration_s)
            n = int(min(tail_filler_s, fill.room_s - 0.05) * SAMPLE_RATE)
            if n >= SAMPLE_RATE // 2:
                last = pieces[-1]
                pieces.append(AudioPiece(last.index, last.start_sample, last.audio[:n], last.owner))
                filler = True
        groups.append(pieces)
        fillers.append(filler)
    # No continuations: which pieces share a live window depends on arrival times, and a
    # continuation reads the window's text so far, so the same audio would decode differently.
    runs = engine.run(groups, windows[0][0].decoding, resume=False)
    out = []
    for jobs, filler, (transcripts, run) in zip(windows, fillers, runs):
        if filler:
            transcripts = transcripts[:-1]
        total = sum(job.audio_s for job in jobs) or 1.0
        k = 0
        for job in jobs:
            share = run if len(jobs) == 1 else replace(run, share=job.audio_s / total)
            out.append((transcripts[k : k + len(job.pieces)], share))
            k += len(job.pieces)
    return out
