"""The ``[telemetry]`` table of the config file (flags override it, and it overrides ``OTEL_*``).

Kept free of OpenTelemetry imports so that loading a config never pulls in the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("grpc", "http/protobuf")
TRACE_LAYOUTS = ("auto", "stream", "utterance")


def normalize_protocol(value: str) -> str:
    """``"http"`` is accepted for ``"http/protobuf"``; anything else unsupported is an error."""
    v = value.strip().lower()
    if v == "http":
        return "http/protobuf"
    if v == "http/json":
        raise ValueError("OTLP protocol http/json is not supported by the Python exporters; use grpc or http/protobuf")
    if v not in PROTOCOLS:
        raise ValueError(f"unknown OTLP protocol {value!r}; choose grpc or http (= http/protobuf)")
    return v


@dataclass(frozen=True)
class TelemetryConfig:
    """Where traces and metrics go, and what they may contain.

    An empty string or ``None`` means "not set here": the standard ``OTEL_*`` variable, if any, then
    the default applies. With nothing set anywhere, nothing is exported (no collector is contacted)
    and metrics are still gathered for ``summary.json``.

    Attributes:
        service_name: ``service.name`` of every span and metric (else ``OTEL_SERVICE_NAME``, else
            ``"speechpipe"``).
        otlp_endpoint: OTLP collector base URL, e.g. ``http://localhost:4318`` (HTTP) or
            ``http://localhost:4317`` (gRPC); setting it turns OTLP export on for traces and metrics
            (else ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the per-signal variants).
        otlp_protocol: ``grpc`` or ``http`` / ``http/protobuf`` (else ``OTEL_EXPORTER_OTLP_PROTOCOL``;
            else gRPC when the endpoint's port is 4317, HTTP otherwise).
        traces / metrics: export that signal at all (both on by default once an exporter is set).
        trace_file: write spans as OTLP JSON lines to this file (opens in Jaeger UI's "JSON File" tab).
        console: print spans and metrics to stderr.
        trace_text: put transcript text on spans (``asr.text``). Off by default: it is personal data.
        prometheus_port: serve ``/metrics`` for Prometheus on this port (0 picks a free one).
        prometheus_host: address the ``/metrics`` server binds to.
        metrics_interval_s: how often metrics are pushed over OTLP (else ``OTEL_METRIC_EXPORT_INTERVAL``,
            else 10 s); every exporter also gets the final figures at shutdown.
        trace_layout: ``stream`` (one trace per stream), ``utterance`` (one trace per utterance, linked
            to a short ``stream`` trace) or ``auto`` (stream offline, utterance live).
    """

    service_name: str = ""
    otlp_endpoint: str = ""
    otlp_protocol: str = ""
    traces: bool = True
    metrics: bool = True
    trace_file: str = ""
    console: bool = False
    trace_text: bool = False
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"
    metrics_interval_s: float | None = None
    trace_layout: str = "auto"

    def __post_init__(self) -> None:
        if self.otlp_protocol:
            object.__setattr__(self, "otlp_protocol", normalize_protocol(self.otlp_protocol))
        if self.trace_layout not in TRACE_LAYOUTS:
            raise ValueError(
                f"telemetry.trace_layout must be one of {', '.join(TRACE_LAYOUTS)}, not {self.trace_layout!r}"
            )
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            raise ValueError(f"telemetry.prometheus_port must be 0-65535, not {self.prometheus_port}")
        if self.metrics_interval_s is not None and self.metrics_interval_s <= 0:
            raise ValueError("telemetry.metrics_interval_s must be positive")
