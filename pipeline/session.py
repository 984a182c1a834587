"""One stream's pipeline, Sans-I/O: audio in, events out, ASR work handed to whoever runs it.

A :class:`StreamSession` strings the stages together for one stream (a live connection or a
file): resampler -> VAD segmenter -> ASR jobs. It performs no I/O and never calls the model
itself. Whoever drives it (the offline runner, the WebSocket server) feeds audio, takes the
:class:`AsrJob` objects it produces, runs them on an :class:`~speechpipe.stages.asr.AsrEngine`
(directly, or through a shared scheduler), and hands the transcripts back with
:meth:`StreamSession.complete`, which turns them into :class:`FinalTranscript` events.

That split is what keeps live and offline on one code path: a file is a stream fed fast.
Offline, closed segments are packed into jobs of up to ``pack_s`` seconds (Whisper costs a 30 s
encoder pass per call, so packing saves most of the compute); live, ``pack_s = 0`` makes one job
per segment as soon as the VAD closes it.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from speechpipe.stages.asr import AudioPiece, Transcript, WindowStats, pack_windows
from speechpipe.stages.audio import StreamResampler, pcm_to_float, to_mono
from speechpipe.stages.vad import (
    SAMPLE_RATE,
    SpeechDiscarded,
    SpeechSegment,
    SpeechStarted,
    VadConfig,
    VadSegmenter,
)

FINAL = "final"
PARTIAL = "partial"

_job_ids = itertools.count(1)


@dataclass
class AsrJob:
    """Work for the ASR stage: pieces of one stream's audio to transcribe together.

    ``segments`` are the VAD segments behind a final job (one piece per segment); a partial job
    carries the open segment's audio so far and no segment.
    """

    stream_id: str
    kind: str
    pieces: list[AudioPiece]
    segments: list[SpeechSegment] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    job_id: int = field(default_factory=lambda: next(_job_ids))

    @property
    def audio_s(self) -> float:
        return sum(p.duration_s for p in self.pieces)


@dataclass
class FinalTranscript:
    """The final transcript of one VAD segment."""

    stream_id: str
    segment: SpeechSegment
    transcript: Transcript


@dataclass
class PartialTranscript:
    """A provisional transcript of the still-open segment ``segment_index``."""

    stream_id: str
    segment_index: int
    transcript: Transcript


@dataclass
class AsrRun:
    """How a job was executed, for telemetry: wall-clock times (ns since the epoch, as OpenTelemetry
    wants them), time spent queued, and what each Whisper call covered."""

    started_ns: int
    ended_ns: int
    queue_wait_s: float = 0.0
    windows: list[WindowStats] = field(default_factory=list)
    model: str = ""
    device: str = ""
    compute_type: str = ""

    @property
    def wall_s(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9


Event = SpeechStarted | SpeechSegment | SpeechDiscarded | FinalTranscript | PartialTranscript


class SessionError(ValueError):
    """Audio that the session cannot take (wrong shape, wrong encoding, fed after finish)."""


class StreamSession:
    """Per-stream state: resampling, VAD, packing of segments into ASR jobs.

    Args:
        vad: VAD configuration (its ``config_id`` tags every segment).
        sample_rate: rate of the audio that will be fed.
        channels: channel count of the audio that will be fed (mixed down to mono).
        pack_s: pack closed segments into final jobs (Whisper windows) of up to this many seconds
            of audio; 0 gives one job per segment as soon as it closes (live).
        pack_gap_s: silence the engine puts between packed segments (counted when packing).
        pack_lookahead_s: offline, how much closed-segment audio to gather before packing; more
            gives fuller windows, at the cost of holding that audio in memory.
        stream_id: identifier used in events and telemetry; random when not given.
        hooks: optional observer (see :class:`SessionHooks`); telemetry plugs in here.
    """

    def __init__(
        self,
        vad: VadConfig | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        pack_s: float = 0.0,
        pack_gap_s: float = 0.3,
        pack_lookahead_s: float = 120.0,
        stream_id: str | None = None,
        hooks: SessionHooks | None = None,
    ) -> None:
        if channels < 1:
            raise SessionError(f"channels must be at least 1, not {channels}")
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.sample_rate = sample_rate
        self.channels = channels
        self.pack_s = pack_s
        self.pack_gap_s = pack_gap_s
        self.pack_lookahead_s = pack_lookahead_s
        self.hooks = hooks or SessionHooks()
        self.vad = VadSegmenter(vad or VadConfig())
        self.vad_config_id = self.vad.config_id
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)
        self._closed: list[SpeechSegment] = []  # closed segments not yet in a job
        self._in_flight: dict[int, AsrJob] = {}
        self._finished = False
        self._closed_notified = False
        self.segments_closed = 0
        self.finals_emitted = 0
        #: what stopped the stream early, when :meth:`abandon` was given a reason.
        self.error: BaseException | None = None
        self.hooks.stream_started(self)

    # -- audio in -----------------------------------------------------------------------------

    @property
    def stream_samples(self) -> int:
        """16 kHz samples consumed by the VAD so far (stream time = this / 16000)."""
        return self.vad.samples_seen

    def feed(self, samples: np.ndarray) -> list[Event]:
        """Feed audio at the session's rate: shape (n,) or (n, channels), float32 in [-1, 1]."""
        if self._finished:
            raise SessionError("audio fed after the end of the stream")
        x = np.asarray(samples, dtype=np.float32)
        raw = x
        if x.ndim == 2:
            if x.shape[1] != self.channels:
                raise SessionError(f"expected {self.channels} channel(s), got {x.shape[1]}")
            x = to_mono(x)
        elif x.ndim != 1 or (self.channels != 1 and x.size):
            raise SessionError(f"expected audio of shape (n, {self.channels}), got {x.shape}")
        t0 = time.perf_counter_ns()
        events = self.vad.feed(self._resampler.process(x))
        self.hooks.audio_fed(self, raw, time.perf_counter_ns() - t0)
        return self._vad_events(events)

    def feed_pcm(self, data: bytes, encoding: str = "pcm_s16le") -> list[Event]:
        """Feed raw interleaved PCM bytes (``pcm_s16le`` or ``pcm_f32le``)."""
        try:
            x = pcm_to_float(data, encoding, self.channels)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        return self.feed(x)

    def finish(self) -> list[Event]:
        """End of stream: flush the resampler and close any open segment."""
        if self._finished:
            return []
        tail = self._resampler.flush()
        events = self._vad_events(self.vad.feed(tail)) if tail.size else []
        events += self._vad_events(self.vad.flush())
        self._finished = True
        return events

    # -- ASR work -----------------------------------------------------------------------------

    def take_jobs(self) -> list[AsrJob]:
        """Final jobs ready to run.

        Live (``pack_s == 0``): one job per segment, as soon as it closes. Offline: closed segments
        are buffered until ``pack_lookahead_s`` of audio is waiting (or the stream ended), then
        packed into as few ``pack_s`` windows as possible; the least-filled window waits for more
        segments unless the stream is over. One job is one window.
        """
        if self.pack_s <= 0:
            jobs = [self._make_job([seg]) for seg in self._closed]
            self._closed.clear()
            return jobs
        waiting = sum(s.duration_s for s in self._closed)
        if not self._closed or (not self._finished and waiting < self.pack_lookahead_s):
            return []
        groups = pack_windows([s.duration_s for s in self._closed], self.pack_s, self.pack_gap_s)
        if not self._finished and len(groups) > 1:
            fill = [sum(self._closed[i].duration_s for i in g) for g in groups]
            keep = groups.pop(fill.index(min(fill)))
        else:
            keep = []
        jobs = [self._make_job([self._closed[i] for i in g]) for g in groups]
        self._closed = [self._closed[i] for i in keep]
        return jobs

    def _make_job(self, segments: list[SpeechSegment]) -> AsrJob:
        job = AsrJob(
            self.stream_id,
            FINAL,
            [AudioPiece(s.index, s.start_sample, s.audio) for s in segments],
            segments=segments,
        )
        self._in_flight[job.job_id] = job
        return job

    def partial_job(self, min_audio_s: float = 0.5) -> AsrJob | None:
        """A job re-transcribing the open segment so far, or None if no segment is open yet."""
        open_seg = self.vad.open_segment()
        if open_seg is None:
            return None
        index, start, audio = open_seg
        if audio.size < min_audio_s * SAMPLE_RATE:
            return None
        return AsrJob(self.stream_id, PARTIAL, [AudioPiece(index, start, audio)])

    def speculative_job(self, min_audio_s: float = 0.3) -> AsrJob | None:
        """A partial job holding exactly the audio the open segment will close with if the pause
        that has begun lasts (see :meth:`VadSegmenter.closing_segment`), or None.

        Live drivers run it during the VAD's hangover; if the segment then closes with the same
        start and end, its transcript can stand in for the final job's (see :func:`same_audio`).
        """
        closing = self.vad.closing_segment()
        if closing is None:
            return None
        index, start, audio = closing
        if audio.size < min_audio_s * SAMPLE_RATE:
            return None
        return AsrJob(self.stream_id, PARTIAL, [AudioPiece(index, start, audio)])

    def complete(self, job: AsrJob, transcripts: list[Transcript], run: AsrRun | None = None) -> list[Event]:
        """Hand back the transcripts of ``job`` (and how it ran); returns final or partial transcript events."""
        if job.kind == PARTIAL:
            self.hooks.asr_completed(self, job, transcripts, run)
            return [PartialTranscript(self.stream_id, t.index, t) for t in transcripts]
        if self._in_flight.pop(job.job_id, None) is None:
            raise SessionError(f"job {job.job_id} is not in flight for stream {self.stream_id}")
        if len(transcripts) != len(job.segments):
            raise SessionError("one transcript per segment expected")
        self.hooks.asr_completed(self, job, transcripts, run)
        events: list[Event] = []
        for seg, tr in zip(job.segments, transcripts):
            events.append(FinalTranscript(self.stream_id, seg, tr))
            self.finals_emitted += 1
            self.hooks.final(self, seg, tr)
        return events

    def abandon(self, error: BaseException | None = None) -> int:
        """Forget queued and in-flight work (a client went away, or ``error`` stopped the stream);
        returns how many segments were dropped. ``error`` is kept in :attr:`error` for observers."""
        if error is not None and self.error is None:
            self.error = error
        n = self.pending
        self._closed.clear()
        self._in_flight.clear()
        self._finished = True
        self.close()
        return n

    def close(self) -> None:
        """Mark the stream over for observers (idempotent); call once it is drained or abandoned."""
        if not self._closed_notified:
            self._closed_notified = True
            self.hooks.stream_ended(self)

    @property
    def pending(self) -> int:
        """Segments closed by the VAD whose final transcript has not been produced yet."""
        return len(self._closed) + sum(len(j.segments) for j in self._in_flight.values())

    @property
    def done(self) -> bool:
        """The stream ended and every final has been produced."""
        return self._finished and self.pending == 0

    # -- internals ----------------------------------------------------------------------------

    def _vad_events(self, events: list) -> list[Event]:
        for ev in events:
            if isinstance(ev, SpeechSegment):
                self._closed.append(ev)
                self.segments_closed += 1
            self.hooks.vad_event(self, ev)
        return events


class SessionHooks:
    """Observer of a session's life; the default does nothing. Telemetry subclasses it."""

    def stream_started(self, session: StreamSession) -> None:
        """Called once when the session is created."""

    def audio_fed(self, session: StreamSession, samples: np.ndarray, vad_ns: int) -> None:
        """Called for every chunk fed, as received (float32, ``(n,)`` or ``(n, channels)``), with the
        time resampling and VAD took on it, before its VAD events are reported."""

    def vad_event(self, session: StreamSession, event: SpeechStarted | SpeechSegment | SpeechDiscarded) -> None:
        """Called for every VAD event, in stream order."""

    def asr_queued(self, session: StreamSession, job: AsrJob) -> None:
        """Called by a scheduler when it queues ``job`` (the inline offline driver does not queue)."""

    def asr_started(self, session: StreamSession, job: AsrJob) -> None:
        """Called by a scheduler when a queued ``job`` leaves the queue for the engine."""

    def asr_completed(
        self, session: StreamSession, job: AsrJob, transcripts: list[Transcript], run: AsrRun | None
    ) -> None:
        """Called when an ASR job's results come back, before the final events are made."""

    def final(self, session: StreamSession, segment: SpeechSegment, transcript: Transcript) -> None:
        """Called for every final transcript."""

    def stream_ended(self, session: StreamSession) -> None:
        """Called once the stream is finished and drained (or abandoned)."""


def same_audio(partial: AsrJob, final: AsrJob) -> bool:
    """True when a one-piece partial job covers exactly the audio of a one-segment final job."""
    if len(partial.pieces) != 1 or len(final.segments) != 1:
        return False
    piece, seg = partial.pieces[0], final.segments[0]
    return (
        piece.index == seg.index
        and piece.start_sample == seg.start_sample
        and piece.start_sample + piece.audio.size == seg.end_sample
    )


def run_job(engine, job: AsrJob, queue_wait_s: float = 0.0) -> tuple[list[Transcript], AsrRun]:
    """Run one job on an engine synchronously."""
    return run_jobs(engine, [job], queue_wait_s)[0]


def run_jobs(engine, jobs: list[AsrJob], queue_wait_s: float = 0.0) -> list[tuple[list[Transcript], AsrRun]]:
    """Run several jobs in one engine call, so their windows can be decoded in batches; the wall
    time of the call is shared by all of them."""
    if not jobs:
        return []
    started = time.time_ns()
    results = engine.transcribe_groups([job.pieces for job in jobs])
    ended = time.time_ns()
    return [
        (
            transcripts,
            AsrRun(
                started_ns=started,
                ended_ns=ended,
                queue_wait_s=queue_wait_s,
                windows=windows,
                model=engine.model_name,
                device=engine.device,
                compute_type=engine.compute_type,
            ),
        )
        for transcripts, windows in results
    ]


def drive(session: StreamSession, engine, chunks: Iterable[np.ndarray]) -> Iterator[Event]:
    """Feed ``chunks`` through ``session`` and run its jobs inline: the synchronous driver used
    offline. Yields every event in order; ends once the stream is finished and drained."""

    for chunk in chunks:
        yield from session.feed(chunk)
        jobs = session.take_jobs()
        for job, result in zip(jobs, run_jobs(engine, jobs)):
            yield from session.complete(job, *result)
    yield from session.finish()
    jobs = session.take_jobs()
    for job, result in zip(jobs, run_jobs(engine, jobs)):
        yield from session.complete(job, *result)
    session.close()
