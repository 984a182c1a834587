"""OpenTelemetry providers and exporters for one process run, built from an export plan.

:func:`~speechpipe.telemetry.plan.resolve_plan` decides what goes where (``[telemetry]`` table,
flags, ``OTEL_*`` variables); :class:`Telemetry` builds the providers for that plan, owns them, and
holds the :class:`~speechpipe.telemetry.instruments.Instrumentation` that observes the pipeline.
With nothing set anywhere nothing is exported and no connection is attempted; metrics are still
gathered in memory for ``summary.json``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Self

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

from speechpipe.telemetry import names as n
from speechpipe.telemetry.exporters import (
    METRICS,
    SPANS,
    ExportHealth,
    ExportLogRouter,
    GuardedMetricExporter,
    GuardedSpanExporter,
    OtlpJsonFileSpanExporter,
)
from speechpipe.telemetry.instruments import Instrumentation, Labels, version
from speechpipe.telemetry.plan import ExportPlan, TelemetryError, otlp_exporters, resolve_plan
from speechpipe.telemetry.settings import TelemetryConfig
from speechpipe.telemetry.snapshot import metrics_to_dict
from speechpipe.telemetry.stream_telemetry import StreamTelemetry

__all__ = ["Telemetry", "TelemetryError"]


def _bounded(fn, timeout_s: float) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s``: exporters stuck on a dead
    network never hold up the end of a run. True when ``fn`` finished."""
    t = threading.Thread(target=fn, name="speechpipe-telemetry-shutdown", daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


class Telemetry:
    """Providers, exporters and instrumentation of one process run.

    Hand :meth:`stream_observer` to each session; call :meth:`shutdown` at the end (or use it as a
    context manager), which flushes every exporter within a bounded time.

    Args:
        settings: the ``[telemetry]`` table.
        labels: what every span and metric point is labelled with (variant, VAD config id, model).
        mode: ``"offline"`` or ``"live"``.
        environ: the environment to read ``OTEL_*`` variables from (default: ``os.environ``).
        span_processors / metric_readers: extra ones (tests).
        metrics_page: keep a Prometheus registry for a server that renders ``/metrics`` itself
            (:meth:`prometheus_text`), whether or not a Prometheus port is configured.

    Attributes:
        plan: what is exported where.
        tracer_provider / meter_provider: the providers (a no-op tracer provider when no trace
            exporter is configured: spans then cost next to nothing).
        instrumentation: the observer of process-level events, and the factory of stream observers.
    """

    def __init__(
        self,
        settings: TelemetryConfig,
        labels: Labels,
        *,
        mode: str = n.OFFLINE,
        environ: Mapping[str, str] | None = None,
        span_processors: tuple[SpanProcessor, ...] = (),
        metric_readers: tuple[MetricReader, ...] = (),
        metrics_page: bool = False,
    ) -> None:
        self.settings = settings
        self.plan = resolve_plan(settings, environ)
        plan = self.plan
        self.resource = Resource.create({"service.name": plan.service_name, "service.version": version()})
        self.health: dict[str, ExportHealth] = {}
        self._log_router: ExportLogRouter | None = None
        self._closed = False
        self._notes: list[str] = []
        self._prometheus_server = None
        self.prometheus_registry = None
        self.prometheus_url: str | None = None
        otlp_spans, otlp_metrics = otlp_exporters(plan)
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
        self.tracer_provider = self._tracer_provider(plan, otlp_spans, list(span_processors))
        # Metrics are always gathered in memory, for the run summary.
        self._summary_reader = InMemoryMetricReader()
        readers = [self._summary_reader, *metric_readers, *self._metric_readers(plan, otlp_metrics)]
        if plan.prometheus or metrics_page:
            readers.append(self._prometheus_reader())
        if plan.prometheus:
            self._serve_prometheus(*plan.prometheus)
        self.meter_provider = MeterProvider(metric_readers=readers, resource=self.resource)
        self.instrumentation = Instrumentation(
            self.tracer_provider,
            self.meter_provider,
            labels=labels,
            mode=mode,
            trace_text=settings.trace_text,
            trace_layout=settings.trace_layout,
        )

    def _tracer_provider(self, plan: ExportPlan, otlp_spans, processors: list[SpanProcessor]) -> trace.TracerProvider:
        if otlp_spans is not None:
            processors.append(BatchSpanProcessor(GuardedSpanExporter(otlp_spans, self.health[SPANS])))
        if plan.trace_file:
            processors.append(BatchSpanProcessor(OtlpJsonFileSpanExporter(plan.trace_file)))
        if plan.console_traces:
            processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        if not processors:
            return trace.NoOpTracerProvider()
        provider = TracerProvider(resource=self.resource)
        for p in processors:
            provider.add_span_processor(p)
        return provider

    def _metric_readers(self, plan: ExportPlan, otlp_metrics) -> list[MetricReader]:
        readers: list[MetricReader] = []
        interval_ms = plan.metrics_interval_s * 1000.0
        if otlp_metrics is not None:
            exporter = GuardedMetricExporter(otlp_metrics, self.health[METRICS])
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms))
        if plan.console_metrics:
            readers.append(
                PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr), export_interval_millis=interval_ms)
            )
        return readers

    def _prometheus_reader(self) -> MetricReader:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        # A registry of our own: several Telemetry objects in one process never collide.
        self.prometheus_registry = CollectorRegistry(auto_describe=True)
        return PrometheusMetricReader(registry=self.prometheus_registry)

    def _serve_prometheus(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

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

    def prometheus_text(self) -> bytes:
        """The ``/metrics`` page (Prometheus text format), for a server that serves it itself."""
        if self.prometheus_registry is None:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(self.prometheus_registry)

    # -- use ------------------------------------------------------------------------------------

    def stream_observer(
        self, *, mode: str | None = None, file: str | None = None, attributes=None, parent: Context | None = None
    ) -> StreamTelemetry:
        """The observer of one stream (see :meth:`Instrumentation.stream_observer`)."""
        return self.instrumentation.stream_observer(mode=mode, file=file, attributes=attributes, parent=parent)

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
