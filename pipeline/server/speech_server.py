"""The live server: ``ws://HOST:PORT/stream`` and the HTTP routes on one port.

An ASGI app (:mod:`speechpipe.pipeline.server.app`, Starlette) runs under uvicorn with the
``websockets`` library's Sans-I/O protocol: routes that take a body need that HTTP layer.

Every configured pipeline variant is loaded (:mod:`speechpipe.pipeline.deploy.variants`; variants of one
model share it) and one :class:`~speechpipe.pipeline.scheduling.scheduler.AsrScheduler` runs all of their
jobs on the same worker threads. The :class:`~speechpipe.pipeline.deploy.deployment.Deployment` decides
which variant serves each new stream (``[deploy]``: single, shadow, canary, blue/green) and is
driven by the admin API (:mod:`speechpipe.pipeline.deploy.routes`). Each connection gets its own
:class:`~speechpipe.pipeline.live.connection.Connection` around a Sans-I/O
:class:`~speechpipe.pipeline.live.core.LiveCore`, which is given a
:class:`~speechpipe.pipeline.live.actions.LiveContext` (by the
:class:`~speechpipe.pipeline.deploy.router.StreamRouter`), not the server.

Telemetry plugs in from outside (see :mod:`speechpipe.pipeline.observability`):
``stream_observers`` builds the observers of each stream's session (spans, per-stream metrics)
for the variant and role that serve it, ``labelled`` gives the instrumentation of a variant and
role (deployment metrics), ``observer`` is told about server-level events (streams turned away),
and ``metrics`` renders ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.deploy.deployment import Deployment
from speechpipe.pipeline.deploy.router import StreamObservers, StreamRouter
from speechpipe.pipeline.deploy.routes import admin_routes
from speechpipe.pipeline.deploy.variants import Variant, load_variants
from speechpipe.pipeline.hooks import Observer, Observers, StreamRejected
from speechpipe.pipeline.live.actions import LiveContext
from speechpipe.pipeline.live.connection import Connection
from speechpipe.pipeline.live.transport import Transport
from speechpipe.pipeline.monitoring.service import DriftService
from speechpipe.pipeline.openai_api.routes import openai_routes
from speechpipe.pipeline.review.routes import review_routes
from speechpipe.pipeline.review.service import ReviewService, open_review
from speechpipe.pipeline.scheduling.admission import Admission, refusal
from speechpipe.pipeline.scheduling.scheduler import AsrScheduler
from speechpipe.pipeline.server.app import build_app
from speechpipe.pipeline.server.runner import HttpServer, reject, start_http, stop_listening
from speechpipe.pipeline.server.tokens import admin_token_from_env, token_from_env
from speechpipe.pipeline.server.transport import AsgiTransport
from speechpipe.stages.asr import AsrEngine

log = logging.getLogger("speechpipe.server")

#: how often the canary's gates are evaluated.
DEPLOY_TICK_S = 1.0

__all__ = ["SpeechServer", "admin_token_from_env", "token_from_env"]  # the tokens' helpers, from here too

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
        engine: a loaded engine to share (tests pass theirs) with every variant of the same ASR
            settings; the variants' models are loaded otherwise, in a thread, after the socket is
            listening (``/readyz`` says when).
        token: required bearer token of streams (and feedback); None allows everyone.
        admin_token: bearer token of the admin API; None: the admin routes answer 403.
        reviewer_token: bearer token of the review API and page; None: they answer 403.
        stream_observers: builds the observers of each stream's session from its id, its audio
            format's attributes, the effective config of the variant serving it and its role.
        labelled: the instrumentation of a variant (its effective config) and role, for the
            deployment's metrics and spans.
        drift_telemetry: given the drift figures' source, registers their gauges and returns the
            reporter of drift alerts (span, log); without it alerts are logged.
        review_telemetry: the same for the review queue's figures; returns the reporter of reviews.
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
        admin_token: str | None = None,
        reviewer_token: str | None = None,
        stream_observers: StreamObservers | None = None,
        labelled: Callable[[Config, str], object] | None = None,
        drift_telemetry: Callable[[Callable], Callable] | None = None,
        review_telemetry: Callable[[Callable], Callable] | None = None,
        observer: Observer | None = None,
        metrics: MetricsRenderer | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or Config()
        self.settings = self.config.server
        self.engine = engine
        self.token = token or None
        self.admin_token = admin_token or None
        self.reviewer_token = reviewer_token or None
        tokens = [t for t in (self.token, self.admin_token, self.reviewer_token) if t]
        if len(set(tokens)) < len(tokens):
            raise ConfigError("the admin and reviewer tokens must differ from each other and from the stream token")
        self.stream_observers = stream_observers
        self.labelled = labelled
        self.drift_telemetry = drift_telemetry
        self.review_telemetry = review_telemetry
        self.variants: dict[str, Variant] = {}
        self.deployment: Deployment | None = None
        self.router: StreamRouter | None = None
        self.drift: DriftService | None = None
        self.review: ReviewService | None = None
        self._tick_task: asyncio.Task | None = None
        self.observer = Observers([observer])
        self.metrics = metrics or _no_metrics
        self.on_shutdown = on_shutdown
        self.scheduler: AsrScheduler | None = None
        self.streams: dict[str, Connection] = {}
        self._fed: set[str] = set()  # streams of uploads, fed as fast as they are read
        self.counters = ServerCounters()
        self._http: HttpServer | None = None
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
    def loading(self) -> asyncio.Task | None:
        """The task loading the variants (None where they were given loaded)."""
        return self._load_task

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._draining

    async def start(self) -> None:
        """Listen, then load the model (unless one was given) in a thread."""
        s = self.settings
        # The review store first: a database that cannot be opened stops the server before it listens.
        self.review = await asyncio.to_thread(open_review, self.config, self._push, self._feedback)
        if self.review is not None and self.review_telemetry is not None:
            self.review.on_reviewed = self.review_telemetry(lambda: self.review.figures)
        # The socket is bound here, so a port in use is an OSError to the caller, not uvicorn's exit.
        self._socket = socket.create_server((s.host, s.port), reuse_port=False)
        self._socket.setblocking(False)
        app = build_app(
            stream=self._handle,
            token=self.token,
            is_ready=lambda: (self.ready, "draining" if self._draining else "loading model"),
            metrics=self.metrics,
            on_unauthorized=lambda: self._rejected("unauthorized"),
            extra_routes=admin_routes(
                admin_token=self.admin_token,
                stream_token=self.token,
                deployment=lambda: self.deployment,
                drift=lambda: self.drift,
                metrics=lambda: self.metrics(),
                closing=lambda: self._draining,
                review=lambda: self.review,
            )
            + openai_routes(self)
            + review_routes(reviewer_token=self.reviewer_token, stream_token=self.token, service=lambda: self.review),
        )
        # Our own check answers up to 4x the limit with a clear error; beyond that the protocol
        # closes with 1009 before buffering it all.
        self._http, self._http_task = await start_http(app, self._socket, 4 * s.max_frame_bytes)
        log.info("listening on ws://%s:%d/stream", s.host, self.port)
        if self.engine is not None and not self.config.variants:
            self._on_variants(load_variants(self.config, list(self.config.variant_names()), self.engine))
        else:
            self._load_task = asyncio.create_task(self._load(), name="load-variants")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def _load(self) -> None:
        t0 = time.perf_counter()
        names = list(self.config.variant_names())
        try:
            variants = await asyncio.to_thread(load_variants, self.config, names, self.engine)
            self._on_variants(variants)
        except Exception:
            log.exception("could not load the pipeline variants")
            raise
        models = ", ".join(f"{v.name}: {v.config.asr.model}" for v in variants.values())
        log.info("variants loaded in %.1f s (%s)", time.perf_counter() - t0, models)

    def _on_variants(self, variants: dict[str, Variant]) -> None:
        """Everything loaded: the deployment, the scheduler, then ready."""
        s = self.settings
        deploy = self.config.deploy.resolved(self.config.pipeline.variant)
        try:
            deploy.check(set(variants))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        config_of = {name: v.config for name, v in variants.items()}
        labelled = self.labelled
        self.deployment = Deployment(
            deploy,
            {name: v.variant_id for name, v in variants.items()},
            labelled=(lambda name, role: labelled(config_of[name], role)) if labelled else None,
        )
        if self.config.monitoring.baseline:
            self.drift = DriftService(self.config.monitoring)
            if self.drift_telemetry is not None:
                self.drift.on_alert = self.drift_telemetry(self.drift.rows)
            self.deployment.on_score = self.drift.feedback
        self.variants = variants
        primary = variants[self.deployment.controller.primary]
        self.engine = primary.engine
        # Read at each stream, so observers can be set after start (tests do).
        self.router = StreamRouter(
            self.config,
            variants,
            self.deployment,
            lambda *args: self.stream_observers(*args) if self.stream_observers else [],
            self.drift,
            self.review,
        )
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
            on_call=self._measured_call,
        )
        self.scheduler.start()
        self._tick_task = asyncio.get_running_loop().create_task(self._tick(), name="deploy-tick")
        if self.review is not None:
            self.review.start()
        self._ready.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(DEPLOY_TICK_S)
            try:
                self.deployment.tick()
                if self.drift is not None:
                    self.drift.evaluate()
            except Exception:  # the deployment's bug must not stop serving
                log.exception("deploy tick failed")

    async def shutdown(self) -> None:
        """Graceful stop: refuse new streams, let each stream finish (pending finals, ``end``,
        close 1001), stop the worker, then call ``on_shutdown``. Idempotent."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
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
        if self.review is not None:
            await self.review.stop()
        if self.on_shutdown is not None:
            try:
                self.on_shutdown()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("stopped")
        self._stopped.set()

    # -- per stream ---------------------------------------------------------------------------

    def context(self) -> LiveContext:
        """What each stream is given before its ``start``: the router picks its variant then."""
        return self.router.base_context()

    async def _handle(self, websocket: WebSocket) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self.serve_transport(AsgiTransport(websocket))
        finally:
            self._handlers.discard(task)

    def _push(self, session: str, message: dict) -> bool:
        stream = self.streams.get(session)
        return stream is not None and stream.push(message)

    def _feedback(self, session: str, segment: int, text: str) -> None:
        if self.deployment is not None:
            self.deployment.feedback(session, segment, text)

    def _measured_call(self, now: float, seconds: float, streams: frozenset[str]) -> None:
        """Admission's measure: calls of real-time streams only. A request fed faster than real
        time makes its ASR work per second of stream many times a live stream's, and taken as
        one it had the next live stream refused on an idle server."""
        if not any(s in self._fed for s in streams):
            self.admission.record_call(now, seconds)

    def _record_streams(self) -> None:
        self.admission.record_streams(time.monotonic(), len(self.streams) - len(self._fed))

    async def serve_transport(self, ws: Transport, variant: str | None = None, fed: bool = False) -> None:
        """Serve one stream on ``ws`` (admission first), routed by the deployment or, given
        ``variant``, by that variant (an OpenAI request naming it). ``fed``: the client is code
        sending as fast as the stream reads (an upload), not in real time; it is admitted as
        one more stream, and its calls are left out of what a live stream is measured to cost."""
        stream_id = uuid.uuid4().hex[:12]
        # Admission is decided before the first await, so concurrent connections cannot overshoot.
        s, n = self.settings, len(self.streams)
        verdict = None if self._draining or n >= s.max_streams else self.admission.verdict(time.monotonic(), n)
        reason, exc = refusal(self._draining, self._ready.is_set(), n, s.max_streams, verdict, s.retry_after_s)
        if exc is not None:
            self._rejected(reason)
            retry = {} if exc.code == "shutting_down" else {"retry_after_s": self.settings.retry_after_s}
            await reject(ws, exc, retry)
            return
        context = self.router.pinned_context(variant) if variant else self.context()
        stream = Connection(ws, stream_id, context, self.scheduler)
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

    def _rejected(self, reason: str) -> None:
        self.counters.rejected += 1
        try:
            self.observer.on_event(StreamRejected(reason))
        except Exception:  # telemetry must never break serving
            log.exception("observer failed")


def _no_metrics() -> tuple[bytes, str]:
    return b"", "text/plain; version=0.0.4; charset=utf-8"
