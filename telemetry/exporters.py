"""Exporters speechpipe adds around the OpenTelemetry SDK's.

* :class:`OtlpJsonFileSpanExporter` writes spans as OTLP/JSON lines (the OpenTelemetry file
  exporter format: one ``{"resourceSpans": [...]}`` object per line, ids in hex), which Jaeger UI's
  "JSON File" upload opens directly.
* :class:`GuardedSpanExporter` / :class:`GuardedMetricExporter` wrap an OTLP exporter so that a
  missing or failing collector costs one warning, not a stream of retries and log lines: after a
  failure, batches are dropped (and counted) for ``retry_after_s`` before the next try, and at
  shutdown a collector that does not accept a TCP connection is not waited for.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("speechpipe.telemetry")

#: loggers of the OTLP exporters whose per-attempt warnings :class:`ExportLogRouter` sums up.
OTLP_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
)


# -- OTLP/JSON lines file ---------------------------------------------------------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(obj) -> None:
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants trace and span ids in hex."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in _ID_FIELDS and isinstance(value, str):
                obj[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(obj, list):
        for item in obj:
            _hex_ids(item)


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> dict:
    """The OTLP/JSON encoding of ``spans``: ``{"resourceSpans": [...]}``."""
    d = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    _hex_ids(d)
    return d


class OtlpJsonFileSpanExporter(SpanExporter):
    """Append each batch of spans to ``path`` as one line of OTLP/JSON.

    The file is truncated when the exporter is created: it holds the spans of one run. Load it in
    Jaeger UI (Search -> "JSON File"), or replay it to a collector line by line (``POST /v1/traces``
    with ``Content-Type: application/json``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent != Path(""):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115  # closed in shutdown()
        self.spans_written = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        line = json.dumps(spans_to_otlp_json(spans), separators=(",", ":"))
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(line + "\n")
            self._file.flush()
            self.spans_written += len(spans)
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


# -- a quiet, failure-aware wrapper around OTLP exporters ---------------------------------------------


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    """Host and port of an OTLP endpoint (``http://host:port/...`` or ``host:port``)."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not url.hostname:
        return None
    try:
        port = url.port
    except ValueError:
        return None
    return url.hostname, port or (443 if url.scheme == "https" else 80)


def reachable(address: tuple[str, int], timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout_s``."""
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


#: failure reasons that mean "this collector does not take this signal" (Jaeger takes traces only).
_REJECTED = re.compile(r"UNIMPLEMENTED|\b40[45]\b|Not Found|Method Not Allowed", re.IGNORECASE)

SPANS = "spans"
METRICS = "metrics"


class ExportHealth:
    """Export state of one signal to one destination.

    After a failed export, batches are dropped (and counted) for ``retry_after_s`` before the next
    try; at shutdown, a destination that never answered is probed with one TCP connection and not
    waited for when nothing listens. A destination that answers "unimplemented" / 404 does not
    take this signal at all (Jaeger stores traces, not metrics): that is said once and the signal
    is no longer sent there. Everything else costs one warning, and one line in :meth:`report`.
    """

    def __init__(self, signal: str, destination: str, endpoint: str, retry_after_s: float = 10.0) -> None:
        self.signal = signal
        self.destination = destination
        self.address = endpoint_address(endpoint)
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self.down = False
        self.rejected = False
        self.closing = False
        self.succeeded = False
        self.failures = 0
        self.last_attempt = 0.0
        self.last_reason = ""
        self.warned = False
        self.exported = 0
        self.dropped = 0

    def note(self, reason: str) -> None:
        with self._lock:
            self.last_reason = reason

    def may_try(self) -> bool:
        """Whether an export should be attempted now (else the batch is dropped and counted)."""
        with self._lock:
            if self.rejected:
                return False
            if self.down and time.monotonic() - self.last_attempt < self.retry_after_s and not self.closing:
                return False
            probe = self.closing and (self.down or not self.succeeded) and self.address is not None
        if probe and not reachable(self.address):
            with self._lock:
                if not self.last_reason:
                    self.last_reason = f"nothing accepts connections at {self.address[0]}:{self.address[1]}"
            return False
        return True

    def record(self, ok: bool, items: int, attempted: bool = True) -> None:
        """Account for one batch of ``items``: exported, failed, or dropped unattempted."""
        with self._lock:
            if ok:
                self.exported += items
                self.succeeded = True
                resumed = self.down
                self.down = False
            else:
                resumed = False
                if not self.rejected:
                    self.dropped += items
                if attempted:
                    self.failures += 1
                    self.last_attempt = time.monotonic()
                    if _REJECTED.search(self.last_reason):
                        self.rejected = True
                    else:
                        self.down = True
            warn = attempted and not ok and not self.warned
            self.warned = self.warned or warn
            reason, rejected = self.last_reason, self.rejected
        if resumed:
            log.warning("telemetry: %s answers again; exporting %s resumed", self.destination, self.signal)
        if not warn:
            return
        if rejected:
            where = (
                "they stay in summary.json and on --prometheus-port"
                if self.signal == METRICS
                else "use another exporter"
            )
            log.warning(
                "telemetry: %s does not accept %s (%s), so they are not sent there; %s",
                self.destination,
                self.signal,
                reason,
                where,
            )
        else:
            log.warning(
                "telemetry: cannot export %s to %s%s; dropping them until it answers",
                self.signal,
                self.destination,
                f" ({reason})" if reason else "",
            )

    def report(self) -> str | None:
        """One line on what was lost, or None when everything went through (or was refused and said so)."""
        if self.rejected or not self.dropped:
            return None
        unit = {SPANS: "span", METRICS: "metric export"}.get(self.signal, self.signal)
        reason = f": {self.last_reason}" if self.last_reason else ""
        return f"telemetry: {self.dropped} {unit}{'s' if self.dropped != 1 else ''} not delivered to {self.destination}{reason}"


class ExportLogRouter(logging.Filter):
    """Swallows the OTLP exporters' per-attempt warnings, keeping the last one of each signal as the
    reason its :class:`ExportHealth` gives in its single warning."""

    def __init__(self, healths: dict[str, ExportHealth]) -> None:
        super().__init__()
        self.healths = healths
        self._loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        msg = record.getMessage().splitlines()[0][:300]
        text = f"{record.name} {msg}".lower()
        if "metric" in text:
            targets = [METRICS]
        elif "span" in text or "trace" in text:
            targets = [SPANS]
        else:
            targets = list(self.healths)
        for signal in targets:
            if signal in self.healths:
                self.healths[signal].note(msg)
        return False

    def attach(self) -> None:
        for name in OTLP_LOGGERS:
            lg = logging.getLogger(name)
            lg.addFilter(self)
            self._loggers.append(lg)

    def detach(self) -> None:
        for lg in self._loggers:
            lg.removeFilter(self)
        self._loggers.clear()


class GuardedSpanExporter(SpanExporter):
    """A span exporter that consults an :class:`ExportHealth` before each export."""

    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self.inner = inner
        self.health = health

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.health.may_try():
            self.health.record(False, len(spans), attempted=False)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001  # an exporter bug must not reach the pipeline
            self.health.note(f"{type(exc).__name__}: {exc}")
            result = SpanExportResult.FAILURE
        self.health.record(result == SpanExportResult.SUCCESS, len(spans))
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()


class GuardedMetricExporter(MetricExporter):
    """A metric exporter that consults an :class:`ExportHealth` before each export."""

    def __init__(self, inner: MetricExporter, health: ExportHealth) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.health = health

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        if not self.health.may_try():
            self.health.record(False, 1, attempted=False)
            return MetricExportResult.FAILURE
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.health.note(f"{type(exc).__name__}: {exc}")
            result = MetricExportResult.FAILURE
        self.health.record(result == MetricExportResult.SUCCESS, 1)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
