"""One stream's pipeline, Sans-I/O: audio in, events out, ASR work handed to whoever runs it.

A :class:`StreamSession` strings the stages together for one stream (a live connection or a
file): resampler -> VAD segmenter -> ASR jobs. It performs no I/O and never calls the model
itself. Whoever drives it (the inline driver of :mod:`speechpipe.pipeline.offline.driver` offline, the live
core of a WebSocket stream) feeds audio, takes the :class:`~speechpipe.pipeline.hooks.AsrJob`
objects it produces, runs them on an engine (directly, or through a shared scheduler), and hands
the transcripts back with :meth:`StreamSession.complete`, which turns them into
:class:`~speechpipe.pipeline.hooks.FinalTranscript` events. Everything it does is reported to its
observers (:mod:`speechpipe.pipeline.hooks`).

That split is what keeps live and offline on one code path: a file is a stream fed fast.
Offline, closed segments are packed into jobs of up to ``pack_s`` seconds (Whisper costs a 30 s
encoder pass per call, so packing saves most of the compute); live, ``pack_s = 0`` makes one job
per segment as soon as the VAD closes it.

Time comes from an injected ``clock`` (monotonic seconds): each fed chunk is stamped with its
arrival, and a final's latency is the time from the arrival of the audio at its segment's end.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from speechpipe.pipeline.hooks import (
    AsrCompleted,
    AsrDequeued,
    AsrJob,
    AsrQueued,
    AudioFed,
    FinalLost,
    FinalTranscript,
    JobKind,
    Observer,
    Observers,
    SegmentCaptioned,
    StreamEnded,
    StreamStarted,
    VadOutput,
)
from speechpipe.stages.asr import AsrRun, AudioPiece, Decoding, Transcript
from speechpipe.stages.asr.packing import release_groups
from speechpipe.stages.audio import StreamResampler
from speechpipe.stages.pcm import SAMPLE_RATE, pcm_to_float, sanitize, to_mono
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment, SpeechStarted, VadConfig, VadSegmenter

log = logging.getLogger("speechpipe.session")

#: how much arrival history (seconds of input audio) a session keeps to time its segment ends.
ARRIVAL_HISTORY_S = 40.0

Event = SpeechStarted | SpeechSegment | SpeechDiscarded | FinalTranscript


class SessionError(ValueError):
    """Audio that the session cannot take (wrong shape, wrong encoding, fed after finish)."""


class ArrivalClock:
    """When the input audio arrived: one stamp per fed chunk, for ``history_s`` seconds of input."""

    def __init__(self, sample_rate: int, history_s: float = ARRIVAL_HISTORY_S, origin_sample: int = 0) -> None:
        self.sample_rate = sample_rate
        self.origin_sample = origin_sample  # the 16 kHz stream sample of the first frame (a resumed stream)
        self.frames = 0  # input frames received so far
        self._history = int(history_s * sample_rate)
        self._stamps: deque[tuple[int, float]] = deque()  # (frames received up to then, time)

    def stamp(self, frames: int, now: float) -> None:
        """``frames`` more input frames arrived at ``now``."""
        self.frames += frames
        self._stamps.append((self.frames, now))
        keep = self.frames - self._history
        while len(self._stamps) > 1 and self._stamps[0][0] < keep:
            self._stamps.popleft()

    def arrival_of(self, end_sample: int, default: float) -> float:
        """When the input audio up to 16 kHz stream sample ``end_sample`` had arrived."""
        frame = -(-(end_sample - self.origin_sample) * self.sample_rate // SAMPLE_RATE)  # ceil
        for frames, when in self._stamps:
            if frames >= frame:
                return when
        return self._stamps[-1][1] if self._stamps else default


class StreamSession:
    """Per-stream state: resampling, VAD, packing of segments into ASR jobs.

    Args:
        vad: VAD configuration (its ``config_id`` tags every segment).
        sample_rate: rate of the audio that will be fed.
        channels: channel count of the audio that will be fed (mixed down to mono).
        pack_s: pack closed segments into final jobs (Whisper windows) of up to this many seconds
            of audio; 0 gives one job per segment as soon as it closes (live).
        pack_gap_s: silence the engine puts between packed segments (counted when packing).
        stream_id: identifier used in events and telemetry; random when not given.
        observers: told every event of the stream (see :mod:`speechpipe.pipeline.hooks`).
        clock: monotonic seconds; the arrival time of fed audio and of finals.
        variant: the pipeline variant whose engine is to run this stream's jobs (stamped on them).
        decoding: the stream's prompt and first temperature (stamped on its jobs).
        start_s: the stream time of the first sample fed (a resumed stream: where the client's
            last final ended; times go on from there).
        first_segment: the index of the stream's first segment (a resumed stream: the next one).
        audio_tap: given each block of 16 kHz audio as the VAD is about to get it, with the
            stream sample it starts at (a live stream keeps recent audio for its reviews); it
            must not write to the block.
    """

    def __init__(
        self,
        vad: VadConfig | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        pack_s: float = 0.0,
        pack_gap_s: float = 0.3,
        stream_id: str | None = None,
        observers: Iterable[Observer | None] = (),
        clock: Callable[[], float] = time.monotonic,
        variant: str = "",
        decoding: Decoding | None = None,
        start_s: float = 0.0,
        first_segment: int = 0,
        audio_tap: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        if channels < 1:
            raise SessionError(f"channels must be at least 1, not {channels}")
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.variant = variant
        self.decoding = decoding or Decoding()
        self.sample_rate = sample_rate
        self.channels = channels
        self.pack_s = pack_s
        self.pack_gap_s = pack_gap_s
        self.observers = Observers(observers)
        self.clock = clock
        self.audio_tap = audio_tap
        self.vad = VadSegmenter(vad or VadConfig())
        self.vad_config_id = self.vad.config_id
        origin = round(start_s * SAMPLE_RATE)
        if origin or first_segment:  # a resumed stream goes on from where its last final left it
            self.vad.start_at(origin, first_segment)
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)
        self.arrivals = ArrivalClock(sample_rate, origin_sample=origin)
        self._closed: list[SpeechSegment] = []  # closed segments not yet in a job
        self._in_flight: dict[int, AsrJob] = {}
        self._finished = False
        self._abandoned = False
        self._ended = False
        self.segments_closed = 0
        self.finals_emitted = 0
        #: input samples that were not finite (NaN/Inf) and were replaced
        self.sanitized_samples = 0
        #: what stopped the stream early, when :meth:`abandon` was given a reason.
        self.error: BaseException | None = None
        self.observers.on_event(StreamStarted(self.stream_id, sample_rate, channels, self.vad_config_id))

    # -- audio in -----------------------------------------------------------------------------

    @property
    def stream_samples(self) -> int:
        """16 kHz samples consumed by the VAD so far (stream time = this / 16000)."""
        return self.vad.samples_seen

    @property
    def audio_s(self) -> float:
        """Seconds of input audio fed so far."""
        return self.arrivals.frames / self.sample_rate

    def feed(self, samples: np.ndarray) -> list[Event]:
        """Feed audio at the session's rate: shape (n,) or (n, channels), float32 in [-1, 1].

        The array is reported to observers as it is (:class:`AudioFed`), and they may read it after
        this returns: the caller must not write to it again (:meth:`feed_pcm` makes a new one)."""
        if self._finished:
            raise SessionError("audio fed after the end of the stream")
        x, bad = sanitize(samples)
        if bad:
            if not self.sanitized_samples:
                log.warning("stream %s: non-finite samples in the input (NaN/Inf) are replaced", self.stream_id)
            self.sanitized_samples += bad
        raw = x
        if x.ndim == 2:
            if x.shape[1] != self.channels:
                raise SessionError(f"expected {self.channels} channel(s), got {x.shape[1]}")
            x = to_mono(x)
        elif x.ndim != 1 or (self.channels != 1 and x.size):
            raise SessionError(f"expected audio of shape (n, {self.channels}), got {x.shape}")
        self.arrivals.stamp(raw.shape[0] if raw.ndim else 0, self.clock())
        y = self._resampler.process(x)
        if self.audio_tap is not None and y.size:
            self.audio_tap(self.vad.samples_seen, y)
        t0 = time.perf_counter_ns()
        events = self.vad.feed(y)
        vad_ns = time.perf_counter_ns() - t0
        if self.observers:
            # Observers may read the chunk later, from another thread (BackgroundObservers): they
            # get a read-only view, and the session never writes to what it was fed.
            view = raw.view()
            view.flags.writeable = False
            self.observers.on_event(AudioFed(self.stream_id, view, self.sample_rate, vad_ns))
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
        if self.audio_tap is not None and tail.size:
            self.audio_tap(self.vad.samples_seen, tail)
        events = self._vad_events(self.vad.feed(tail)) if tail.size else []
        events += self._vad_events(self.vad.flush())
        self._finished = True
        return events

    # -- ASR work -----------------------------------------------------------------------------

    def take_jobs(self) -> list[AsrJob]:
        """Final jobs ready to run.

        Live (``pack_s == 0``): one job per segment, as soon as it closes. Offline: closed segments
        fill ``pack_s`` windows in stream order; a window is released once the next segment does
        not fit in it, the last one when the stream has ended
        (:func:`~speechpipe.stages.asr.packing.release_groups`). One job is one window.
        """
        if self.pack_s <= 0:
            jobs = [self._make_job([seg]) for seg in self._closed]
            self._closed.clear()
            return jobs
        groups, keep = release_groups(
            [s.duration_s for s in self._closed], self.pack_s, self.pack_gap_s, self._finished
        )
        jobs = [self._make_job([self._closed[i] for i in g]) for g in groups]
        self._closed = [self._closed[i] for i in keep]
        return jobs

    def _make_job(self, segments: list[SpeechSegment]) -> AsrJob:
        job = AsrJob(
            self.stream_id,
            JobKind.FINAL,
            [AudioPiece(s.index, s.start_sample, s.audio) for s in segments],
            segments=segments,
            variant=self.variant,
            decoding=self.decoding,
            fixed=self.pack_s > 0,
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
        piece = AudioPiece(index, start, audio)
        return AsrJob(self.stream_id, JobKind.PARTIAL, [piece], variant=self.variant, decoding=self.decoding)

    def speculative_job(self, min_audio_s: float = 0.3) -> AsrJob | None:
        """A job holding exactly the audio the open segment will close with if the pause that has
        begun lasts (see :meth:`VadSegmenter.closing_segment`), or None.

        Live drivers run it during the VAD's hangover; if the segment then closes with the same
        start and end, its transcript can stand in for the final job's (see :func:`same_audio`).
        """
        closing = self.vad.closing_segment()
        if closing is None:
            return None
        index, start, audio = closing
        if audio.size < min_audio_s * SAMPLE_RATE:
            return None
        piece = AudioPiece(index, start, audio)
        return AsrJob(self.stream_id, JobKind.SPECULATIVE, [piece], variant=self.variant, decoding=self.decoding)

    def report(self, event: SegmentCaptioned) -> None:
        """Tell the observers of what the live driver measured of a segment (its captions)."""
        self.observers.on_event(event)

    def job_queued(self, job: AsrJob) -> None:
        """Tell the observers a driver queued ``job`` for a shared engine."""
        self.observers.on_event(AsrQueued(self.stream_id, job))

    def job_dequeued(self, job: AsrJob) -> None:
        """Tell the observers ``job`` left the queue (taken, dropped or cancelled); any thread."""
        self.observers.on_event(AsrDequeued(self.stream_id, job))

    def complete(self, job: AsrJob, transcripts: list[Transcript], run: AsrRun | None = None) -> list[FinalTranscript]:
        """Hand back the transcripts of ``job`` (and how it ran). A final job's segments become
        :class:`FinalTranscript` events, returned and reported; any other job is only reported.

        Checks first (a :class:`SessionError` changes nothing), then every final is made and the
        job leaves the session, and only then are the events reported: the finals returned never
        depend on the observers (which do not raise anyway, see :class:`Observers`)."""
        if job.kind is not JobKind.FINAL:
            self.observers.on_event(AsrCompleted(self.stream_id, job, transcripts, run))
            return []
        if job.job_id not in self._in_flight:
            raise SessionError(f"job {job.job_id} is not in flight for stream {self.stream_id}")
        if len(transcripts) != len(job.segments):
            raise SessionError("one transcript per segment expected")
        del self._in_flight[job.job_id]
        now = self.clock()
        finals = [
            FinalTranscript(self.stream_id, seg, tr, max(0.0, now - self.arrivals.arrival_of(seg.end_sample, now)))
            for seg, tr in zip(job.segments, transcripts)
        ]
        self.finals_emitted += len(finals)
        self.observers.on_event(AsrCompleted(self.stream_id, job, transcripts, run))
        for final in finals:
            self.observers.on_event(final)
        return finals

    def lose(self, job: AsrJob, reason: str) -> list[SpeechSegment]:
        """Give up on a final job: its segments get no final; each is reported as
        :class:`FinalLost`. Returns them (the caller tells the client)."""
        if self._in_flight.pop(job.job_id, None) is None:
            return []
        lost = list(job.segments)
        for seg in lost:
            self.observers.on_event(FinalLost(self.stream_id, seg, reason))
        return lost

    def abandon(self, error: BaseException | None = None, reason: str = "abandoned") -> int:
        """Forget queued and in-flight work (a client went away, or ``error`` stopped the stream);
        every segment left without a final is reported lost with ``reason``. Returns how many.
        ``error`` is kept in :attr:`error` for observers."""
        if error is not None and self.error is None:
            self.error = error
        self._abandoned = self._abandoned or not self.done
        lost = [*self._closed, *(s for j in self._in_flight.values() for s in j.segments)]
        self._closed.clear()
        self._in_flight.clear()
        self._finished = True
        for seg in lost:
            self.observers.on_event(FinalLost(self.stream_id, seg, reason))
        self.close()
        return len(lost)

    def close(self) -> None:
        """Mark the stream over for observers (idempotent); call once it is drained or abandoned."""
        if not self._ended:
            self._ended = True
            self.observers.on_event(
                StreamEnded(
                    self.stream_id,
                    self.done and not self._abandoned,
                    self.error,
                    self.vad.speech_frames,
                    self.vad.total_frames,
                    self.sanitized_samples,
                )
            )

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
            if self.observers:
                self.observers.on_event(VadOutput(self.stream_id, ev))
        return events


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
