"""Telemetry as a part of the live server (``speechpipe serve``): a ``stream`` span per connection
and an ``utterance`` trace per segment with the stage metrics, labelled for the variant and role
serving each stream; ``/metrics`` from the server's own port (a Prometheus registry fed by the same
meter provider as every other exporter); the flush when the server stops.

It is also the one way features report to telemetry: each feature reports events to the
server's observer (the deployment's changes and scores, drift judged, reviews and the review
queue's figures, streams turned away), and this part turns them into spans and metrics through
that feature's own adapter (:mod:`speechpipe.pipeline.deploy.telemetry`,
:mod:`speechpipe.pipeline.monitoring.telemetry`, :mod:`speechpipe.pipeline.review.telemetry`).
Gauges read the latest figures reported.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.deploy import telemetry as dt
from speechpipe.pipeline.deploy.deployment import (
    ClientFeedback,
    DeployChanged,
    FeedbackScored,
    RolledBack,
    ShadowScored,
    ShadowSegment,
    WeightChanged,
)
from speechpipe.pipeline.hooks import Observer, StreamRejected
from speechpipe.pipeline.monitoring.part import DriftJudged
from speechpipe.pipeline.monitoring.telemetry import drift_alert, register_drift_gauges, register_quality_gauges
from speechpipe.pipeline.observability import labels_for
from speechpipe.pipeline.review.part import Reviewed, ReviewFigures
from speechpipe.pipeline.review.telemetry import register_review_gauges, reviewed, vad_words
from speechpipe.pipeline.server.auth import NO_STORE
from speechpipe.pipeline.server.parts import Part, StreamInfo
from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation, Labels
from speechpipe.telemetry.setup import Telemetry


class TelemetryPart(Part):
    """See the module docstring.

    Args:
        telemetry: the process's telemetry (:func:`~speechpipe.pipeline.observability.start_telemetry`
            with ``metrics_page=True`` for ``/metrics``).
        config: the server's config (the variants' labels; drift and review gauges where those
            features are configured).
    """

    name = "telemetry"

    def __init__(self, telemetry: Telemetry, config: Config) -> None:
        self.telemetry = telemetry
        self.config = config
        self._views: dict[Labels, Instrumentation] = {}
        self._drift_rows: list = []
        self._quality: dict = {}
        self._review_figures: dict = {}
        inst = telemetry.instrumentation
        if config.monitoring.baseline:
            register_drift_gauges(inst, self._rows)
            register_quality_gauges(inst, lambda: self._quality)
        if config.review.db:
            register_review_gauges(inst, self._figures)

    def labelled(self, config: Config, role: str) -> Instrumentation:
        """The instrumentation of a variant (its effective config) in ``role``."""
        labels = labels_for(config, role)
        if labels not in self._views:
            self._views[labels] = self.telemetry.instrumentation.labelled(labels)
        return self._views[labels]

    def observers(self, stream: StreamInfo) -> list[Observer]:
        inst = self.labelled(stream.config, stream.role)
        return [inst.stream_observer(mode=n.LIVE, attributes=stream.attributes)]

    def server_observers(self) -> list[Observer]:
        return [self]

    def on_event(self, event: object) -> None:
        """A server-level event (see the module docstring); others are ignored."""
        inst = self.telemetry.instrumentation
        match event:
            case StreamRejected():
                inst.on_event(event)
            case WeightChanged(variant, role, delta):
                dt.weight_changed(self._of(variant, role), delta)
            case DeployChanged(variant, role, action, reason, doc):
                dt.deploy_changed(self._of(variant, role), action, reason, doc)
            case RolledBack(variant, role, gate):
                dt.rolled_back(self._of(variant, role), gate)
            case ShadowSegment(variant, role, outcome, latency_s):
                dt.shadow_segment(self._of(variant, role), outcome, latency_s)
            case ShadowScored(variant, role, agreement, empty_mismatch):
                dt.shadow_scored(self._of(variant, role), agreement, empty_mismatch)
            case FeedbackScored(variant, role, errors, words):
                dt.feedback_scored(self._of(variant, role), errors, words)
                if role != "shadow":
                    dt.feedback_counted(self._of(variant, role))
            case ClientFeedback(variant, role):
                dt.client_feedback(self._of(variant, role))
            case DriftJudged(rows, crossed, quality):
                self._drift_rows = rows
                self._quality = quality
                for d in crossed:
                    drift_alert(inst, d.variant, d.stage, d.feature, d.score, d.threshold, d.n, d.alert)
            case ReviewFigures(figures):
                self._review_figures = figures
            case Reviewed(variant, level, reason, cut, missed):
                reviewed(inst, variant, level, reason)
                vad_words(inst, variant, cut, missed)

    def _of(self, variant: str, role: str) -> Instrumentation:
        return self.labelled(self.config.for_variant(variant), role)

    def _rows(self) -> list:
        return self._drift_rows

    def _figures(self) -> dict:
        return self._review_figures

    def prometheus(self) -> tuple[bytes, str]:
        """The ``/metrics`` page as ``(body, content_type)`` (the dashboard reads it too)."""
        return self.telemetry.prometheus_text(), CONTENT_TYPE_LATEST

    def routes(self) -> list[BaseRoute]:
        return [Route("/metrics", self.metrics)]

    async def metrics(self, request: Request) -> Response:
        body, content_type = self.prometheus()
        return Response(body, headers={"Content-Type": content_type, **NO_STORE})

    async def stop(self) -> None:
        self.telemetry.shutdown()
