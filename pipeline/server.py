"""The live server: ``ws://HOST:PORT/stream`` and the HTTP routes on one port.

An ASGI app (:mod:`speechpipe.pipeline.http.app`, Starlette) runs under uvicorn, whose WebSocket
implementation is the ``websockets`` library's Sans-I/O protocol; routes that take a request body
(admin, feedback) need that HTTP layer, which the ``websockets`` server alone does not have.

One :class:`~speechpipe.stages.asr.AsrEngine` (one model) and one
:class:`~speechpipe.pipeline.scheduler.AsrScheduler` (one worker thread) serve every stream; each
connection gets its own :class:`~speechpipe.pipeline.live.connection.Connection` around a
Sans-I/O :class:`~speechpipe.pipeline.live.core.LiveCore`, which is given a
:class:`~speechpipe.pipeline.live.actions.LiveContext`, not the server.

Telemetry plugs in from outside (see :mod:`speechpipe.pipeline.observability`):
``stream_observers`` builds the observers of each stream's session (spans, per-stream metrics),
``observer`` is told about server-level events (streams turned away), and ``metrics`` renders
``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import uvicorn
from starlette.websockets import WebSocket

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.admission import Admission
from speechpipe.pipeline.config import Config, ServerSettings
from speechpipe.pipeline.hooks import Observer, Observers, StreamRejected
from speechpipe.pipeline.http.app import build_app
from speechpipe.pipeline.http.socket import AsgiTransport
from speechpipe.pipeline.live.actions import LiveContext
from speechpipe.pipeline.live.connection import Connection
from speechpipe.pipeline.live.transport import Closed, Transport
from speechpipe.pipeline.protocol import ProtocolError
from speechpipe.pipeline.scheduler import AsrScheduler
from speechpipe.stages.asr import AsrConfig, AsrEngine

log = logging.getLogger("speechpipe.server")

TOKEN_ENV = "SPEECHPIPE_TOKEN"

StreamObservers = Callable[[str, dict], Sequence[Observer]]
MetricsRenderer = Callable[[], tuple[bytes, str]]


@dataclass
class ServerCounters:
    """Totals since start (for logs and tests)."""

    accepted: int = 0
    rejected: int = 0
    closed: int = 0
    finals: int = 0


class SpeechServer:
    """The live transcription server.

    Args:
        config: pipeline settings; ``config.server`` holds the limits.
        engine: a loaded engine to share (tests pass theirs); loaded from ``config.asr`` otherwise,
            in a thread, after the socket is listening (``/readyz`` says when).
        token: required bearer token; None allows everyone.
        stream_observers: builds the observers of each stream's session from its id and its audio
            format's attributes (telemetry).
        observer: told server-level events (:class:`~speechpipe.pipeline.hooks.StreamRejected`).
        metrics: renders ``/metrics`` as ``(body, content_type)``; without it the page is empty.
        on_shutdown: called once the server has drained (flush telemetry there).
    """

    def __init__(
        self,
        config: Config | None = None,
        engine: AsrEngine | None = None,
        *,
        token: str | None = None,
        stream_observers: StreamObservers | None = None,
        observer: Observer | None = None,
        metrics: MetricsRenderer | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or Config()
        self.settings = self.config.server
        self.engine = engine
        self.token = token or None
        self.stream_observers = stream_observers
        self.observer = Observers([observer])
        self.metrics = metrics or _no_metrics
        self.on_shutdown = on_shutdown
        self.scheduler: AsrScheduler | None = None
        self.streams: dict[str, Connection] = {}
        self.counters = ServerCounters()
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self._socket: socket.socket | None = None
        self._ready = asyncio.Event()
        self._draining = False
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self._socket.getsockname()[1]

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._draining

    @property
    def languages(self) -> tuple[str, ...]:
        lang = self.config.asr.language
        return (lang,) if lang else ("en",)

    async def start(self) -> None:
        """Listen, then load the model (unless one was given) in a thread."""
        s = self.settings
        # The socket is bound here, so a port in use is an OSError to the caller, not uvicorn's exit.
        self._socket = socket.create_server((s.host, s.port), reuse_port=False)
        self._socket.setblocking(False)
        app = build_app(
            stream=self._handle,
            token=self.token,
            is_ready=lambda: (self.ready, "draining" if self._draining else "loading model"),
            metrics=self.metrics,
            on_unauthorized=lambda: self._rejected("unauthorized"),
        )
        config = uvicorn.Config(
            app,
            ws="websockets-sansio",
            # Our own check answers up to 4x the limit with a clear error; beyond that the
            # protocol closes with 1009 before buffering it all.
            ws_max_size=4 * s.max_frame_bytes,
            ws_per_message_deflate=False,  # PCM does not compress; spare the CPU
            ws_ping_interval=20,
            ws_ping_timeout=20,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            headers=[("server", "speechpipe")],
            timeout_graceful_shutdown=5,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[self._socket]), name="http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("listening on ws://%s:%d/stream", s.host, self.port)
        if self.engine is not None:
            self._on_engine()
        else:
            self._load_task = asyncio.create_task(self._load())

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.engine = await asyncio.to_thread(AsrEngine, live_asr(self.config.asr, self.settings))
        except Exception:
            log.exception("could not load the ASR model")
            raise
        log.info("model %s loaded in %.1f s", self.config.asr.model, time.perf_counter() - t0)
        self._on_engine()

    def _on_engine(self) -> None:
        s = self.settings
        self.admission = Admission(self.engine.config.workers, s.max_load, s.stream_load)
        self.scheduler = AsrScheduler(
            self.engine,
            pack_streams=s.pack_streams,
            stream_gap_s=s.stream_gap_s,
            partial_max_age_s=2 * s.partial_interval_s,
            pack_backlog=s.pack_backlog,
            partial_rest=s.partial_rest,
            workers=self.engine.config.workers,
            on_call=self.admission.record_call,
        )
        self.scheduler.start()
        self._ready.set()

    async def shutdown(self) -> None:
        """Graceful stop: refuse new streams, let each stream finish (pending finals, ``end``,
        close 1001), stop the worker, then call ``on_shutdown``. Idempotent."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        log.info("draining %d stream(s)", len(self.streams))
        if self._http is not None:
            for listener in self._http.servers:
                listener.close()  # stop listening; open streams go on
        for stream in list(self.streams.values()):
            stream.shutdown()
        if self._handlers:
            _done, pending = await asyncio.wait(set(self._handlers), timeout=self.settings.drain_timeout_s + 5)
            for task in pending:
                task.cancel()
        if self._http is not None:
            self._http.should_exit = True
            await self._http_task
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop, 10.0)
        if self.on_shutdown is not None:
            try:
                self.on_shutdown()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("stopped")
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then drain (the ``speechpipe serve`` command)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    # -- per stream ---------------------------------------------------------------------------

    def context(self) -> LiveContext:
        """What each stream is given (the server's settings and its engine's model)."""
        return LiveContext(
            settings=self.settings,
            vad=self.config.vad,
            languages=self.languages,
            model=self.engine.model_name,
            variant=self.config.pipeline.variant,
            stream_observers=self.stream_observers,
        )

    async def _handle(self, websocket: WebSocket) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self._serve_connection(AsgiTransport(websocket))
        finally:
            self._handlers.discard(task)

    async def _serve_connection(self, ws: Transport) -> None:
        stream_id = uuid.uuid4().hex[:12]
        # Admission is decided before the first await, so concurrent connections cannot overshoot.
        if self._draining:
            reason, exc = "shutting_down", ProtocolError("shutting_down", "the server is shutting down")
        elif not self._ready.is_set():
            reason, exc = "not_ready", ProtocolError("not_ready", "the model is still loading; retry shortly")
        elif len(self.streams) >= self.settings.max_streams:
            reason, exc = (
                "busy",
                ProtocolError(
                    "server_busy",
                    f"all {self.settings.max_streams} streams are in use; retry in {self.settings.retry_after_s:g} s",
                ),
            )
        elif not (verdict := self.admission.verdict(time.monotonic(), len(self.streams))).admitted:
            reason, exc = (
                "capacity",
                ProtocolError(
                    "server_busy",
                    f"the server is at capacity: {len(self.streams) + 1} streams would need {verdict.load:.0%} of its "
                    f"ASR workers; retry in {self.settings.retry_after_s:g} s",
                ),
            )
        else:
            reason, exc = None, None
        if exc is not None:
            self._rejected(reason)
            retry = {} if exc.code == "shutting_down" else {"retry_after_s": self.settings.retry_after_s}
            await _reject(ws, exc, retry)
            return
        stream = Connection(ws, stream_id, self.context(), self.scheduler)
        self.streams[stream_id] = stream
        self.admission.record_streams(time.monotonic(), len(self.streams))
        self.counters.accepted += 1
        log.info("stream %s: opened from %s", stream_id, ws.peer)
        try:
            await stream.run()
        finally:
            del self.streams[stream_id]
            self.admission.record_streams(time.monotonic(), len(self.streams))
            self.counters.closed += 1
            self.counters.finals += stream.stats.finals
            log.info(
                "stream %s: closed (%.1f s of audio, %d finals)", stream_id, stream.stats.audio_s, stream.stats.finals
            )

    def _rejected(self, reason: str) -> None:
        self.counters.rejected += 1
        try:
            self.observer.on_event(StreamRejected(reason))
        except Exception:  # telemetry must never break serving
            log.exception("observer failed")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: :meth:`SpeechServer.serve_forever` handles SIGTERM and
    SIGINT itself, draining the streams before the HTTP server stops."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _reject(ws: Transport, exc: ProtocolError, extra: dict) -> None:
    async def discard() -> None:  # what the client sends meanwhile must not stall the close
        try:
            while True:
                await ws.recv()
        except Closed:
            pass

    reader = asyncio.create_task(discard())
    try:
        await ws.send(P.dumps(P.error(exc.code, exc.message, **extra)))
        await ws.close(exc.close_code, exc.message[:120])
    except Closed:
        pass
    finally:
        reader.cancel()


def _no_metrics() -> tuple[bytes, str]:
    return b"", "text/plain; version=0.0.4; charset=utf-8"


def live_asr(asr: AsrConfig, settings: ServerSettings, cores: int | None = None) -> AsrConfig:
    """The ASR settings of a live server: ``server.asr_workers`` calls at once (one per core by
    default), each on ``asr.threads`` threads (by default the cores shared out between them)."""
    cores = cores or os.cpu_count() or 1
    workers = settings.asr_workers or cores
    return replace(asr, workers=workers, threads=asr.threads or max(1, cores // workers))


def token_from_env(flag: str | None) -> str | None:
    """The token from ``--token``, else from ``$SPEECHPIPE_TOKEN``; empty means none."""
    return flag or os.environ.get(TOKEN_ENV) or None
