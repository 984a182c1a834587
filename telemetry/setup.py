"""OpenTelemetry providers and exporters, from the ``[telemetry]`` config, flags and ``OTEL_*`` variables.

:func:`resolve_plan` decides what to export where (pure: config + environment in, plan out);
:class:`Telemetry` builds the providers for a plan, owns them, and hands out session hooks.

Precedence: flags > config file > standard environment variables > defaults. The variables read:
``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME`` (and ``OTEL_RESOURCE_ATTRIBUTES``),
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``, and
``prometheus`` for metrics), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and its ``_TRACES_`` / ``_METRICS_``
forms, ``OTEL_EXPORTER_OTLP_PROTOCOL`` and its per-signal forms, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_EXPORTER_PROMETHEUS_HOST`` / ``_PORT``; the OTLP exporters themselves read headers, TLS,
timeout and compression variables.

With nothing set anywhere nothing is exported and no connection is attempted; metrics are still
gathered in memory for ``summary.json``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlparse

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from speechpipe.telemetry.exporters import (
    METRICS,
    SPANS,
    ExportHealth,
    ExportLogRouter,
    GuardedMetricExporter,
    GuardedSpanExporter,
    OtlpJsonFileSpanExporter,
)
from speechpipe.telemetry.instrument import OFFLINE, Instrumentation, StreamTelemetry, _version
from speechpipe.telemetry.settings import TelemetryConfig, normalize_protocol
from speechpipe.telemetry.snapshot import metrics_to_dict

if TYPE_CHECKING:
    from speechpipe.pipeline.config import Config

DEFAULT_SERVICE_NAME = "speechpipe"
DEFAULT_METRICS_INTERVAL_S = 10.0
GRPC_PORT = 4317
HTTP_PORT = 4318


def _bounded(fn, timeout_s: float) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s``: exporters stuck on a dead
    network never hold up the end of a run. True when ``fn`` finished."""
    t = threading.Thread(target=fn, name="speechpipe-telemetry-shutdown", daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


class TelemetryError(ValueError):
    """Telemetry settings that cannot be used; the message names the setting."""


@dataclass
class ExportPlan:
    """What a run exports where, once config, flags and environment are resolved."""

    service_name: str = DEFAULT_SERVICE_NAME
    protocol: str = "http/protobuf"
    otlp_traces: str | None = None  # full endpoint (HTTP: with /v1/traces)
    otlp_metrics: str | None = None
    console_traces: bool = False
    console_metrics: bool = False
    trace_file: str | None = None
    prometheus: tuple[str, int] | None = None
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    notes: list[str] = field(default_factory=list)

    @property
    def exports_traces(self) -> bool:
        return bool(self.otlp_traces or self.console_traces or self.trace_file)

    def describe(self) -> list[str]:
        """Human-readable lines: where traces and metrics go."""
        lines = []
        if self.otlp_traces:
            lines.append(f"traces -> OTLP {self.protocol} {self.otlp_traces}")
        if self.otlp_metrics:
            lines.append(f"metrics -> OTLP {self.protocol} {self.otlp_metrics} every {self.metrics_interval_s:g} s")
        if self.trace_file:
            lines.append(f"traces -> {self.trace_file} (OTLP JSON lines)")
        if self.console_traces or self.console_metrics:
            lines.append("console telemetry -> stderr")
        if self.prometheus:
            lines.append(f"metrics -> Prometheus on http://{self.prometheus[0]}:{self.prometheus[1]}/metrics")
        return lines


def _env_list(environ: Mapping[str, str], key: str) -> set[str] | None:
    raw = environ.get(key, "").strip()
    if not raw:
        return None
    return {v.strip().lower() for v in raw.split(",") if v.strip()}


def _port_of(endpoint: str) -> int | None:
    try:
        return urlparse(endpoint if "://" in endpoint else f"http://{endpoint}").port
    except ValueError:
        return None


def _base(endpoint: str) -> str:
    """A base URL: scheme added when missing, trailing slash and signal path removed."""
    e = endpoint.strip()
    if "://" not in e:
        e = "http://" + e
    e = e.rstrip("/")
    for suffix in ("/v1/traces", "/v1/metrics"):
        e = e.removesuffix(suffix)
    url = urlparse(e)
    if not url.hostname:
        raise TelemetryError(f"telemetry.otlp_endpoint: not a URL: {endpoint!r}")
    try:
        url.port  # noqa: B018  # raises on a malformed port
    except ValueError:
        raise TelemetryError(f"telemetry.otlp_endpoint: bad port in {endpoint!r}") from None
    return e


def resolve_plan(cfg: TelemetryConfig, environ: Mapping[str, str] | None = None) -> ExportPlan:
    """Decide what to export where from ``cfg`` and the standard ``OTEL_*`` variables."""
    env = os.environ if environ is None else environ
    plan = ExportPlan()
    plan.service_name = cfg.service_name or env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        plan.notes.append("OTEL_SDK_DISABLED=true: nothing is exported")
        return plan

    env_traces = _env_list(env, "OTEL_TRACES_EXPORTER")
    env_metrics = _env_list(env, "OTEL_METRICS_EXPORTER")

    def signal_endpoint(signal: str) -> tuple[str | None, bool]:
        """(endpoint, is_full_url) for ``signal``: config, then the per-signal variable, then the shared one."""
        if cfg.otlp_endpoint:
            return _base(cfg.otlp_endpoint), False
        specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
        if specific:
            return specific, True
        shared = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        return (_base(shared), False) if shared else (None, False)

    def wanted(signal: str, enabled: bool, env_choice: set[str] | None) -> bool:
        if not enabled:
            return False
        if cfg.otlp_endpoint:
            return True
        if env_choice is not None:
            return "otlp" in env_choice
        return signal_endpoint(signal)[0] is not None

    for signal, enabled, env_choice in (
        ("traces", cfg.traces, env_traces),
        ("metrics", cfg.metrics, env_metrics),
    ):
        if not wanted(signal, enabled, env_choice):
            continue
        endpoint, full = signal_endpoint(signal)
        raw_protocol = (
            cfg.otlp_protocol
            or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "").strip()
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        )
        try:
            protocol = normalize_protocol(raw_protocol) if raw_protocol else ""
        except ValueError as exc:
            raise TelemetryError(f"telemetry.otlp_protocol: {exc}") from None
        if not protocol:
            # The spec's default is http/protobuf; an endpoint on gRPC's well-known port means gRPC.
            protocol = "grpc" if endpoint and _port_of(endpoint) == GRPC_PORT else "http/protobuf"
        if endpoint is None:
            endpoint = f"http://localhost:{GRPC_PORT if protocol == 'grpc' else HTTP_PORT}"
        if protocol == "http/protobuf" and not full:
            endpoint = f"{endpoint}/v1/{signal}"
        plan.protocol = protocol
        setattr(plan, f"otlp_{signal}", endpoint)

    plan.console_traces = cfg.traces and (cfg.console or "console" in (env_traces or ()))
    plan.console_metrics = cfg.metrics and (cfg.console or "console" in (env_metrics or ()))
    plan.trace_file = cfg.trace_file or None
    if cfg.prometheus_port is not None:
        plan.prometheus = (cfg.prometheus_host, cfg.prometheus_port)
    elif "prometheus" in (env_metrics or ()):
        host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or cfg.prometheus_host
        try:
            port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
        except ValueError:
            raise TelemetryError("OTEL_EXPORTER_PROMETHEUS_PORT must be a port number") from None
        plan.prometheus = (host, port)
    if cfg.metrics_interval_s is not None:
        plan.metrics_interval_s = cfg.metrics_interval_s
    elif env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip():
        try:
            plan.metrics_interval_s = float(env["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000.0
        except ValueError:
            raise TelemetryError("OTEL_METRIC_EXPORT_INTERVAL must be milliseconds") from None
    return plan


def _otlp_exporters(plan: ExportPlan):
    """The OTLP span and metric exporters for ``plan`` (imported only when used)."""
    spans = metrics = None
    if plan.protocol == "grpc":
        if plan.otlp_traces:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            spans = OTLPSpanExporter(endpoint=plan.otlp_traces)
        if plan.otlp_metrics:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            metrics = OTLPMetricExporter(endpoint=plan.otlp_metrics)
    else:
        if plan.otlp_traces:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            spans = OTLPSpanExporter(endpoint=plan.otlp_traces)
        if plan.otlp_metrics:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            metrics = OTLPMetricExporter(endpoint=plan.otlp_metrics)
    return spans, metrics


class Telemetry:
    """Providers, exporters and instrumentation of one process run.

    Build with :meth:`start`; hand :meth:`stream_hooks` to each session; call :meth:`shutdown` at
    the end (or use it as a context manager), which flushes every exporter within a bounded time.

    Attributes:
        plan: what is exported where.
        tracer_provider / meter_provider: the providers (a no-op tracer provider when no trace
            exporter is configured: spans then cost next to nothing).
        instrumentation: the :class:`Instrumentation` the hooks come from; the server also calls its
            ``stream_rejected()``; the offline runner its ``input_error()``.
    """

    def __init__(
        self,
        config: Config,
        *,
        mode: str = OFFLINE,
        environ: Mapping[str, str] | None = None,
        span_processors: tuple[SpanProcessor, ...] = (),
        metric_readers: tuple[MetricReader, ...] = (),
    ) -> None:
        self.config = config
        self.plan = resolve_plan(config.telemetry, environ)
        plan = self.plan
        attrs: dict[str, Any] = {"service.name": plan.service_name, "service.version": _version()}
        self.resource = Resource.create(attrs)
        self.health: dict[str, ExportHealth] = {}
        self._log_router: ExportLogRouter | None = None
        self._processors: list[SpanProcessor] = list(span_processors)
        self._closed = False
        self._notes: list[str] = []
        self._prometheus_server = None
        self.prometheus_registry = None
        self.prometheus_url: str | None = None
        otlp_spans, otlp_metrics = _otlp_exporters(plan)
        for signal, exporter, target in (
            (SPANS, otlp_spans, plan.otlp_traces),
            (METRICS, otlp_metrics, plan.otlp_metrics),
        ):
            if exporter is not None and target:
                where = target.removesuffix("/v1/traces").removesuffix("/v1/metrics")
                self.health[signal] = ExportHealth(signal, f"the OTLP collector at {where}", target)
        if self.health:
            self._log_router = ExportLogRouter(self.health)
            self._log_router.attach()

        # -- traces
        if otlp_spans is not None:
            self._processors.append(BatchSpanProcessor(GuardedSpanExporter(otlp_spans, self.health[SPANS])))
        if plan.trace_file:
            self._processors.append(BatchSpanProcessor(OtlpJsonFileSpanExporter(plan.trace_file)))
        if plan.console_traces:
            self._processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        if self._processors:
            self.tracer_provider: trace.TracerProvider = TracerProvider(resource=self.resource)
            for p in self._processors:
                self.tracer_provider.add_span_processor(p)
        else:
            self.tracer_provider = trace.NoOpTracerProvider()

        # -- metrics: always gathered in memory for the run summary
        self._summary_reader = InMemoryMetricReader()
        readers: list[MetricReader] = [self._summary_reader, *metric_readers]
        interval_ms = plan.metrics_interval_s * 1000.0
        if otlp_metrics is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    GuardedMetricExporter(otlp_metrics, self.health[METRICS]), export_interval_millis=interval_ms
                )
            )
        if plan.console_metrics:
            readers.append(
                PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr), export_interval_millis=interval_ms)
            )
        if plan.prometheus:
            readers.append(self._start_prometheus(*plan.prometheus))
        self.meter_provider = MeterProvider(metric_readers=readers, resource=self.resource)
        self.instrumentation = Instrumentation.from_config(config, self.tracer_provider, self.meter_provider, mode=mode)

    @classmethod
    def start(cls, config: Config, **kwargs) -> Telemetry:
        """Build telemetry for ``config`` (see :class:`Telemetry`); raises :class:`TelemetryError`."""
        return cls(config, **kwargs)

    def _start_prometheus(self, host: str, port: int) -> MetricReader:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        # A registry of our own: several Telemetry objects in one process never collide.
        self.prometheus_registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=self.prometheus_registry)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.prometheus_registry)
        except OSError as exc:
            raise TelemetryError(
                f"telemetry.prometheus_port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._prometheus_server = server
        bound = server.server_address[1]
        self.prometheus_url = f"http://{host}:{bound}/metrics"
        self.plan.prometheus = (host, bound)
        return reader

    def prometheus_text(self) -> bytes:
        """The ``/metrics`` page (Prometheus text format), for a server that serves it itself."""
        if self.prometheus_registry is None:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(self.prometheus_registry)

    # -- use ------------------------------------------------------------------------------------

    def stream_hooks(
        self, *, mode: str | None = None, file: str | None = None, attributes=None, parent: Context | None = None
    ) -> StreamTelemetry:
        """Session hooks for one stream (see :meth:`Instrumentation.stream_hooks`)."""
        return self.instrumentation.stream_hooks(mode=mode, file=file, attributes=attributes, parent=parent)

    def metrics_snapshot(self) -> dict:
        """Current figures of every metric, as JSON-ready dicts (what ``summary.json`` gets)."""
        return metrics_to_dict(self._summary_reader.get_metrics_data())

    def problems(self) -> list[str]:
        """Lines describing telemetry that could not be delivered (empty when all went through)."""
        lines = list(self._notes)
        for health in self.health.values():
            if line := health.report():
                lines.append(line)
        return lines

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and stop every exporter, waiting at most about ``timeout_s`` per signal; idempotent."""
        if self._closed:
            return
        self._closed = True
        for health in self.health.values():
            health.closing = True
        ms = int(timeout_s * 1000)
        if isinstance(self.tracer_provider, TracerProvider) and not _bounded(self.tracer_provider.shutdown, timeout_s):
            self._notes.append(f"telemetry: flushing spans took over {timeout_s:g} s; the rest was abandoned")
        if not _bounded(lambda: self.meter_provider.shutdown(timeout_millis=ms), timeout_s):
            self._notes.append(f"telemetry: flushing metrics took over {timeout_s:g} s; the rest was abandoned")
        if self._prometheus_server is not None:
            self._prometheus_server.shutdown()
            self._prometheus_server.server_close()
            self._prometheus_server = None
        if self._log_router is not None:
            self._log_router.detach()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
