"""One live stream's logic, Sans-I/O: client messages, ASR results and the clock in; actions out.

:class:`LiveCore` holds the protocol state (waiting for ``start``, streaming, draining, closed),
the stream's :class:`~speechpipe.pipeline.session.StreamSession`, its limits, the order in which
finals go out, and the partial/speculative slot. It never touches a socket, a thread or an event
loop: every input is a method call with the time (``receive``, ``asr_done``, ``tick``,
``shutdown``...) and returns :mod:`actions <speechpipe.pipeline.live.actions>` for the connection
to carry out. So it can be tested with a fake clock and no server.

Speculative finals: while the VAD's hangover runs, the end a segment will get if the pause lasts
is already known (last speech frame + post-roll). The core offers exactly that audio as a
speculative job; if the segment then closes with the same start and end, the speculative
transcription *is* the final (same samples, same model), and the final goes out as soon as it is
ready instead of starting only then. If speech resumes, the result is shown as a partial.

Latency: a final's ``latency_s`` is the session's final latency (from the arrival of the audio at
the segment's end to the final), measured when the final is handed to the connection.

Reviews: with a review queue, each final's review leaves with the final, its clip holding a margin
of audio before and after the segment, and a share of the audio the VAD rejected is audited
(:class:`~speechpipe.pipeline.live.audit.ReviewAudio`, fed the session's 16 kHz audio).

Observers: the stream's observers (from the context's ``stream_observers``) are handed to the
session through ``queue_observers`` when the connection gives one (it queues their events for a
worker thread, off the event loop and the ASR workers); they never change what the client gets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.hooks import AsrJob, JobKind, Observer
from speechpipe.pipeline.live.actions import (
    Action,
    Close,
    Fetch,
    LiveContext,
    Promote,
    Reuse,
    Send,
    StreamStats,
    SubmitFinal,
    SubmitShadow,
)
from speechpipe.pipeline.live.audit import ReviewAudio
from speechpipe.pipeline.live.review import final_actions
from speechpipe.pipeline.live.side import Result, Side, SideSlot
from speechpipe.pipeline.protocol import ProtocolError, Start, Stop
from speechpipe.pipeline.session import SessionError, StreamSession
from speechpipe.stages.asr import Transcript
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment, SpeechStarted

log = logging.getLogger("speechpipe.server")


class State(Enum):
    STARTING = "starting"  # waiting for the start message
    STREAMING = "streaming"
    DRAINING = "draining"  # no more audio: pending finals, then end
    CLOSED = "closed"


@dataclass
class _Final:
    """A closed segment on its way to the client, in segment order."""

    job: AsrJob
    result: Result | None = None
    side: Side | None = None  # the speculative job whose result it waits for
    again: bool = False  # decoded again with its segment's committed words as prefix


class LiveCore:
    """The logic of one live stream (see the module docstring); ``now`` is monotonic seconds.
    ``queue_observers`` turns the stream's observers into the one its session reports to (None:
    the session calls them itself, as tests without a connection do)."""

    def __init__(
        self,
        stream_id: str,
        context: LiveContext,
        now: float,
        queue_observers: Callable[[Sequence[Observer]], Observer] | None = None,
        fed: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self._queue_observers = queue_observers
        self.context = context
        self.fed = fed
        # An upload is decoded as a file is: no guess during the hangover (which audio it would
        # hold depends on when the worker is free), its finals packed into windows fixed by the audio.
        self.settings = dataclasses.replace(context.settings, speculative=False) if fed else context.settings
        self.state = State.STARTING
        self.session: StreamSession | None = None
        self.start: Start | None = None
        self.stats = StreamStats()
        self._now = now
        self._opened = now
        self._last_message = now
        self._drain_deadline = 0.0
        self._drain_reason = "stop"
        self._error: ProtocolError | None = None
        self._finals: deque[_Final] = deque()
        self._slot: SideSlot | None = None
        #: the shadow variant's own VAD on the same audio, when its VAD differs from ours
        self._shadow: StreamSession | None = None
        self._resuming = False  # a start that resumes a session waits for its record (Fetch)
        self._audit: ReviewAudio | None = None  # the reviews' margins and the VAD's audit

    # -- what the connection asks ---------------------------------------------------------------

    @property
    def partials_wanted(self) -> bool:
        return self.settings.partials and self.start is not None and self.start.partials

    @property
    def reading(self) -> bool:
        """Whether to read the next client message now: not while this stream has
        ``max_queued_finals`` finals waiting for the model (the client is slowed down by TCP)."""
        if self.state is not State.STREAMING:
            return self.state is not State.CLOSED and not self._resuming
        return sum(f.result is None for f in self._finals) < self.settings.max_queued_finals

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` must be called at the latest (None: no timer runs). The idle timeout
        does not run while the stream itself holds the client back."""
        if self.state is State.DRAINING:
            return self._drain_deadline
        if self.state is State.CLOSED or not self.reading:
            return None
        return self._last_message + self.settings.idle_timeout_s

    # -- inputs ---------------------------------------------------------------------------------

    def receive(self, message: str | bytes, now: float) -> list[Action]:
        """A client message (text or binary)."""
        self._now = now
        if self.state in (State.DRAINING, State.CLOSED):
            return []  # read and dropped: unread frames would stall the closing handshake
        self._last_message = now
        self.stats.messages += 1
        try:
            size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "replace"))
            if size > self.settings.max_frame_bytes:
                raise ProtocolError(
                    "frame_too_large",
                    f"message of {size} bytes exceeds the limit of {self.settings.max_frame_bytes} bytes",
                )
            if self.state is State.STARTING:
                return self._begin(message)
            if isinstance(message, str):
                if isinstance(P.parse_client_text(message, self.context.languages), Stop):
                    return self._drain("stop")
                raise ProtocolError("already_started", "start received twice; send stop to end the stream")
            return self._audio(message)
        except ProtocolError as exc:
            return self.fail(exc, now)

    def asr_done(self, job: AsrJob, result: Result | None, now: float) -> list[Action]:
        """The scheduler's answer for ``job``: its result, or None when it was dropped unrun."""
        self._now = now
        if self.state is State.CLOSED:
            return []
        if not self.reading:
            self._last_message = now  # the idle timer starts again once reading resumes
        actions: list[Action] = []
        if job.kind is JobKind.FINAL:
            for f in self._finals:
                if f.job is job:
                    f.result = result
        else:
            side = self._slot.done(job, result)
            if side is None:
                return []
            for f in self._finals:
                if f.side is side:
                    f.side = None
                    if result is None:  # dropped just before it could be promoted: run the final now
                        actions.append(self._submit(f.job))
                    else:
                        f.result = result
            actions += self._slot.shown(side, self.state is State.STREAMING, now)
        return actions + self._emit_finals() + self._maybe_end()

    def asr_failed(self, job: AsrJob, error: BaseException, now: float) -> list[Action]:
        """The ASR call of ``job`` raised: a final that cannot be made ends the stream."""
        self._now = now
        side = self._slot.done(job, None) if self._slot is not None else None
        if side is not None and not any(f.side is side for f in self._finals):
            return []  # a partial lost: nothing the client waits for
        log.error("stream %s: ASR failed: %s", self.stream_id, error)
        return self.internal_error("asr_failed")

    def tick(self, now: float) -> list[Action]:
        """Time passed: the idle timeout, the drain deadline."""
        self._now = now
        if self.state is State.DRAINING and now >= self._drain_deadline:
            log.warning("stream %s: %d final(s) not ready in time", self.stream_id, len(self._finals))
            return self._end()
        deadline = self.deadline
        if self.state in (State.STARTING, State.STREAMING) and deadline is not None and now >= deadline:
            return self.fail(
                ProtocolError(
                    "idle_timeout", f"nothing received for {self.settings.idle_timeout_s:g} s; closing the stream"
                ),
                now,
            )
        return []

    def shutdown(self, now: float) -> list[Action]:
        """The server is draining: no more audio is read, pending finals are sent, then ``end``."""
        self._now = now
        if self.state is State.STARTING:
            return self.fail(ProtocolError("shutting_down", "the server is shutting down"), now)
        if self.state is State.STREAMING:
            return self._drain("shutdown")
        return []

    def fail(self, error: ProtocolError, now: float) -> list[Action]:
        """``error`` ends the stream: before ``start`` it is sent and the connection closed; once
        streaming, the audio received so far still gets its finals, then ``end``."""
        self._now = now
        if self.state is State.STREAMING:
            self._error = error
            return [Send(P.error(error.code, error.message)), *self._drain("error")]
        if self.state is State.STARTING:
            self.state = State.CLOSED
            extra = getattr(error, "extra", {})
            return [Send(P.error(error.code, error.message, **extra)), Close(error.close_code, error.message[:120])]
        return []

    def abandon_client(self, error: ProtocolError) -> list[Action]:
        """The client cannot be served any more (it does not read what it is sent): the stream
        ends now, without waiting for its finals. Those still owed are counted lost with
        ``error.code`` as the reason (the session's observers see them so), then the error and
        the close; the connection sends what it still can."""
        lost = self._lose_pending(error.code) if self.state in (State.STREAMING, State.DRAINING) else []
        self.state = State.CLOSED
        return [*lost, Send(P.error(error.code, error.message)), Close(error.close_code, error.message[:120])]

    def internal_error(self, reason: str = "internal_error") -> list[Action]:
        """Something broke (a bug, a failed ASR call): the finals still owed are sent as lost,
        then the error, and the stream closes."""
        lost = self._lose_pending(reason) if self.state in (State.STREAMING, State.DRAINING) else []
        self.state = State.CLOSED
        exc = ProtocolError("internal_error", "internal server error; the stream was closed")
        return [*lost, Send(P.error(exc.code, exc.message)), Close(exc.close_code, exc.message[:120])]

    def _lose_pending(self, reason: str) -> list[Action]:
        """A ``final`` marked lost for every segment still waiting for its transcript, in order."""
        actions: list[Action] = []
        while self._finals:
            for seg in self.session.lose(self._finals.popleft().job, reason):
                self.stats.lost += 1
                lost = P.final_lost(seg.index, seg.start_s, seg.end_s, reason)
                actions.append(Send(lost | {"variant": self.context.variant}))
        return actions

    def release(self) -> int:
        """Let go of the stream however it ended; returns the segments dropped without a final."""
        self.state = State.CLOSED
        self._finals.clear()
        if self._slot is not None:
            self._slot.clear()
        if self._shadow is not None:
            self._shadow.close()
        if self.session is None:
            return 0
        lost = 0 if self.session.done else self.session.abandon(reason="disconnected")
        if lost:
            log.info("stream %s: %d final(s) lost with the connection", self.stream_id, lost)
        self.session.close()
        return lost

    # -- the stream -----------------------------------------------------------------------------

    def _begin(self, message: str | bytes) -> list[Action]:
        if isinstance(message, bytes):
            raise ProtocolError("binary_before_start", "audio received before the start message")
        start = P.parse_client_text(message, self.context.languages)
        if isinstance(start, Stop):
            raise ProtocolError("bad_message", "stop received before start")
        self.start = start
        if start.resume is not None:
            if self.context.resume is None:
                raise ProtocolError("bad_message", "this endpoint does not resume sessions (resume is for /stream)")
            self._resuming = True
            return [Fetch(start.resume.session)]
        return self._open(start)

    def fetched(self, now: float, error: BaseException | None = None) -> list[Action]:
        """The session ``start.resume`` names was looked up (``error``: the store could not
        answer): the stream resumes it, or is refused."""
        self._now = now
        if self.state is not State.STARTING or not self._resuming:
            return []
        self._resuming = False
        self._last_message = now
        try:
            if error is not None:
                raise ProtocolError(
                    "resume_unavailable", f"the session store cannot be read now ({error}); try again shortly"
                )
            return self._open(self.start)
        except ProtocolError as exc:
            return self.fail(exc, now)

    def _open(self, start: Start) -> list[Action]:
        """The stream begins: routed (or resumed), its session made, ``ready`` sent."""
        resume = start.resume
        if resume is not None:
            self.context = self.context.resume(resume)
            self.stream_id = resume.session
        elif self.context.route is not None:
            self.context = self.context.route(start.client, self.stream_id)
        attributes = {"audio.encoding": start.encoding, "audio.channels": start.channels}
        stream = {"sample_rate": start.sample_rate, "channels": start.channels, "stream_id": self.stream_id}
        stream |= {"clock": lambda: self._now, "decoding": start.decoding}
        if resume is not None:  # times and indices go on from the client's last final
            stream |= {"start_s": resume.from_s, "first_segment": resume.segment}
        if self.context.on_review is not None:
            origin = round(resume.from_s * SAMPLE_RATE) if resume is not None else 0
            self._audit = ReviewAudio(self.context.review, self.stream_id, origin)
        self.session = StreamSession(
            self.context.vad,
            pack_s=self.context.window_s if self.fed else 0.0,
            pack_gap_s=self.context.gap_s,
            observers=self._observers(attributes),
            variant=self.context.variant,
            audio_tap=self._audit.fed if self._audit is not None else None,
            **stream,
        )
        if self.context.shadow_variant and self.context.shadow_vad is not None:
            self._shadow = StreamSession(self.context.shadow_vad, variant=self.context.shadow_variant, **stream)
        self._slot = SideSlot(self.session, self.settings, self.partials_wanted, self.stats)
        self.state = State.STREAMING
        self._opened = self._now
        ready = P.ready(
            self.stream_id,
            start,
            vad_config_id=self.session.vad_config_id,
            model=self.context.model,
            variant=self.context.variant,
        )
        ready |= {"role": self.context.role, "variant_id": self.context.variant_id}
        return [Send(ready | {"partials": self.partials_wanted})]

    def _observers(self, attributes: dict) -> list[Observer]:
        """The stream's observers, queued when the connection queues them. Observers that cannot
        even be made leave the stream without them, not without its transcripts."""
        factory = self.context.stream_observers
        if factory is None:
            return []
        try:
            found = list(factory(self.stream_id, attributes))
        except Exception:
            log.exception("stream %s: its observers could not be made; it goes on without them", self.stream_id)
            return []
        return [self._queue_observers(found)] if self._queue_observers is not None and found else found

    def _audio(self, data: bytes) -> list[Action]:
        P.check_audio(data, self.start)
        try:
            events = self.session.feed_pcm(data, self.start.encoding)
        except SessionError as exc:
            raise ProtocolError("bad_audio", str(exc)) from None
        self.stats.audio_s = self.session.audio_s
        actions = self._handle(events)
        if self._audit is not None:
            actions += self._audit.settle(self.session.vad.settled_sample)
        if self._shadow is not None:
            self._shadow.feed_pcm(data, self.start.encoding)
            actions += self._shadow_jobs()
        actions += self._slot.next() if self.context.automation.runs_model else []  # no partial
        if max(self.stats.audio_s, self._now - self._opened) > self.settings.max_stream_s:
            limit = f"the stream reached this server's limit of {self.settings.max_stream_s:g} s"
            actions += self.fail(ProtocolError("stream_too_long", limit), self._now)
        return actions

    def _handle(self, events: list) -> list[Action]:
        actions: list[Action] = self._audit.events(events) if self._audit is not None else []
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._slot.segment_started(ev.index, self._now)
                actions.append(Send(P.speech_start(ev.index, ev.start_s)))
            elif isinstance(ev, SpeechSegment):
                self._slot.segment_over()
            elif isinstance(ev, SpeechDiscarded):
                self._slot.segment_over()
                self._slot.discarded(ev.index)
                actions.append(Send(P.discarded(ev.index, ev.start_sample / SAMPLE_RATE, ev.end_sample / SAMPLE_RATE)))
        jobs = self.session.take_jobs()
        for job in jobs:
            actions += self._queue_final(job)
            if self.context.shadow_variant and self._shadow is None:  # the shadow shares our segments
                actions.append(self._as_shadow(job))
        # A final may be ready at once (the speculative job got there first, or no model runs).
        return actions + self._slot.drop_if_stale(bool(jobs)) + self._emit_finals()

    def _as_shadow(self, job: AsrJob) -> SubmitShadow:
        return SubmitShadow(dataclasses.replace(job, kind=JobKind.SHADOW, variant=self.context.shadow_variant))

    def _shadow_jobs(self) -> list[Action]:
        return [self._as_shadow(job) for job in self._shadow.take_jobs()]

    def _submit(self, job: AsrJob) -> SubmitFinal:
        self.session.job_queued(job)
        return SubmitFinal(job, partial(self.session.job_dequeued, job))

    def _queue_final(self, job: AsrJob) -> list[Action]:
        final = _Final(job)
        self._finals.append(final)
        if not self.context.automation.runs_model:  # a human transcribes, not the model
            final.result = (
                [Transcript(s.index, s.start_s, s.end_s, "", [], 0.0, 0.0, 0.0) for s in job.segments],
                None,
            )
            return []
        side = self._slot.claim(job)
        if side is None:
            return [self._submit(job)]
        # The segment closed exactly as predicted during the hangover: reuse that transcription.
        if side.result is not None:
            final.result = side.result
            return [Reuse(side.job)]
        final.side = side
        return [Promote(side.job)]

    # -- finals and the end -----------------------------------------------------------------------

    def _emit_finals(self) -> list[Action]:
        """Finals in segment order, as far as their transcriptions are done.

        A final made is never dropped: a segment leaves the queue only once the session made its
        final, and if something breaks after that, the messages already made still go out before
        the error (the rest of the stream's segments are sent as lost, see :meth:`internal_error`)."""
        actions: list[Action] = []
        made: list = []  # finals the session made whose messages are not made yet
        try:
            while self._finals and self._finals[0].result is not None:
                item = self._finals[0]
                transcripts, run = item.result
                if self._slot is not None and self.context.automation.runs_model:
                    transcripts, redo = self._slot.settled(item.job, transcripts, item.again)
                    if redo is not None:  # its words are not the committed ones: decoded on from them
                        self.stats.commits_redecoded += 1
                        item.job, item.result, item.again = redo, None, True
                        actions.append(self._submit(redo))
                        break
                made = self.session.complete(item.job, transcripts, run)  # raises before it changes anything
                self._finals.popleft()
                while made:
                    actions += self._final_message(made[0], run, item.again)
                    made.pop(0)
        except Exception:
            log.exception("stream %s: a final could not be sent", self.stream_id)
            for final in made:  # made, but its message could not be: the client is told it is lost
                seg = final.segment
                self.stats.lost += 1
                lost = P.final_lost(seg.index, seg.start_s, seg.end_s, "internal_error")
                actions.append(Send(lost | {"variant": self.context.variant}))
            return actions + self.internal_error()
        return actions

    def _final_message(self, final, run, again: bool = False) -> list[Action]:
        seg, latency = final.segment, final.latency_s
        if latency > 2.0:
            queued, ran = (run.queue_wait_s, run.wall_s) if run else (-1, -1)
            what = "stream %s: segment %d final after %.2f s (ASR queued %.2f s, ran %.2f s)"
            log.info(what, self.stream_id, seg.index, latency, queued, ran)
        message = P.final(seg.index, seg.start_s, seg.end_s, final.transcript, latency)
        captioned = self._slot.captioned(seg.index, final.transcript.text, again) if self._slot is not None else None
        if captioned is not None:
            self.stats.commits_broken += not captioned.kept
            self.session.report(captioned)
        actions = final_actions(self.context, self.stream_id, seg, final.transcript, message)
        if self._audit is not None:  # the review's clip gets its margins
            actions = self._audit.reviewed(seg.index, actions)
        self.stats.latencies.append(latency)
        return actions

    def _drain(self, reason: str) -> list[Action]:
        """End of input: close the open segment; the pending finals go out, then ``end``."""
        self.state = State.DRAINING
        self._drain_reason = reason
        self._drain_deadline = self._now + self.settings.drain_timeout_s
        shadow: list[Action] = []
        if self._shadow is not None:
            self._shadow.finish()
            shadow = self._shadow_jobs()
        actions = self._handle(self.session.finish())
        if self._audit is not None:  # the rejected tail, the margins with what there is
            actions += self._audit.finish()
        return actions + shadow + self._emit_finals() + self._maybe_end()

    def _maybe_end(self) -> list[Action]:
        if self.state is State.DRAINING and not self._finals:
            return self._end()
        return []

    def _end(self) -> list[Action]:
        self._slot.report_unused()
        lost = self._lose_pending("drain_timeout")  # only past the drain deadline are any left
        self.state = State.CLOSED
        first = self.start.resume.segment if self.start.resume is not None else 0  # a resumed stream counts on
        end = Send(P.end(self._drain_reason, first + self.session.segments_closed))
        if self._error is not None:
            close = Close(self._error.close_code, self._error.message[:120])
        elif self._drain_reason == "shutdown":
            close = Close(P.CLOSE_GOING_AWAY, "server shutting down")
        else:
            close = Close(P.CLOSE_NORMAL, "end of stream")
        return [*lost, end, close]
