"""Telemetry of ``speechpipe serve``: the telemetry package's providers and instrumentation, wired
into :class:`~speechpipe.pipeline.server.SpeechServer`.

* each stream gets :class:`~speechpipe.telemetry.instrument.StreamTelemetry` hooks (live layout:
  a ``stream`` span per connection and an ``utterance`` trace per segment, linked to it; stage
  metrics; active streams; ASR queue depth through the scheduler's queue callbacks; final latency);
* turned-away connections are counted with ``Instrumentation.stream_rejected``;
* ``/metrics`` renders a Prometheus registry fed by an OTel ``PrometheusMetricReader`` on the same
  meter provider, so the server's own port serves every metric of the process;
* on shutdown every exporter is flushed (bounded in time).
"""

from __future__ import annotations

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.protocol import Start
from speechpipe.pipeline.server import ServerObserver


class TelemetryObserver(ServerObserver):
    """Server-level events into the telemetry instrumentation (per-stream figures come from the hooks)."""

    def __init__(self, instrumentation) -> None:
        self.instrumentation = instrumentation

    def stream_rejected(self, reason: str) -> None:
        self.instrumentation.stream_rejected(reason)


def server_telemetry(config: Config) -> tuple[dict, object]:
    """Telemetry started from ``config`` (``[telemetry]`` table, ``OTEL_*`` variables) in live mode,
    and the keyword arguments that plug it into :class:`SpeechServer`: hooks factory, observer,
    ``/metrics`` renderer and shutdown flush. Raises ``TelemetryError`` on bad settings."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from speechpipe.telemetry.instrument import LIVE
    from speechpipe.telemetry.setup import Telemetry

    registry = CollectorRegistry(auto_describe=True)
    telemetry = Telemetry.start(config, mode=LIVE, metric_readers=(PrometheusMetricReader(registry=registry),))
    instrumentation = telemetry.instrumentation

    def hooks(stream_id: str, start: Start):
        return instrumentation.stream_hooks(
            mode="live",
            attributes={"audio.encoding": start.encoding, "audio.channels": start.channels},
        )

    kwargs = {
        "hooks_factory": hooks,
        "observer": TelemetryObserver(instrumentation),
        "metrics": lambda: (generate_latest(registry), CONTENT_TYPE_LATEST),
        "on_shutdown": telemetry.shutdown,
    }
    return kwargs, telemetry
