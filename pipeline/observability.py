"""Wiring telemetry to a pipeline: the one place that turns a :class:`Config` into telemetry and
its observers, used by every command (``transcribe``, ``eval``, ``serve``) and by the benchmarks.

The telemetry package knows nothing of the pipeline's config: it is given the ``[telemetry]``
table and explicit :class:`~speechpipe.telemetry.instruments.Labels` (variant, VAD config id,
model) from here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.hooks import Observer
from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation, Labels
from speechpipe.telemetry.setup import Telemetry, TelemetryError


def labels_for(config: Config, role: str = "primary") -> Labels:
    """What a pipeline run with ``config`` is (in ``role`` of a deployment), for its spans and
    metric points."""
    return Labels(
        variant=config.pipeline.variant,
        vad_config_id=config.vad.config_id,
        asr_model=config.asr.model,
        variant_id=config.variant_id,
        role=role,
        automation=config.automation.level,
    )


def start_telemetry(
    config: Config,
    mode: str = n.OFFLINE,
    *,
    environ: Mapping[str, str] | None = None,
    metrics_page: bool = False,
    announce: bool = True,
) -> Telemetry:
    """Telemetry for a command, from the config's ``[telemetry]`` table and the environment.

    With ``announce`` it says on stderr where traces and metrics go (nothing when nothing is
    exported). Bad settings raise :class:`ConfigError`, like any other bad config.
    """
    try:
        telemetry = Telemetry(
            config.telemetry, labels_for(config), mode=mode, environ=environ, metrics_page=metrics_page
        )
    except TelemetryError as exc:
        raise ConfigError(str(exc)) from None
    if announce:
        for line in telemetry.plan.describe():
            print(f"speechpipe: telemetry: {line}", file=sys.stderr)
    return telemetry


@dataclass
class ServerTelemetry:
    """What plugs telemetry into :class:`~speechpipe.pipeline.server.speech_server.SpeechServer` (its keyword
    arguments): the server-level observer, each stream's observers (for the variant and role that
    serve it), the instrumentation of a variant and role, the ``/metrics`` page, and the flush at
    shutdown."""

    observer: Observer
    stream_observers: Callable[[str, dict, Config, str], list[Observer]]
    labelled: Callable[[Config, str], Instrumentation]
    drift_telemetry: Callable[[Callable], Callable]
    review_telemetry: Callable[[Callable], Callable]
    metrics: Callable[[], tuple[bytes, str]]
    on_shutdown: Callable[[], None]

    def kwargs(self) -> dict:
        return {
            "observer": self.observer,
            "stream_observers": self.stream_observers,
            "labelled": self.labelled,
            "drift_telemetry": self.drift_telemetry,
            "review_telemetry": self.review_telemetry,
            "metrics": self.metrics,
            "on_shutdown": self.on_shutdown,
        }


def server_telemetry(telemetry: Telemetry) -> ServerTelemetry:
    """Telemetry of ``speechpipe serve``: a ``stream`` span per connection and an ``utterance``
    trace per segment, stage metrics, streams turned away, and ``/metrics`` from the server's own
    port (a Prometheus registry fed by the same meter provider as every other exporter)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    inst = telemetry.instrumentation
    views: dict[Labels, Instrumentation] = {}

    def labelled(config: Config, role: str) -> Instrumentation:
        labels = labels_for(config, role)
        if labels not in views:
            views[labels] = inst.labelled(labels)
        return views[labels]

    def stream_observers(stream_id: str, attributes: dict, config: Config, role: str) -> list[Observer]:
        return [labelled(config, role).stream_observer(mode=n.LIVE, attributes=attributes)]

    def drift_telemetry(rows: Callable) -> Callable:
        from speechpipe.pipeline.monitoring.telemetry import drift_alert, register_drift_gauges

        register_drift_gauges(inst, rows)

        def report(d, raised: bool) -> None:
            drift_alert(inst, d.variant, d.stage, d.feature, d.score, d.threshold, d.n, raised)

        return report

    def review_telemetry(figures: Callable[[], dict]) -> Callable:
        from speechpipe.pipeline.review.telemetry import register_review_gauges, reviewed

        register_review_gauges(inst, figures)
        return lambda item: reviewed(inst, item.variant, item.level, item.reason)

    return ServerTelemetry(
        observer=inst,
        stream_observers=stream_observers,
        labelled=labelled,
        drift_telemetry=drift_telemetry,
        review_telemetry=review_telemetry,
        metrics=lambda: (telemetry.prometheus_text(), CONTENT_TYPE_LATEST),
        on_shutdown=telemetry.shutdown,
    )


def instrumentation_for(config: Config, tracer_provider, meter_provider, **kwargs) -> Instrumentation:
    """Instrumentation on given providers (tests, embedding), labelled and set up from ``config``."""
    kwargs.setdefault("trace_text", config.telemetry.trace_text)
    kwargs.setdefault("trace_layout", config.telemetry.trace_layout)
    return Instrumentation(tracer_provider, meter_provider, labels=labels_for(config), **kwargs)
