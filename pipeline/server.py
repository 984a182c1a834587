"""The live server: ``ws://HOST:PORT/stream`` plus a few HTTP routes, on the ``websockets`` library.

Routes (all ``GET``):

* ``/stream``: the WebSocket endpoint (docs/protocol.md); token-protected when a token is set.
* ``/``: the browser client (microphone over the same WebSocket); ``/app.js``, ``/pcm-worklet.js``.
* ``/healthz``: 200 while the process serves requests.
* ``/readyz``: 200 once the model is loaded, 503 while loading or draining.
* ``/metrics``: Prometheus text exposition.

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
import hmac
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.admission import Admission
from speechpipe.pipeline.config import Config, ServerSettings
from speechpipe.pipeline.hooks import Observer, Observers, StreamRejected
from speechpipe.pipeline.live.actions import LiveContext
from speechpipe.pipeline.live.connection import Connection
from speechpipe.pipeline.protocol import ProtocolError
from speechpipe.pipeline.scheduler import AsrScheduler
from speechpipe.stages.asr import AsrConfig, AsrEngine

log = logging.getLogger("speechpipe.server")

TOKEN_ENV = "SPEECHPIPE_TOKEN"

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
}


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
        self._server: Server | None = None
        self._ready = asyncio.Event()
        self._draining = False
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self._server.sockets[0].getsockname()[1]

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
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=self._process_request,
            # Our own check answers up to 4x the limit with a clear error; beyond that the
            # library closes with 1009 before buffering it all.
            max_size=4 * s.max_frame_bytes,
            compression=None,  # PCM does not compress; spare the CPU
            ping_interval=20,
            ping_timeout=20,
            server_header="speechpipe",
        )
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
        if self._server is not None:
            self._server.close(close_connections=False)  # stop listening; open streams go on
        for stream in list(self.streams.values()):
            stream.shutdown()
        if self._handlers:
            _done, pending = await asyncio.wait(set(self._handlers), timeout=self.settings.drain_timeout_s + 5)
            for task in pending:
                task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
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

    async def _handle(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self._serve_connection(ws)
        finally:
            self._handlers.discard(task)

    async def _serve_connection(self, ws: ServerConnection) -> None:
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
        log.info("stream %s: opened from %s", stream_id, _peer(ws))
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

    # -- HTTP ---------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if path == "/stream":
            if self.token and not self._authorized(request, url.query):
                self._rejected("unauthorized")
                response = connection.respond(401, "missing or wrong token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="speechpipe"'
                return response
            return None  # go on with the WebSocket handshake
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path == "/readyz":
            if self.ready:
                return connection.respond(200, "ready\n")
            return connection.respond(503, "draining\n" if self._draining else "loading model\n")
        if path == "/metrics":
            body, content_type = self.metrics()
            return _response(200, body, content_type)
        if path in _STATIC:
            name, content_type = _STATIC[path]
            body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
            return _response(200, body, content_type)
        return connection.respond(404, "not found\n")

    def _authorized(self, request: Request, query: str) -> bool:
        given = None
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = (parse_qs(query).get("token") or [None])[0]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


async def _reject(ws: ServerConnection, exc: ProtocolError, extra: dict) -> None:
    from websockets.exceptions import ConnectionClosed

    async def discard() -> None:  # what the client sends meanwhile must not stall the close
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass

    reader = asyncio.create_task(discard())
    try:
        await ws.send(P.dumps(P.error(exc.code, exc.message, **extra)))
        await ws.close(exc.close_code, exc.message[:120])
    except ConnectionClosed:
        pass
    finally:
        reader.cancel()


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
    return Response(status, reason, headers, body)


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:  # noqa: BLE001
        return "?"


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
