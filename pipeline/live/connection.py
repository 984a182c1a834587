"""The asyncio side of one live stream: reads the WebSocket, keeps the timers, and carries out what
the :class:`~speechpipe.pipeline.live.core.LiveCore` decides.

It owns the stream's tasks (one writer keeps messages in order), its scheduler futures and its
outgoing queue, and releases them on every way out: ``stop``, a protocol error, a limit, server
shutdown, or the client vanishing mid-utterance. ASR results arrive from the scheduler's worker
thread and are handed to the core on the event loop.

The stream's observers run on a worker thread of its own (:class:`~speechpipe.pipeline.hooks.BackgroundObservers`,
``server.observer_queue`` events at most waiting): the event loop and the ASR workers only queue
their events. Once the stream is over, what is queued is delivered before :meth:`Connection.run`
returns (so a server that has drained its streams has drained their observers too), waited for
in a thread, at most :data:`OBSERVER_DRAIN_S`.

A client that does not read its socket is a slow reader, closed with ``slow_reader`` (1008) by
the stream's own bound on what waits to be sent, whatever the volume: more than
:data:`MAX_OUTGOING` messages queued, or one message waiting ``server.slow_reader_s`` to be
written. The second is the one that acts in practice. The WebSocket layer does not queue without
end: once its buffer is full (the client's receive window and the kernel's buffers too) a send
*blocks* until the client reads, so the queue behind it grows by a few messages a second and
never got near 2000; uvicorn's keepalive (no pong in 20 s after a 20 s ping) closed such a client
first, with 1011. The send's own clock closes it after ``slow_reader_s`` (10 s) instead. Then the
stream ends at once (its owed finals counted lost, reason ``slow_reader``), what was queued is
dropped, and the error and the close are offered for at most ``slow_reader_s`` more: a client that
reads again gets them, one that never does is left to the close timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.hooks import AsrJob, BackgroundObservers
from speechpipe.pipeline.live.actions import (
    Action,
    AddMargin,
    Close,
    DropSide,
    Fetch,
    LiveContext,
    OfferSide,
    Promote,
    Reuse,
    Send,
    SubmitFinal,
    SubmitReview,
    SubmitShadow,
)
from speechpipe.pipeline.live.core import LiveCore
from speechpipe.pipeline.live.transport import Closed, Transport
from speechpipe.pipeline.protocol import ProtocolError

if TYPE_CHECKING:
    from speechpipe.pipeline.scheduling.scheduler import AsrScheduler

log = logging.getLogger("speechpipe.server")

#: outgoing messages a client may leave unread before the stream is closed as a slow reader.
MAX_OUTGOING = 2000
#: how long a stream that is over waits for its observers to take what is queued for them.
OBSERVER_DRAIN_S = 10.0
#: how long ``end`` waits for the stream's observers to take every event before it (see _write).
END_FLUSH_S = 2.0


class Connection:
    """Serves one WebSocket connection for the lifetime of its stream."""

    def __init__(
        self, ws: Transport, stream_id: str, context: LiveContext, scheduler: AsrScheduler, *, fed: bool = False
    ) -> None:
        self.ws = ws
        self.stream_id = stream_id
        self.scheduler = scheduler
        self.loop = asyncio.get_running_loop()
        self.observers = BackgroundObservers(context.settings.observer_queue, name=f"observers-{stream_id}")
        self.core = LiveCore(stream_id, context, time.monotonic(), queue_observers=self.observers.wrap, fed=fed)
        self._inbox: asyncio.Queue[tuple] = asyncio.Queue()
        self._out: asyncio.Queue[dict] = asyncio.Queue()
        self._futures: dict[int, Future] = {}
        self._recv: asyncio.Task | None = None
        self._writer: asyncio.Task | None = None
        self._closing: Close | None = None
        self._fetching: asyncio.Task | None = None  # a resumed session's lookup (Fetch)
        self._slow_reader_s = context.settings.slow_reader_s
        #: when the message being written began to wait for the client's socket (None: none is)
        self._sending_since: float | None = None
        self._slow = False

    @property
    def stats(self):
        return self.core.stats

    def push(self, message: dict) -> bool:
        """Send ``message`` (a ``revision``) after what is queued, while the stream is open; False
        once it has ended (the client reads it with ``GET /v1/sessions/{id}`` instead)."""
        if self._closing is not None or self.core.state.value == "closed":
            return False
        self._out.put_nowait(message)
        return True

    def shutdown(self) -> None:
        """Ask the stream to finish: no more audio is read, pending finals are sent, then ``end``."""
        self._inbox.put_nowait(("shutdown",))

    async def run(self) -> None:
        """Serve the connection until the stream ends one way or another."""
        self._writer = asyncio.create_task(self._write(), name=f"writer-{self.stream_id}")
        self.observers.start()
        try:
            await self._serve()
        except Closed:
            log.info("stream %s: client went away", self.stream_id)
        except Exception:  # one stream's bug must not take the server down
            log.exception("stream %s: internal error", self.stream_id)
            try:
                await self._close(self.core.internal_error())
            except Closed:
                pass
        finally:
            self._release()
            await self._drain_observers()

    async def _drain_observers(self) -> None:
        """Deliver what the stream's observers still have queued (its end included), off the loop."""
        # Cancelled meanwhile (the server gave up on the stream), the worker still finishes alone.
        await asyncio.to_thread(self.observers.stop, OBSERVER_DRAIN_S)

    # -- the loop -------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self._closing is None:
            actions = await self._next_input()
            self._carry_out(actions)
        await self._close([])

    async def _next_input(self) -> list[Action]:
        """Wait for the next thing that happens to the stream and hand it to the core."""
        core = self.core
        if self._recv is None and core.reading:
            self._recv = asyncio.ensure_future(self.ws.recv())
        inbox = asyncio.ensure_future(self._inbox.get())
        waiting = {inbox, self._writer} | ({self._recv} if self._recv is not None else set())
        deadlines = [d for d in (core.deadline, self._stall_deadline()) if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not inbox.done():
                inbox.cancel()
        if self._writer in done:
            self._writer.result()  # re-raise what broke it (a closed connection)
        if self._is_slow_reader(time.monotonic()):
            self._slow = True
            log.info("stream %s: slow reader (%d message(s) waiting)", self.stream_id, self._out.qsize())
            return core.abandon_client(ProtocolError("slow_reader", "the client is not reading the server's messages"))
        if inbox in done:
            return self._on_inbox(inbox.result())
        if self._recv is not None and self._recv in done:
            recv, self._recv = self._recv, None
            message = recv.result()  # raises Closed when the client went away
            return core.receive(message, time.monotonic())
        return core.tick(time.monotonic())

    def _stall_deadline(self) -> float | None:
        """When the message being written counts as unread (None: nothing is being written)."""
        since = self._sending_since
        return None if since is None else since + self._slow_reader_s

    def _is_slow_reader(self, now: float) -> bool:
        stall = self._stall_deadline()
        return self._out.qsize() > MAX_OUTGOING or (stall is not None and now >= stall)

    def _on_inbox(self, item: tuple) -> list[Action]:
        now = time.monotonic()
        if item[0] == "shutdown":
            return self.core.shutdown(now)
        if item[0] == "fetched":
            return self.core.fetched(now, item[1])
        _, job, fut = item
        if self._futures.pop(job.job_id, None) is None or fut.cancelled():
            return []  # the stream was released meanwhile
        if fut.exception() is not None:
            return self.core.asr_failed(job, fut.exception(), now)
        return self.core.asr_done(job, fut.result(), now)

    # -- actions --------------------------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(message=message):
                    self._out.put_nowait(message)
                case SubmitFinal(job=job, on_leave=on_leave):
                    self._track(job, self.scheduler.submit_final(job, on_leave=on_leave))
                case OfferSide(job=job, on_leave=on_leave):
                    self._track(job, self.scheduler.offer_partial(job, on_leave=on_leave))
                case DropSide():
                    self.scheduler.drop_partial(self.core.stream_id)
                case Promote(job=job):
                    fut = self._futures.get(job.job_id)
                    if fut is not None:
                        self.scheduler.promote(fut)  # if it was dropped meanwhile, its None result says so
                case Reuse(job=job):
                    self.scheduler.reused(self.core.stream_id, job.job_id)
                case SubmitReview() | AddMargin():
                    on_review = self.core.context.on_review
                    if on_review is not None:
                        on_review(self.core.stream_id, action)
                case SubmitShadow(job=job):
                    fut = self.scheduler.submit_shadow(job)
                    on_shadow = self.core.context.on_shadow
                    if on_shadow is not None:
                        on_shadow(self.core.stream_id, job, fut)
                case Fetch(session=session):
                    self._fetching = asyncio.create_task(self._fetch(session), name=f"fetch-{self.stream_id}")
                case Close():
                    self._closing = action

    async def _fetch(self, session: str) -> None:
        """Look the resumed session up off the loop (a shared store is a network call), then
        tell the core."""
        fetch, error = self.core.context.fetch_session, None
        if fetch is not None:
            try:
                await asyncio.to_thread(fetch, session)
            except Exception as exc:  # noqa: BLE001  # the store is down: this resume is refused, nothing else
                log.warning("stream %s: session %s could not be fetched: %s", self.stream_id, session, exc)
                error = exc
        self._inbox.put_nowait(("fetched", error))

    def _track(self, job: AsrJob, fut: Future) -> None:
        self._futures[job.job_id] = fut
        fut.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self._inbox.put_nowait, ("asr", job, f)))

    # -- sending and closing ----------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            msg = await self._out.get()
            if msg.get("type") == "end":
                # The stream's observers catch up first, so that a client who has ``end`` finds the
                # server knowing every final it was sent (feedback posted right after is scored
                # against all of them). Bounded: a stuck observer delays ``end`` by END_FLUSH_S at
                # most, and what it has not taken by then it gets later (or is counted dropped).
                await asyncio.to_thread(self.observers.flush, END_FLUSH_S)
            self._sending_since = time.monotonic()
            try:
                await self.ws.send(P.dumps(msg))
            finally:
                self._sending_since = None
                self._out.task_done()

    async def _close(self, actions: list[Action]) -> None:
        """Send what is queued, then close with the code the core chose. What the client still
        sends is read and dropped meanwhile: unread frames would stall the closing handshake (the
        library stops reading the socket while its queue is full)."""
        self._carry_out(actions)
        close = self._closing or Close(P.CLOSE_INTERNAL_ERROR, "internal server error")
        discard = asyncio.create_task(self._discard_incoming(), name=f"discard-{self.stream_id}")
        if self._slow:
            try:
                await self._close_slow_reader(close)
            finally:
                discard.cancel()
            return
        try:
            joined = asyncio.ensure_future(self._out.join())
            done, _ = await asyncio.wait({joined, self._writer}, return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
            if self._writer in done:
                self._writer.result()
            await self.ws.close(close.code, close.reason)
        finally:
            discard.cancel()

    async def _close_slow_reader(self, close: Close) -> None:
        """Close a client that does not read: the write waiting on it is given up and the queue
        dropped (finals among it are logged as never delivered); the error, then the close, are
        offered for at most ``slow_reader_s``: they go out only if the client reads again."""
        self._writer.cancel()
        dropped = []
        while not self._out.empty():
            dropped.append(self._out.get_nowait())
            self._out.task_done()
        finals = sum(1 for m in dropped if m.get("type") == "final" and m.get("status") != "lost")
        if finals:
            log.info("stream %s: %d final(s) made but never read by the slow client", self.stream_id, finals)
        error = next((m for m in reversed(dropped) if m.get("type") == "error"), None)

        async def last_words() -> None:
            if error is not None:
                await self.ws.send(P.dumps(error))
            await self.ws.close(close.code, close.reason)

        try:
            await asyncio.wait_for(last_words(), self._slow_reader_s)
        except (Closed, TimeoutError):
            pass

    async def _discard_incoming(self) -> None:
        try:
            if self._recv is not None:
                await self._recv
            while True:
                await self.ws.recv()
        except Closed:
            pass

    def _release(self) -> None:
        """Free everything this stream holds; safe to call in any state, more than once."""
        for task in (self._writer, self._recv, self._fetching):
            if task is not None:
                task.cancel()
        self.scheduler.cancel_stream(self.core.stream_id)
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()
        while not self._out.empty():
            self._out.get_nowait()
            self._out.task_done()
        self.core.release()
