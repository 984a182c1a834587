"""The observer protocol: what happens in a stream's pipeline, as typed events, for every observer.

A :class:`~speechpipe.pipeline.session.StreamSession` reports its life as events (a stream
started, audio was fed, the VAD decided something, an ASR job was queued, left the queue or
completed, a final transcript was made, the stream ended); a server reports streams it turned
away. An observer is anything with an ``on_event(event)`` method (telemetry, the evaluation's
collector, a test's recorder). :class:`Observers` fans events out to several observers: each one
gets every event, in order, even when an earlier one raised.

Observers never hurt a stream. An error an observer raises stays in the fan-out: it is counted by
observer (an :class:`ObserverFaults` tally, which telemetry reads as the
``speechpipe.observer.errors`` metric), logged once per observer and event kind, and the stream
and the other observers go on. Observers that do real work (exports, stores, feature
computation) run behind :class:`BackgroundObservers`: a bounded queue drained in order by one
worker thread, so neither the event loop nor an ASR worker waits for them; what overflows is
counted (``speechpipe.observer.dropped``), never waited for.

This module is the vocabulary shared by the pipeline and its observers, so it imports nothing of
the pipeline: telemetry may import it (and the stages) and nothing else of ``pipeline/``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from speechpipe.stages.asr import AsrRun, AudioPiece, Decoding, Transcript
from speechpipe.stages.vad import SpeechSegment, VadEvent

log = logging.getLogger("speechpipe.observers")

_job_ids = itertools.count(1)


class JobKind(StrEnum):
    """What an ASR job is for, in the order the scheduler serves them."""

    #: the closed segments' final transcripts (never dropped).
    FINAL = "final"
    #: the open segment as it will close if the pause lasts: a final-to-be (see
    #: :meth:`~speechpipe.pipeline.session.StreamSession.speculative_job`).
    SPECULATIVE = "speculative"
    #: the open segment so far, shown as a partial transcript.
    PARTIAL = "partial"
    #: a shadow variant's final, never shown: run below everything the clients wait for, shed
    #: first under load.
    SHADOW = "shadow"


@dataclass
class AsrJob:
    """Work for the ASR stage: pieces of one stream's audio to transcribe together.

    ``segments`` are the VAD segments behind a final job (one piece per segment); partial and
    speculative jobs carry the open segment's audio and no segment.
    """

    stream_id: str
    kind: JobKind
    pieces: list[AudioPiece]
    segments: list[SpeechSegment] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    job_id: int = field(default_factory=lambda: next(_job_ids))
    #: the pipeline variant whose engine runs the job ("" : the scheduler's own engine).
    variant: str = ""
    #: the stream's prompt and first temperature (one call never mixes two).
    decoding: Decoding = field(default_factory=Decoding)
    #: its pieces are one window fixed by the audio (a file or an upload, packed offline's way):
    #: the scheduler runs it as a call of its own, never with another job, so the same audio is
    #: decoded the same way whenever a worker takes it.
    fixed: bool = False

    @property
    def audio_s(self) -> float:
        return sum(p.duration_s for p in self.pieces)


# -- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStarted:
    """A session was created for a stream of ``sample_rate`` Hz, ``channels`` channels."""

    stream_id: str
    sample_rate: int
    channels: int
    vad_config_id: str


@dataclass(frozen=True)
class AudioFed:
    """A chunk was fed, as received (float32, ``(n,)`` or ``(n, channels)``), with the time
    resampling and VAD took on it; reported before the chunk's VAD events."""

    stream_id: str
    samples: np.ndarray = field(repr=False)
    sample_rate: int
    vad_ns: int


@dataclass(frozen=True)
class VadOutput:
    """The VAD reported ``event`` (a segment started, closed or was discarded), in stream order."""

    stream_id: str
    event: VadEvent


@dataclass(frozen=True)
class AsrQueued:
    """A driver queued ``job`` for the engine (the inline offline driver queues nothing)."""

    stream_id: str
    job: AsrJob


@dataclass(frozen=True)
class AsrDequeued:
    """A queued ``job`` left the queue: taken by the engine, dropped as stale or replaced, or
    cancelled. Reported from the scheduler's worker thread."""

    stream_id: str
    job: AsrJob


@dataclass(frozen=True)
class AsrCompleted:
    """The transcripts of ``job`` came back (one per piece), with how the call ran; reported before
    the final transcripts they make."""

    stream_id: str
    job: AsrJob
    transcripts: list[Transcript]
    run: AsrRun | None


@dataclass(frozen=True)
class FinalTranscript:
    """The final transcript of one VAD segment: an event the session returns and reports.

    ``latency_s`` is the final latency, one definition everywhere (sent to live clients, exported
    as a metric): the time from the arrival of the audio at the segment's end to this final.
    """

    stream_id: str
    segment: SpeechSegment
    transcript: Transcript
    latency_s: float = 0.0


@dataclass(frozen=True)
class FinalLost:
    """The final of ``segment`` will never be made (``reason``: ``drain_timeout`` when the server
    stopped before it was ready, ``asr_failed``, ``disconnected`` when its client went away,
    ``abandoned`` otherwise): never silent, always reported."""

    stream_id: str
    segment: SpeechSegment
    reason: str


@dataclass(frozen=True)
class SegmentCaptioned:
    """What a live segment's partials cost their reader, reported after its final (a stream whose
    client asked for partials; :mod:`speechpipe.pipeline.live.captions`).

    ``first_partial_s``: from ``speech_start`` to the first partial shown (None: none was).
    ``erased_chars`` / ``stable_erased_chars``: characters the updates and the final took back
    from the text shown / from the committed text; ``final_chars``: the final's length.
    ``kept``: the final begins with the committed words. ``redecoded``: its first decode's words
    were not the committed ones, and it was decoded again with them as Whisper's prefix."""

    stream_id: str
    index: int
    partials: int
    first_partial_s: float | None
    erased_chars: int
    stable_erased_chars: int
    final_chars: int
    kept: bool
    redecoded: bool = False


@dataclass(frozen=True)
class StreamEnded:
    """The stream is over: drained (``finished``: every final produced) or abandoned, with what
    stopped it early (``error``), the VAD's frame counts over the whole stream, and how many input
    samples were not finite and had to be replaced."""

    stream_id: str
    finished: bool
    error: BaseException | None
    speech_frames: int
    total_frames: int
    sanitized_samples: int = 0


@dataclass(frozen=True)
class StreamRejected:
    """A server turned a stream away before any session existed (``reason``: ``busy`` at
    ``max_streams``, ``capacity`` when its ASR workers are full,
    ``not_ready``, ``shutting_down`` or ``unauthorized``)."""

    reason: str


Event = (
    StreamStarted
    | AudioFed
    | VadOutput
    | AsrQueued
    | AsrDequeued
    | AsrCompleted
    | FinalTranscript
    | FinalLost
    | SegmentCaptioned
    | StreamEnded
    | StreamRejected
)


class Observer(Protocol):
    """Anything that wants to know: gets every event (and ignores those it has no use for)."""

    def on_event(self, event: Event) -> None: ...


def observer_name(observer: object) -> str:
    """What an observer is called in logs and in the ``observer`` attribute of its metrics: its
    ``name`` attribute when it has a non-empty string one, else its class name."""
    name = getattr(observer, "name", None)
    return name if isinstance(name, str) and name else type(observer).__name__


class ObserverFaults:
    """A thread-safe tally of what observers cost: errors they raised and events they missed
    because their queue was full, by observer name.

    The fan-outs write it and telemetry reads it (as observable counters), so the count reaches
    the metrics without the fan-out knowing of telemetry. One process-wide tally,
    :data:`FAULTS`, is the default; tests may give a fan-out its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()

    def record_error(self, name: str, kind: str, error: BaseException) -> None:
        """Observer ``name`` raised ``error`` on an event of type ``kind``. Logged with its
        traceback the first time per observer and kind: a broken observer raises on every event
        of a kind, and a log line per event would drown the server's log."""
        with self._lock:
            self._errors[name] = self._errors.get(name, 0) + 1
            first = (name, kind) not in self._logged
            self._logged.add((name, kind))
        if first:
            log.error(
                "observer %s failed on %s (logged once; every failure is counted in speechpipe.observer.errors)",
                name,
                kind,
                exc_info=(type(error), error, error.__traceback__),
            )

    def record_drop(self, name: str) -> None:
        """An event meant for observer ``name`` was dropped: its queue was full."""
        with self._lock:
            self._dropped[name] = self._dropped.get(name, 0) + 1
            first = (name, "dropped") not in self._logged
            self._logged.add((name, "dropped"))
        if first:
            log.warning(
                "observer %s is too slow: events it missed are dropped (counted in speechpipe.observer.dropped)", name
            )

    def errors(self) -> dict[str, int]:
        """Errors raised so far, by observer name."""
        with self._lock:
            return dict(self._errors)

    def dropped(self) -> dict[str, int]:
        """Events dropped so far, by observer name."""
        with self._lock:
            return dict(self._dropped)


#: the process's tally, the one telemetry reports unless it is given another.
FAULTS = ObserverFaults()


class Observers:
    """Several observers as one: every observer gets every event, in the order given.

    An observer that raises does not keep the event from the others, and the error goes no
    further: it is counted in ``faults`` (by default the process's :data:`FAULTS`) and logged
    once per observer and event kind. So what a stream does, and what its client gets, never
    depends on its observers.
    """

    def __init__(self, observers: Iterable[Observer | None] = (), faults: ObserverFaults | None = None) -> None:
        self.observers: tuple[Observer, ...] = tuple(o for o in observers if o is not None)
        self.names: tuple[str, ...] = tuple(observer_name(o) for o in self.observers)
        self.faults = faults if faults is not None else FAULTS

    def on_event(self, event: Event) -> None:
        for observer, name in zip(self.observers, self.names):
            try:
                observer.on_event(event)
            except Exception as exc:  # noqa: BLE001  # counted and logged: an observer never hurts a stream
                self.faults.record_error(name, type(event).__name__, exc)

    def __bool__(self) -> bool:
        return bool(self.observers)


#: events a full queue still takes: a stream's start, its finals (made or lost) and its end. Their
#: number is bounded by the stream's segments, and without them an observer would keep a
#: stream open forever (telemetry's spans, the deployment's ledger) or miss its outcome.
KEPT_EVENTS = (StreamStarted, FinalTranscript, FinalLost, StreamEnded)


class BackgroundObservers:
    """Observers run off the hot path: a bounded queue of events, delivered in order by one worker
    thread.

    :meth:`wrap` gives the observer to hand to a session: its ``on_event`` only queues the event
    (any thread: the event loop, an ASR worker reporting a job that left the queue) and returns.
    One worker delivers the queued events in the order they were queued, so a stream's observers
    see its events in the order the session reported them (telemetry builds its span tree from
    that order). When ``maxsize`` events wait, a new one is dropped and counted for every observer
    it was meant for (:meth:`ObserverFaults.record_drop`), except the :data:`KEPT_EVENTS`, which are
    queued anyway: the producer is never blocked.

    :meth:`stop` delivers what is queued, then ends the worker. Events queued before
    :meth:`start` wait for it; events reported after :meth:`stop` are delivered at once, on the
    caller's thread (nothing is lost, and by then the stream is over).

    Events are queued as they are, not copied: whoever reports one must not change it, nor the
    arrays it carries, afterwards (:class:`StreamSession` hands out arrays it never writes again).
    """

    def __init__(self, maxsize: int = 1000, *, name: str = "observers", faults: ObserverFaults | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self.name = name
        self.faults = faults if faults is not None else FAULTS
        self._cond = threading.Condition()
        self._items: deque[tuple[Observers, Event]] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False

    def wrap(self, observers: Iterable[Observer | None]) -> QueuedObserver:
        """One observer that queues every event for ``observers`` (a fan-out, isolated as
        :class:`Observers` is)."""
        fan = observers if isinstance(observers, Observers) else Observers(observers, self.faults)
        return QueuedObserver(self, fan)

    def start(self) -> None:
        """Start the worker (idempotent)."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def put(self, target: Observers, event: Event) -> bool:
        """Queue ``event`` for ``target``; False when it was dropped (queue full) or, after
        :meth:`stop`, delivered at once instead."""
        with self._cond:
            if not self._stopping:
                if len(self._items) >= self.maxsize and not isinstance(event, KEPT_EVENTS):
                    for name in target.names:
                        self.faults.record_drop(name)
                    return False
                self._items.append((target, event))
                self._cond.notify_all()
                return True
        target.on_event(event)
        return False

    @property
    def pending(self) -> int:
        """Events queued and not delivered yet (the one being delivered included)."""
        with self._cond:
            return len(self._items) + self._busy

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far has been delivered; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Deliver what is queued, then end the worker; False if it was still busy after
        ``timeout`` (a stuck observer: the worker is a daemon thread and is left to it)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is None:
            self._drain_here()
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "%s: %d event(s) not delivered in %.1f s: an observer is stuck", self.name, self.pending, timeout
            )
            return False
        return True

    def _drain_here(self) -> None:
        """Deliver on this thread what was queued for a worker that never started."""
        while True:
            with self._cond:
                if not self._items:
                    return
                target, event = self._items.popleft()
            target.on_event(event)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._stopping)
                if not self._items:
                    self._cond.notify_all()
                    return
                target, event = self._items.popleft()
                self._busy = True
            try:
                target.on_event(event)  # an Observers: it never raises
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class QueuedObserver:
    """An observer whose events are queued on a :class:`BackgroundObservers` for its fan-out
    ``observers`` (see :meth:`BackgroundObservers.wrap`)."""

    def __init__(self, runner: BackgroundObservers, observers: Observers) -> None:
        self.runner = runner
        self.observers = observers
        self.name = "+".join(observers.names) or "nothing"

    def on_event(self, event: Event) -> None:
        self.runner.put(self.observers, event)
