"""One live WebSocket stream: protocol messages in, a :class:`StreamSession` in the middle, partial
and final transcripts out.

:class:`LiveStream` is the thin async shell around the Sans-I/O session. It reads the connection,
feeds audio to the session, hands the session's ASR jobs to the shared
:class:`~speechpipe.pipeline.scheduler.AsrScheduler`, and sends results back in order through one
writer task. It owns every resource of its stream (tasks, futures, buffers, the session) and
releases them on every way out: ``stop``, a protocol error, a limit, server shutdown, or the client
vanishing mid-utterance.

Latency: for every closed segment the stream remembers when the audio at the segment's end
arrived (one wall-clock stamp per received frame, kept for a few seconds); ``latency_s`` in the
final is the time from that arrival to the moment the final is handed to the socket. It includes
the silence the VAD waits for before closing a segment, any queueing, and the ASR call.

Speculative finals: while the VAD's hangover runs, the end a segment will get if the pause lasts
is already known (last speech frame + post-roll). The stream offers exactly that audio to the
scheduler as a speculative job; if the segment then closes with the same start and end, the
speculative transcription *is* the final (same samples, same model), and the final is sent as soon
as it is ready instead of starting only then. If speech resumes, the result is shown as a partial.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.protocol import ProtocolError, Start, Stop
from speechpipe.pipeline.session import AsrJob, FinalTranscript, SessionError, StreamSession, same_audio
from speechpipe.stages.vad import SAMPLE_RATE, SpeechDiscarded, SpeechSegment, SpeechStarted

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from speechpipe.pipeline.server import SpeechServer

log = logging.getLogger("speechpipe.server")

#: how much arrival history (seconds of input audio) a stream keeps to time its segment ends.
ARRIVAL_HISTORY_S = 40.0
#: outgoing messages a client may leave unread before the stream is closed as a slow reader.
MAX_OUTGOING = 2000


class _Shutdown(Exception):
    """The server is draining: stop reading and finish the stream."""


@dataclass
class _Final:
    """A closed segment on its way to the client, in segment order."""

    job: AsrJob
    future: asyncio.Future
    arrival: float  # monotonic time the audio at the segment's end arrived
    speculative: bool = False  # its transcript comes from a speculative job


@dataclass
class _Side:
    """The stream's partial or speculative job in the scheduler's slot."""

    job: AsrJob
    future: Future
    speculative: bool
    result: tuple | None = None  # (transcripts, run) once it ran
    used: bool = False  # its result became a final
    reported: bool = False  # given to the session (and so its hooks) already

    @property
    def index(self) -> int:
        return self.job.pieces[0].index


@dataclass
class StreamStats:
    """What a stream did, for logs and tests."""

    audio_s: float = 0.0
    messages: int = 0
    finals: int = 0
    partials: int = 0
    speculative_used: int = 0
    latencies: list[float] = field(default_factory=list)


class LiveStream:
    """Serves one WebSocket connection for the lifetime of the stream."""

    def __init__(self, server: SpeechServer, ws: ServerConnection, stream_id: str) -> None:
        self.server = server
        self.ws = ws
        self.stream_id = stream_id
        self.settings = server.config.server
        self.scheduler = server.scheduler
        self.loop = asyncio.get_running_loop()
        self.session: StreamSession | None = None
        self.start_msg: Start | None = None
        self.stats = StreamStats()
        self._shutdown = asyncio.Event()
        self._opened = time.monotonic()
        self._last_message = self._opened
        self._input_frames = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (input frames received so far, time)
        self._segment_arrival: dict[int, float] = {}
        self._finals: deque[_Final] = deque()
        self._finals_changed = asyncio.Event()
        self._out: asyncio.Queue[dict] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._discard: asyncio.Task | None = None
        self._emitter: asyncio.Task | None = None
        self._side: _Side | None = None
        self._spec_seen: set[tuple[int, int, int]] = set()
        self._open_index: int | None = None
        self._open_start = 0
        self._last_partial_len = 0
        self._closing = False

    @property
    def partials_wanted(self) -> bool:
        return self.settings.partials and self.start_msg is not None and self.start_msg.partials

    # -- entry point --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the stream ends one way or another."""
        self._writer = asyncio.create_task(self._write(), name=f"writer-{self.stream_id}")
        try:
            await self._serve()
        except ConnectionClosed:
            log.info("stream %s: client went away", self.stream_id)
        except Exception:  # one stream's bug must not take the server down
            log.exception("stream %s: internal error", self.stream_id)
            await self._fail(ProtocolError("internal_error", "internal server error; the stream was closed"))
        finally:
            self._release()

    def shutdown(self) -> None:
        """Ask the stream to finish: no more audio is read, pending finals are sent, then ``end``."""
        self._shutdown.set()

    # -- the stream ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            start = await self._await_start()
        except _Shutdown:
            await self._fail(ProtocolError("shutting_down", "the server is shutting down"))
            return
        except ProtocolError as exc:
            await self._fail(exc)
            return
        self._begin(start)
        reason, error = "stop", None
        try:
            await self._read_audio()
        except _Shutdown:
            reason = "shutdown"
        except ProtocolError as exc:
            reason, error = "error", exc
            self._send(P.error(exc.code, exc.message))
        # Whatever the client still sends is read and ignored: unread frames would stall the
        # closing handshake (the library stops reading the socket while its queue is full).
        self._discard = asyncio.create_task(self._discard_incoming(), name=f"discard-{self.stream_id}")
        await self._drain(reason)
        if error is not None:
            await self.ws.close(error.close_code, error.message[:120])
        elif reason == "shutdown":
            await self.ws.close(P.CLOSE_GOING_AWAY, "server shutting down")
        else:
            await self.ws.close(P.CLOSE_NORMAL, "end of stream")

    async def _await_start(self) -> Start:
        msg = await self._recv()
        if isinstance(msg, bytes):
            raise ProtocolError("binary_before_start", "audio received before the start message")
        parsed = P.parse_client_text(msg, self.server.languages)
        if isinstance(parsed, Stop):
            raise ProtocolError("bad_message", "stop received before start")
        return parsed

    def _begin(self, start: Start) -> None:
        self.start_msg = start
        self.session = StreamSession(
            self.server.config.vad,
            sample_rate=start.sample_rate,
            channels=start.channels,
            pack_s=0.0,
            stream_id=self.stream_id,
            hooks=self.server.hooks_for(self.stream_id, start),
        )
        self._opened = time.monotonic()
        self._emitter = asyncio.create_task(self._emit_finals(), name=f"finals-{self.stream_id}")
        self._send(
            P.ready(
                self.stream_id,
                start,
                vad_config_id=self.session.vad_config_id,
                model=self.server.engine.model_name,
                variant=self.server.config.pipeline.variant,
            )
            | {"partials": self.partials_wanted}
        )

    async def _read_audio(self) -> None:
        start = self.start_msg
        while True:
            await self._backpressure()
            msg = await self._recv()
            if isinstance(msg, str):
                if isinstance(P.parse_client_text(msg, self.server.languages), Stop):
                    return
                raise ProtocolError("already_started", "start received twice; send stop to end the stream")
            P.check_audio(msg, start)
            now = time.monotonic()
            self._input_frames += len(msg) // start.bytes_per_frame
            self._arrivals.append((self._input_frames, now))
            self.stats.audio_s = self._input_frames / start.sample_rate
            try:
                events = self.session.feed_pcm(msg, start.encoding)
            except SessionError as exc:
                raise ProtocolError("bad_audio", str(exc)) from None
            self._handle(events)
            self._prune_arrivals()
            self._maybe_partial()
            if max(self.stats.audio_s, now - self._opened) > self.settings.max_stream_s:
                raise ProtocolError(
                    "stream_too_long", f"the stream reached this server's limit of {self.settings.max_stream_s:g} s"
                )

    async def _recv(self) -> str | bytes:
        """The next message; raises _Shutdown, ProtocolError (idle, too large) or ConnectionClosed."""
        if self._shutdown.is_set():
            raise _Shutdown
        if self._out.qsize() > MAX_OUTGOING:
            raise ProtocolError("slow_reader", "the client is not reading the server's messages")
        timeout = self._last_message + self.settings.idle_timeout_s - time.monotonic()
        recv = asyncio.ensure_future(self.ws.recv())
        stop = asyncio.ensure_future(self._shutdown.wait())
        watch = {recv, stop} | {t for t in (self._emitter, self._writer) if t is not None}
        try:
            done, _ = await asyncio.wait(watch, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not recv.done():
                recv.cancel()  # recv() is cancel-safe: nothing is lost
        for task in (self._emitter, self._writer):
            if task is not None and task in done:
                task.result()  # re-raise what broke it (a closed connection, an ASR failure)
        if recv not in done:
            if stop in done:
                raise _Shutdown
            raise ProtocolError(
                "idle_timeout", f"nothing received for {self.settings.idle_timeout_s:g} s; closing the stream"
            )
        msg = recv.result()
        self._last_message = time.monotonic()
        self.stats.messages += 1
        size = len(msg) if isinstance(msg, bytes) else len(msg.encode("utf-8", "replace"))
        if size > self.settings.max_frame_bytes:
            raise ProtocolError(
                "frame_too_large", f"message of {size} bytes exceeds the limit of {self.settings.max_frame_bytes} bytes"
            )
        return msg

    async def _discard_incoming(self) -> None:
        try:
            while True:
                await self.ws.recv()
        except ConnectionClosed:
            pass

    async def _backpressure(self) -> None:
        """Stop reading while this stream has too many finals waiting for the model."""
        while sum(not f.future.done() for f in self._finals) >= self.settings.max_queued_finals:
            self._finals_changed.clear()
            await asyncio.wait(
                {asyncio.ensure_future(self._finals_changed.wait()), self._emitter},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self._emitter.done():
                self._emitter.result()

    # -- session events -----------------------------------------------------------------------

    def _handle(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._open_index, self._open_start, self._last_partial_len = ev.index, ev.start_sample, 0
                self._send(P.speech_start(ev.index, ev.start_s))
            elif isinstance(ev, SpeechSegment):
                self._open_index = None
                self._spec_seen.clear()
                self._segment_arrival[ev.index] = self._arrival_of(ev.end_sample)
            elif isinstance(ev, SpeechDiscarded):
                self._open_index = None
                self._spec_seen.clear()
                self._send(P.discarded(ev.index, ev.start_sample / SAMPLE_RATE, ev.end_sample / SAMPLE_RATE))
        jobs = self.session.take_jobs()
        for job in jobs:
            self._queue_final(job)
        side = self._side
        if (jobs or self._open_index is None) and side is not None and not side.used and not side.future.done():
            # Its segment is over and it did not become the final: it is worth nothing now.
            self.scheduler.drop_partial(self.stream_id)

    def _queue_final(self, job: AsrJob) -> None:
        seg = job.segments[0]
        arrival = self._segment_arrival.pop(seg.index, time.monotonic())
        side = self._side
        fut: Future | None = None
        side_used = False
        if side is not None and side.speculative and not side.used and same_audio(side.job, job):
            # The segment closed exactly as predicted during the hangover: reuse that transcription.
            if side.result is not None:
                fut = Future()
                fut.set_result(side.result)
            elif self.scheduler.promote(side.future):
                fut = side.future
            if fut is not None:
                side.used = side_used = True
                self.stats.speculative_used += 1
        if fut is None:
            fut = self.scheduler.submit_final(job, on_leave=self._queued(job))
        self._finals.append(_Final(job, asyncio.wrap_future(fut, loop=self.loop), arrival, speculative=side_used))
        self._finals_changed.set()

    def _queued(self, job: AsrJob):
        """Tell the session's observers ``job`` is queued; returns the callback for when it leaves."""
        session = self.session
        session.hooks.asr_queued(session, job)
        return lambda: session.hooks.asr_started(session, job)

    def _arrival_of(self, end_sample: int) -> float:
        """When the input audio at 16 kHz stream sample ``end_sample`` arrived."""
        frame = -(-end_sample * self.start_msg.sample_rate // SAMPLE_RATE)  # ceil
        for frames, when in self._arrivals:
            if frames >= frame:
                return when
        return self._arrivals[-1][1] if self._arrivals else time.monotonic()

    def _prune_arrivals(self) -> None:
        keep = self._input_frames - int(ARRIVAL_HISTORY_S * self.start_msg.sample_rate)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < keep:
            self._arrivals.popleft()

    # -- partials and speculative jobs ----------------------------------------------------------

    def _maybe_partial(self) -> None:
        session = self.session
        side = self._side
        if (
            side is not None
            and side.speculative
            and not side.used
            and not side.future.done()
            and not session.vad.pausing
        ):
            self.scheduler.drop_partial(self.stream_id)  # speech resumed: the guess is void
        if self.settings.speculative:
            job = session.speculative_job()
            if job is not None:
                p = job.pieces[0]
                key = (p.index, p.start_sample, p.audio.size)
                if key not in self._spec_seen:
                    self._spec_seen.add(key)
                    self._offer(job, speculative=True)
                    return
        side = self._side
        if not self.partials_wanted or self._open_index is None or (side is not None and not side.future.done()):
            return  # one partial at a time per stream: the next one waits for this one
        if session.vad.pausing:
            return  # the segment may be closing: keep the worker free for its speculative job
        grown = session.stream_samples - self._open_start
        if grown - self._last_partial_len < self.settings.partial_interval_s * SAMPLE_RATE:
            return
        job = session.partial_job()
        if job is not None:
            self._last_partial_len = grown
            self._offer(job, speculative=False)

    def _offer(self, job: AsrJob, speculative: bool) -> None:
        old = self._side
        if old is not None and not old.used:
            self._report_unused(old)
        fut = self.scheduler.offer_partial(job, speculative=speculative, on_leave=self._queued(job))
        side = _Side(job, fut, speculative)
        self._side = side
        fut.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self._side_done, side, f))

    def _side_done(self, side: _Side, fut: Future) -> None:
        if self.session is None or fut.cancelled() or fut.exception() is not None:
            return
        result = fut.result()
        if result is None:
            return  # dropped by the scheduler: stale or replaced
        side.result = result
        if side.used:
            return  # it became a final; reported there
        if self._closing or side.index != self._open_index or side is not self._side:
            self._report_unused(side)  # its segment closed differently, or it was superseded
            return
        if not side.speculative:
            self._report_unused(side)  # a partial is done with once shown
        if not self.partials_wanted:
            return  # a speculative job for a client that wants no partials: kept for the final
        for t in result[0]:
            if t.text:
                self.stats.partials += 1
                self._send(P.partial(t.index, t))

    def _report_unused(self, side: _Side) -> None:
        """Hand a partial or speculative result to the session (and so to its observers), once."""
        if side.reported or side.result is None or self.session is None:
            return
        side.reported = True
        transcripts, run = side.result
        self.session.complete(side.job, transcripts, run)

    # -- finals -------------------------------------------------------------------------------

    async def _emit_finals(self) -> None:
        """Send finals in segment order as their transcriptions complete."""
        while True:
            while not self._finals:
                self._finals_changed.clear()
                await self._finals_changed.wait()
            item = self._finals[0]
            result = await item.future
            if result is None:
                # A speculative job dropped just before it could be promoted: run it as a final now.
                fut = self.scheduler.submit_final(item.job, on_leave=self._queued(item.job))
                item.future = asyncio.wrap_future(fut, loop=self.loop)
                continue
            self._finals.popleft()
            transcripts, run = result
            for ev in self.session.complete(item.job, transcripts, run):
                if isinstance(ev, FinalTranscript):
                    latency = time.monotonic() - item.arrival
                    seg = ev.segment
                    self.stats.finals += 1
                    self.stats.latencies.append(latency)
                    if latency > 2.0:
                        log.info(
                            "stream %s: segment %d final after %.2f s (ASR queued %.2f s, ran %.2f s; reused speculative: %s)",
                            self.stream_id,
                            seg.index,
                            latency,
                            run.queue_wait_s if run else -1,
                            run.wall_s if run else -1,
                            item.speculative,
                        )
                    self.server.observe_final(latency)
                    self._send(P.final(seg.index, seg.start_s, seg.end_s, ev.transcript, latency))
            self._finals_changed.set()

    async def _drain(self, reason: str) -> None:
        """End of input: close the open segment, send every pending final, then ``end``."""
        self._closing = True
        self._handle(self.session.finish())
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self._finals:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stream %s: %d final(s) not ready in time", self.stream_id, len(self._finals))
                break
            self._finals_changed.clear()
            waiter = asyncio.ensure_future(self._finals_changed.wait())
            done, _ = await asyncio.wait(
                {waiter, self._emitter, self._writer}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            for task in (self._emitter, self._writer):
                if task in done:
                    task.result()
        if self._side is not None and not self._side.used:
            self._report_unused(self._side)
        self._send(P.end(reason, self.session.segments_closed))
        await self._flush()
        self.session.close()

    # -- sending ------------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        """Queue a message for the writer task: one writer keeps messages in order."""
        self._out.put_nowait(msg)

    async def _write(self) -> None:
        while True:
            msg = await self._out.get()
            try:
                await self.ws.send(P.dumps(msg))
            finally:
                self._out.task_done()

    async def _flush(self) -> None:
        """Wait until every queued message went out (raises ConnectionClosed if it cannot)."""
        joined = asyncio.ensure_future(self._out.join())
        done, _ = await asyncio.wait({joined, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()
        if self._writer in done:
            self._writer.result()

    async def _fail(self, exc: ProtocolError) -> None:
        """Report an error and close (before the stream started, or when it broke)."""
        if self._discard is None:
            self._discard = asyncio.create_task(self._discard_incoming(), name=f"discard-{self.stream_id}")
        try:
            self._send(P.error(exc.code, exc.message, **getattr(exc, "extra", {})))
            await self._flush()
            await self.ws.close(exc.close_code, exc.message[:120])
        except ConnectionClosed:
            pass

    def _release(self) -> None:
        """Free everything this stream holds; safe to call in any state, more than once."""
        self._closing = True
        for task in (self._emitter, self._writer, self._discard):
            if task is not None:
                task.cancel()
        self.scheduler.cancel_stream(self.stream_id)
        for f in self._finals:
            f.future.cancel()
        self._finals.clear()
        self._side = None
        self._arrivals.clear()
        self._segment_arrival.clear()
        while not self._out.empty():
            self._out.get_nowait()
            self._out.task_done()
        if self.session is not None:
            if not self.session.done:
                lost = self.session.abandon()
                if lost:
                    log.info("stream %s: dropped %d segment(s) in flight", self.stream_id, lost)
            self.session.close()
