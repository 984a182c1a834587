"""The live server: ``ws://HOST:PORT/stream`` and the HTTP routes on one port, composed of parts.

An ASGI app (:mod:`speechpipe.pipeline.server.app`, Starlette) runs under uvicorn with the
``websockets`` library's Sans-I/O protocol: routes that take a body need that HTTP layer.

Every configured pipeline variant is loaded (:mod:`speechpipe.pipeline.deploy.variants`; variants of one
model share it) and one :class:`~speechpipe.pipeline.scheduling.scheduler.AsrScheduler` runs all of their
jobs on the same worker threads. The :class:`~speechpipe.pipeline.deploy.deployment.Deployment` decides
which variant serves each new stream (``[deploy]``: single, shadow, canary, blue/green). Each
connection gets its own :class:`~speechpipe.pipeline.live.connection.Connection` around a Sans-I/O
:class:`~speechpipe.pipeline.live.core.LiveCore`, which is given a
:class:`~speechpipe.pipeline.live.actions.LiveContext` (by the
:class:`~speechpipe.pipeline.deploy.router.StreamRouter`), not the server.

Everything else is a part (:mod:`speechpipe.pipeline.server.parts`): telemetry, the admin API and
feedback, drift monitoring, the review queue, the OpenAI API, the dashboard. The server asks each
for its routes when it starts listening, for the observers it wants on each stream, and for the
observers of the server's own events; once the variants are loaded it starts each with a
:class:`~speechpipe.pipeline.server.parts.ServerContext`, then calls their ``tick`` every
``tick_s`` seconds of its loop with the time of its ``clock`` (``tick_s=None``: only when told,
``await server.tick()``, as tests do). Who may call what is the principals' business
(:mod:`speechpipe.pipeline.server.auth`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.deploy.deployment import Deployment, ReplicaInfo
from speechpipe.pipeline.deploy.golden import GoldenVerdict, run_golden
from speechpipe.pipeline.deploy.router import StreamRouter
from speechpipe.pipeline.deploy.variants import LoadedVariant, load_variants
from speechpipe.pipeline.hooks import FAULTS, Observer, Observers, StreamRejected
from speechpipe.pipeline.live.actions import LiveContext, ReviewRequest
from speechpipe.pipeline.live.connection import Connection
from speechpipe.pipeline.live.transport import Transport
from speechpipe.pipeline.monitoring.quality import load_calibration
from speechpipe.pipeline.scheduling.admission import Admission, Verdict, refusal
from speechpipe.pipeline.scheduling.scheduler import AsrScheduler
from speechpipe.pipeline.server.app import build_app, static_routes, upgrade_required, whoami
from speechpipe.pipeline.server.auth import (
    NO_STORE,
    STREAM,
    Principals,
    SessionOwners,
    redact_tokens_in_logs,
    requires,
    unauthorized,
)
from speechpipe.pipeline.server.parts import ReviewQueue, ServerContext, ServerPart, StreamInfo
from speechpipe.pipeline.server.runner import HttpServer, reject, start_http, stop_listening
from speechpipe.pipeline.server.tokens import admin_token_from_env, token_from_env
from speechpipe.pipeline.server.transport import AsgiTransport
from speechpipe.stages.asr import AsrEngine

log = logging.getLogger("speechpipe.server")

#: how often the parts tick (the canary's gates, drift, the review figures), by default.
DEPLOY_TICK_S = 1.0

__all__ = ["SpeechServer", "admin_token_from_env", "token_from_env"]  # the tokens' helpers, from here too


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
        engine: a loaded engine to share (tests pass theirs) with every variant of the same ASR
            settings; the variants' models are loaded otherwise, in a thread, after the socket is
            listening (``/readyz`` says when).
        parts: the features plugged in (:mod:`speechpipe.pipeline.server.parts`), in the order
            their observers see events and their routes are matched.
        principals: who may call what (:class:`~speechpipe.pipeline.server.auth.Principals`);
            by default no token is set: anyone may stream and send feedback, the admin and
            review APIs are off.
        clock: the time the parts tick at and the deployment and review queue keep (Unix seconds).
        tick_s: seconds of the event loop between two ticks; None: no ticking on its own.
    """

    def __init__(
        self,
        config: Config | None = None,
        engine: AsrEngine | None = None,
        *,
        parts: Sequence[ServerPart] = (),
        principals: Principals | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float | None = DEPLOY_TICK_S,
    ) -> None:
        self.config = config or Config()
        self.settings = self.config.server
        self.engine = engine
        self.parts = list(parts)
        self.principals = principals or Principals()
        self.owners = SessionOwners()  # who opened each session: the one record the session routes ask
        self.clock = clock
        self.tick_s = tick_s
        # The server's own events (streams turned away, the deployment's reports...), to every part.
        self.observer = Observers(o for p in self.parts for o in p.server_observers())
        queues = [p for p in self.parts if isinstance(p, ReviewQueue) and p.queues_reviews]
        self._review_queue = queues[0] if queues else None
        self.variants: dict[str, LoadedVariant] = {}
        self.deployment: Deployment | None = None
        self.router: StreamRouter | None = None
        self.scheduler: AsrScheduler | None = None
        self.streams: dict[str, Connection] = {}
        self._fed: set[str] = set()  # streams of uploads, fed as fast as they are read
        self.counters = ServerCounters()
        self.app: Starlette | None = None  # built when the server starts listening
        self._http: HttpServer | None = None
        self._http_task: asyncio.Task | None = None
        self._socket: socket.socket | None = None
        self._port = 0
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started: list[ServerPart] = []
        self._load_task: asyncio.Task | None = None
        self._tick_task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); read once when bound: the HTTP server
        may close our handle of the socket once it serves."""
        return self._port

    @property
    def loading(self) -> asyncio.Task | None:
        """The task loading the variants (None where they were given loaded)."""
        return self._load_task

    @property
    def draining(self) -> bool:
        return self._stopping.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.draining

    def routes(self) -> list[BaseRoute]:
        """The server's own routes, then every part's."""
        own: list[BaseRoute] = [
            WebSocketRoute("/stream", requires(STREAM, self._refuse_stream)(self.stream_endpoint)),
            Route("/stream", upgrade_required),
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/v1/whoami", whoami),
            *static_routes(),
        ]
        return own + [route for part in self.parts for route in part.routes()]

    async def start(self) -> None:
        """Listen, then load the model (unless one was given) in a thread."""
        s = self.settings
        # The socket is bound here, so a port in use is an OSError to the caller, not uvicorn's exit.
        self._socket = socket.create_server((s.host, s.port), reuse_port=False)
        self._socket.setblocking(False)
        self._port = self._socket.getsockname()[1]
        redact_tokens_in_logs()  # before the first request can be logged
        self.app = build_app(self.routes(), self.principals)
        # Our own check answers up to 4x the limit with a clear error; beyond that the protocol
        # closes with 1009 before buffering it all.
        self._http, self._http_task = await start_http(self.app, self._socket, 4 * s.max_frame_bytes)
        log.info("listening on ws://%s:%d/stream", s.host, self.port)
        if self.engine is not None and not self.config.variants:
            await self._on_variants(load_variants(self.config, list(self.config.variant_names()), self.engine))
        else:
            self._load_task = asyncio.create_task(self._load(), name="load-variants")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _load(self) -> None:
        t0 = time.perf_counter()
        names = list(self.config.variant_names())
        try:
            variants = await asyncio.to_thread(load_variants, self.config, names, self.engine)
            await self._on_variants(variants)
        except Exception:
            log.exception("could not load the pipeline variants")
            raise
        models = ", ".join(f"{v.name}: {v.config.asr.model}" for v in variants.values())
        log.info("variants loaded in %.1f s (%s)", time.perf_counter() - t0, models)

    async def _on_variants(self, variants: dict[str, LoadedVariant]) -> None:
        """Everything loaded: the deployment, the scheduler, the parts, then ready."""
        s = self.settings
        deploy = self.config.deploy.resolved(self.config.pipeline.variant)
        try:
            deploy.check(set(variants))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        ids = {name: v.variant_id for name, v in variants.items()}
        host = self.settings.host
        replica = ReplicaInfo(f"{socket.gethostname()}:{self.port}", f"http://{host}:{self.port}")
        baseline = self.config.monitoring.baseline
        try:  # the estimated-WER gate's calibration: the baseline's, when it has one
            calibration = load_calibration(baseline, deploy.primary) if baseline else None
        except ValueError as exc:
            raise ConfigError(f"monitoring.baseline: {exc}") from None
        golden = None
        if deploy.golden:  # the candidate against the primary on the golden set, in a thread of the deployment's

            def golden(primary: str, candidate: str) -> GoldenVerdict:
                configs = variants[primary].config, variants[candidate].config
                return run_golden(deploy.golden, *configs, deploy.max_golden_wer_delta)

        self.deployment = Deployment(
            deploy,
            ids,
            reports=self.observer,
            clock=self.clock,
            replica=replica,
            calibration=calibration,
            golden=golden,
        )
        self.variants = variants
        self.engine = variants[self.deployment.controller.primary].engine
        review = self._review if self._review_queue is not None else None
        self.router = StreamRouter(self.config, variants, self.deployment, self._stream_observers, review)
        workers = self.engine.config.workers
        self.admission = Admission(workers, s.max_load, s.stream_load)
        self.scheduler = AsrScheduler(
            self.engine,
            engines={name: v.engine for name, v in variants.items()},
            shadow_max_queued=s.shadow_max_queued,
            pack_streams=s.pack_streams,
            stream_gap_s=s.stream_gap_s,
            partial_max_age_s=2 * s.partial_interval_s,
            pack_backlog=s.pack_backlog,
            partial_rest=s.partial_rest,
            workers=workers,
        )
        self.scheduler.start()
        ctx = ServerContext(
            config=self.config,
            clock=self.clock,
            variants=variants,
            deployment=self.deployment,
            languages=self.router.languages,
            scheduler=self.scheduler,
            observer=self.observer,
            push=self._push,
            serve=self.serve_transport,
            stopping=self._stopping,
            owners=self.owners,
        )
        for part in self.parts:
            await part.start(ctx)
            self._started.append(part)
        if self.tick_s is not None:
            self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop(), name="tick")
        self._ready.set()

    async def tick(self) -> None:
        """Every started part's periodic work, now (the loop's, or a test's)."""
        now = self.clock()
        for part in list(self._started):
            try:
                await part.tick(now)
            except Exception:  # a part's bug must not stop serving, nor the other parts' ticks
                log.exception("%s: tick failed", part.name)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            await self.tick()

    async def shutdown(self) -> None:
        """Graceful stop: refuse new streams, let each stream finish (pending finals, ``end``,
        close 1001), stop the worker, then the parts (last first). Idempotent."""
        if self.draining:
            await self._stopped.wait()
            return
        self._stopping.set()
        log.info("draining %d stream(s)", len(self.streams))
        if self._http is not None:
            stop_listening(self._http)
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
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop, 10.0)
        for part in reversed(self._started):
            try:
                await part.stop()
            except Exception:
                log.exception("%s: stop failed", part.name)
        if self.deployment is not None:  # shared: the last evidence written, the leader's lock let go
            await asyncio.to_thread(self.deployment.close)
        log.info("stopped")
        self._stopped.set()

    # -- the server's own routes ----------------------------------------------------------------

    def _refuse_stream(self, _conn: HTTPConnection, _scope: str, _granted: bool) -> Response:
        """A stream refused for its token: counted, and denied in the handshake."""
        self._rejected("unauthorized")
        return unauthorized()

    async def stream_endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self.serve_transport(AsgiTransport(websocket), principal=websocket.user.display_name)
        finally:
            self._handlers.discard(task)

    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=NO_STORE)

    async def readyz(self, _request: Request) -> Response:
        if self.ready:
            return PlainTextResponse("ready\n", headers=NO_STORE)
        why = "draining" if self.draining else "loading model"
        return PlainTextResponse(f"{why}\n", 503, headers=NO_STORE)

    # -- per stream ---------------------------------------------------------------------------

    def _stream_observers(self, stream: StreamInfo) -> list[Observer]:
        """Every part's observers of a new stream. A part that cannot make its own is counted and
        logged as that part's observer failing (on ``StreamStarted``); the stream gets the
        others'."""
        found: list[Observer] = []
        for part in self.parts:
            try:
                found.extend(part.observers(stream))
            except Exception as exc:  # noqa: BLE001  # one part's bug costs that part, never the stream
                FAULTS.record_error(part.name, "StreamStarted", exc)
        return found

    def _review(self, stream: StreamInfo, request: ReviewRequest) -> None:
        self._review_queue.enqueue(stream, request)

    def _push(self, session: str, message: dict) -> bool:
        stream = self.streams.get(session)
        if stream is None:  # a resumed session is served by a connection of another id
            stream = next((c for c in self.streams.values() if c.core.stream_id == session), None)
        return stream is not None and stream.push(message)

    def _measure(self) -> None:
        """Admission's measure: the scheduler's calls of real-time streams only. A request fed
        faster than real time makes its ASR work per second of stream many times a live stream's,
        and taken as one it had the next live stream refused on an idle server; its calls are
        the fixed ones (an upload's windows, its only promised work). Read whenever admission
        decides or a stream opens or closes."""
        if self.scheduler is None:
            return
        for call in self.scheduler.take_calls():
            if not call.fixed:
                self.admission.record_call(call.ended, call.seconds)

    def _record_streams(self) -> None:
        self._measure()
        self.admission.record_streams(time.monotonic(), len(self.streams) - len(self._fed))

    def context(self, principal: str | None = None) -> LiveContext:
        """What each stream is given before its ``start``: the router picks its variant then."""
        return self.router.base_context(principal)

    async def serve_transport(
        self, ws: Transport, variant: str | None = None, fed: bool = False, *, principal: str | None = None
    ) -> None:
        """Serve one stream on ``ws`` (admission first), routed by the deployment or, given
        ``variant``, by that variant (an OpenAI request naming it). ``fed``: the client is code
        sending as fast as the stream reads (an upload), not in real time; it is admitted as
        one more stream, and its calls are left out of what a live stream is measured to cost."""
        stream_id = uuid.uuid4().hex[:12]
        self.owners.record(stream_id, principal)
        # Admission is decided before the first await, so concurrent connections cannot overshoot.
        s, n = self.settings, len(self.streams)
        self._measure()
        verdict = None if self.draining or n >= s.max_streams else self._verdict(n, fed)
        reason, exc = refusal(self.draining, self._ready.is_set(), n, s.max_streams, verdict, s.retry_after_s)
        if exc is not None:
            self._rejected(reason)
            retry = {} if exc.code == "shutting_down" else {"retry_after_s": self.settings.retry_after_s}
            await reject(ws, exc, retry)
            return
        context = self.router.pinned_context(variant, principal) if variant else self.context(principal)
        stream = Connection(ws, stream_id, context, self.scheduler, fed=fed)
        self.streams[stream_id] = stream
        if fed:
            self._fed.add(stream_id)
        self._record_streams()
        self.counters.accepted += 1
        log.info("stream %s: opened from %s", stream_id, ws.peer)
        try:
            await stream.run()
        finally:
            del self.streams[stream_id]
            self._fed.discard(stream_id)
            self._record_streams()
            self.counters.closed += 1
            self.counters.finals += stream.stats.finals
            log.info(
                "stream %s: closed (%.1f s of audio, %d finals)", stream_id, stream.stats.audio_s, stream.stats.finals
            )

    def _verdict(self, streams: int, fed: bool) -> Verdict | None:
        """Admission's verdict on one more live stream, or on one more upload (``fed``)."""
        now, live = time.monotonic(), streams - len(self._fed)
        if not fed:
            return self.admission.verdict(now, live)
        if self.scheduler is None:
            return None
        _windows, backlog_s = self.scheduler.fixed_backlog()
        return self.admission.upload_verdict(now, live, backlog_s, self.settings.max_upload_wait_s)

    def _rejected(self, reason: str) -> None:
        self.counters.rejected += 1
        self.observer.on_event(StreamRejected(reason))  # the fan-out counts and logs what fails
