"""Server-level metrics through OpenTelemetry, exposed on ``/metrics`` by the Prometheus exporter.

:class:`OtelServerObserver` implements :class:`~speechpipe.pipeline.server.ServerObserver` on any
OTel ``Meter``: active and rejected streams, ASR queue depth, end-of-speech to final latency. Every
point carries ``pipeline.variant`` and ``vad.config_id``.
"""

from __future__ import annotations

from speechpipe.pipeline.server import ServerObserver

#: latency buckets (s) fine enough around the live targets (1 s, 1.5 s, 2 s).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class OtelServerObserver(ServerObserver):
    """Server counters as OTel instruments."""

    def __init__(self, meter, attributes: dict[str, str]) -> None:
        self.attributes = dict(attributes)
        self._active = meter.create_up_down_counter(
            "speechpipe.streams.active", unit="{stream}", description="Live streams being served"
        )
        self._rejected = meter.create_counter(
            "speechpipe.streams.rejected", unit="{stream}", description="Connections turned away, by reason"
        )
        self._depth = meter.create_gauge(
            "speechpipe.asr.queue.depth", unit="{job}", description="ASR jobs waiting for the worker, by kind"
        )
        self._latency = meter.create_histogram(
            "speechpipe.final.latency",
            unit="s",
            description="From the arrival of the audio at a segment's end to its final being sent",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )

    def stream_opened(self, stream_id: str) -> None:
        self._active.add(1, self.attributes)

    def stream_closed(self, stream_id: str) -> None:
        self._active.add(-1, self.attributes)

    def stream_rejected(self, reason: str) -> None:
        self._rejected.add(1, {**self.attributes, "reason": reason})

    def queue_depth(self, finals: int, partials: int) -> None:
        self._depth.set(finals, {**self.attributes, "kind": "final"})
        self._depth.set(partials, {**self.attributes, "kind": "partial"})

    def final_latency(self, latency_s: float) -> None:
        self._latency.record(latency_s, self.attributes)


def prometheus_observer(config) -> dict:
    """Keyword arguments for :class:`SpeechServer`: an observer on a meter provider whose metrics
    ``/metrics`` serves (prometheus_client's registry, fed by the OTel Prometheus exporter)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "speechpipe"}))
    attributes = {"pipeline.variant": config.pipeline.variant, "vad.config_id": config.vad.config_id}
    observer = OtelServerObserver(provider.get_meter("speechpipe.server"), attributes)
    return {"observer": observer, "on_shutdown": provider.shutdown}
