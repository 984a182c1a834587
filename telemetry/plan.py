"""OpenTelemetry providers and exporters, from the ``[telemetry]`` config, flags and ``OTEL_*`` variables.

:func:`resolve_plan` decides what to export where (pure: config + environment in, plan out);
:class:`~speechpipe.telemetry.setup.Telemetry` builds the providers for a plan.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from speechpipe.telemetry.settings import TelemetryConfig, normalize_protocol

DEFAULT_SERVICE_NAME = "speechpipe"
DEFAULT_METRICS_INTERVAL_S = 10.0
GRPC_PORT = 4317
HTTP_PORT = 4318
SIGNALS = ("traces", "metrics")


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
    choices = {signal: _env_list(env, f"OTEL_{signal.upper()}_EXPORTER") for signal in SIGNALS}
    for signal in SIGNALS:
        if _otlp_wanted(cfg, env, signal, choices[signal]):
            endpoint, protocol = _otlp_endpoint(cfg, env, signal)
            plan.protocol = protocol
            setattr(plan, f"otlp_{signal}", endpoint)
    plan.console_traces = cfg.traces and (cfg.console or "console" in (choices["traces"] or ()))
    plan.console_metrics = cfg.metrics and (cfg.console or "console" in (choices["metrics"] or ()))
    plan.trace_file = cfg.trace_file or None
    plan.prometheus = _prometheus(cfg, env, choices["metrics"])
    plan.metrics_interval_s = _metrics_interval(cfg, env)
    return plan


def _signal_endpoint(cfg: TelemetryConfig, env: Mapping[str, str], signal: str) -> tuple[str | None, bool]:
    """(endpoint, is_full_url) for ``signal``: config, then the per-signal variable, then the shared one."""
    if cfg.otlp_endpoint:
        return _base(cfg.otlp_endpoint), False
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific, True
    shared = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return (_base(shared), False) if shared else (None, False)


def _otlp_wanted(cfg: TelemetryConfig, env: Mapping[str, str], signal: str, env_choice: set[str] | None) -> bool:
    if not getattr(cfg, signal):
        return False
    if cfg.otlp_endpoint:
        return True
    if env_choice is not None:
        return "otlp" in env_choice
    return _signal_endpoint(cfg, env, signal)[0] is not None


def _otlp_endpoint(cfg: TelemetryConfig, env: Mapping[str, str], signal: str) -> tuple[str, str]:
    """The full endpoint URL of ``signal`` and the protocol that reaches it."""
    endpoint, full = _signal_endpoint(cfg, env, signal)
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
    return endpoint, protocol


def _prometheus(cfg: TelemetryConfig, env: Mapping[str, str], env_choice: set[str] | None) -> tuple[str, int] | None:
    if cfg.prometheus_port is not None:
        return (cfg.prometheus_host, cfg.prometheus_port)
    if "prometheus" not in (env_choice or ()):
        return None
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or cfg.prometheus_host
    try:
        port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    except ValueError:
        raise TelemetryError("OTEL_EXPORTER_PROMETHEUS_PORT must be a port number") from None
    return (host, port)


def _metrics_interval(cfg: TelemetryConfig, env: Mapping[str, str]) -> float:
    if cfg.metrics_interval_s is not None:
        return cfg.metrics_interval_s
    if env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip():
        try:
            return float(env["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000.0
        except ValueError:
            raise TelemetryError("OTEL_METRIC_EXPORT_INTERVAL must be milliseconds") from None
    return DEFAULT_METRICS_INTERVAL_S


def otlp_exporters(plan: ExportPlan):
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
