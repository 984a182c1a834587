"""The observer protocol: what happens in a stream's pipeline, as typed events, for every observer.

A :class:`~speechpipe.pipeline.session.StreamSession` reports its life as events (a stream
started, audio was fed, the VAD decided something, an ASR job was queued, left the queue or
completed, a final transcript was made, the stream ended); a server reports streams it turned
away. An observer is anything with an ``on_event(event)`` method (telemetry, the evaluation's
collector, a test's recorder). :class:`Observers` fans events out to several observers: each one
gets every event, in order, even when an earlier one raised.

This module is the vocabulary shared by the pipeline and its observers, so it imports nothing of
the pipeline: telemetry may import it (and the stages) and nothing else of ``pipeline/``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from speechpipe.stages.asr import AsrRun, AudioPiece, Decoding, Transcript
from speechpipe.stages.vad import SpeechSegment, VadEvent

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
    | StreamEnded
    | StreamRejected
)


class Observer(Protocol):
    """Anything that wants to know: gets every event (and ignores those it has no use for)."""

    def on_event(self, event: Event) -> None: ...


class Observers:
    """Several observers as one: every observer gets every event, in the order given.

    An observer that raises does not keep the event from the others; the first error is raised
    again once all of them had it, so a broken observer is never silent.
    """

    def __init__(self, observers: Iterable[Observer | None] = ()) -> None:
        self.observers: tuple[Observer, ...] = tuple(o for o in observers if o is not None)

    def on_event(self, event: Event) -> None:
        error: Exception | None = None
        for observer in self.observers:
            try:
                observer.on_event(event)
            except Exception as exc:  # noqa: BLE001  # raised again below, after the others
                error = error or exc
        if error is not None:
            raise error

    def __bool__(self) -> bool:
        return bool(self.observers)
