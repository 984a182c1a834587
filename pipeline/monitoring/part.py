"""Drift monitoring as a part of the live server: each stream's segments to the
:class:`~speechpipe.pipeline.monitoring.service.DriftService` (streams whose variant runs a
model), human scores from the deployment's :class:`FeedbackScored` events (trusted feedback on a
session or a segment, and every review, which reaches the deployment as feedback on its segment:
each recalibrates the estimated WER), the windows judged at each tick, and ``GET /admin/drift`` (``admin`` scope):
``{"variants": {NAME: {"features": {FEATURE: {"score", "threshold", "alert", "n"}}}}}``.

Each tick reports :class:`DriftJudged` to the server's observer: every feature's figures now (the
gauges of ``/metrics``) and those that crossed their threshold (a span each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.deploy.deployment import FeedbackScored
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.monitoring.drift import FeatureDrift
from speechpipe.pipeline.monitoring.service import DriftService
from speechpipe.pipeline.monitoring.settings import MonitoringSettings
from speechpipe.pipeline.server.auth import ADMIN, NO_STORE, requires
from speechpipe.pipeline.server.http import error
from speechpipe.pipeline.server.parts import Part, ServerContext, StreamInfo

#: (variant, stage, feature, score, threshold, alert) of a feature judged.
Row = tuple[str, str, str, float, float, bool]


@dataclass(frozen=True)
class DriftJudged:
    """The windows were judged: every feature's figures (``rows``) and those that crossed their
    threshold either way (``crossed``)."""

    rows: list[Row]
    crossed: list[FeatureDrift]
    #: each variant's estimated WER (``{variant: {"estimated_wer", "low", "high", ...}}``)
    quality: dict = field(default_factory=dict)


class DriftPart(Part):
    """See the module docstring. Without a baseline (``[monitoring] baseline`` unset) it watches
    nothing and ``/admin/drift`` answers 404."""

    name = "drift"

    def __init__(self, settings: MonitoringSettings) -> None:
        # The baseline is read here: a bad one stops the server before it listens.
        self.service = DriftService(settings) if settings.baseline else None
        self._report: Observer | None = None

    async def start(self, ctx: ServerContext) -> None:
        self._report = ctx.observer

    def observers(self, stream: StreamInfo) -> list[Observer]:
        if self.service is None or not stream.config.automation.runs_model:  # no model output to watch
            return []
        return [self.service.observer(stream.variant)]

    def server_observers(self) -> list[Observer]:
        return [self]

    def on_event(self, event: object) -> None:
        if self.service is not None and isinstance(event, FeedbackScored):
            self.service.feedback(event.variant, event.errors, event.words)
            if event.role != "shadow" and event.session:
                self.service.recalibrate(event.variant, event.session, event.errors, event.words, event.segment)

    async def tick(self, now: float) -> None:
        if self.service is None:
            return
        crossed = self.service.evaluate(now)
        if self._report is not None:
            self._report.on_event(DriftJudged(self.service.rows(), crossed, self.service.quality()))

    def figures(self) -> tuple[dict, dict] | None:
        """The snapshot and histograms (the dashboard's), None without a baseline."""
        return None if self.service is None else (self.service.snapshot(), self.service.histograms())

    def routes(self) -> list[BaseRoute]:
        return [Route("/admin/drift", self.state, methods=["GET"])]

    @requires(ADMIN)
    async def state(self, request: Request) -> Response:
        if self.service is None:
            return error(404, "no_baseline", "drift monitoring is off: start the server with --baseline")
        return JSONResponse(self.service.snapshot(), headers=NO_STORE)
