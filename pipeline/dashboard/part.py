"""The live dashboard as a part of the live server: ``/dashboard`` (the page), ``/dashboard.js``,
``/dashboard.css``, the vendored chart library (``/vendor/uplot/...``, uPlot, MIT), ``/dashboard/state``
(one snapshot as JSON), ``/dashboard/events`` (server-sent events, one snapshot a second) and
``/dashboard/history`` (the time series so far, as columns). The page and its data need the
``admin`` scope (``?token=`` for browsers); its deploy actions go to ``POST /admin/deploy`` with
the same token. At a tick of the server a snapshot is taken when the time series wants its next
point (every 2 s), so the charts have the time before a page was opened.

It reads what other parts hold, given to it by whoever builds the parts: the ``/metrics`` page
(telemetry), the drift figures and the review queue's; the deploy state comes from the
deployment in the server's context.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.dashboard.state import DashboardState, finite
from speechpipe.pipeline.deploy.deployment import Deployment
from speechpipe.pipeline.server.auth import ADMIN, NO_STORE, requires
from speechpipe.pipeline.server.http import STORE_UNAVAILABLE, unavailable
from speechpipe.pipeline.server.parts import Part, ServerContext

#: seconds between two events of a page's stream.
EVENT_INTERVAL_S = 1.0

EMPTY_METRICS = (b"", "text/plain; version=0.0.4; charset=utf-8")
#: the vendored chart library's files and their content types.
VENDORED = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
}


class DashboardPart(Part):
    """See the module docstring.

    Args:
        metrics: renders ``/metrics`` as ``(body, content_type)`` (None: no telemetry, no figures).
        drift: the drift snapshot and histograms (None without drift monitoring).
        review: the review queue's figures and threshold curves (None without a queue).
    """

    name = "dashboard"

    def __init__(
        self,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        drift: Callable[[], tuple[dict, dict] | None] | None = None,
        review: Callable[[], dict | None] | None = None,
    ) -> None:
        self.metrics = metrics or (lambda: EMPTY_METRICS)
        self.drift = drift or (lambda: None)
        self.review = review or (lambda: None)
        self.deployment: Deployment | None = None
        self.stopping: asyncio.Event | None = None
        self.state = DashboardState(self.metrics, self._deploy, self.drift, self.review)

    async def start(self, ctx: ServerContext) -> None:
        self.deployment = ctx.deployment
        self.stopping = ctx.stopping

    async def tick(self, now: float) -> None:
        if self.state.point_due():
            await asyncio.to_thread(self.state.snapshot)

    def _deploy(self) -> dict | None:
        return None if self.deployment is None else self.deployment.snapshot()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/dashboard", self.page),
            Route("/dashboard.js", self.script),
            Route("/dashboard-charts.js", self.charts),
            Route("/dashboard.css", self.style),
            Route("/dashboard/state", self.snapshot),
            Route("/dashboard/events", self.events),
            Route("/dashboard/history", self.history),
            Route("/vendor/uplot/{name}", self.vendor),
        ]

    @requires(ADMIN)
    async def page(self, request: Request) -> Response:
        return _asset("dashboard.html", "text/html; charset=utf-8")

    async def script(self, request: Request) -> Response:
        return _asset("dashboard.js", "text/javascript; charset=utf-8")

    async def charts(self, request: Request) -> Response:
        return _asset("dashboard-charts.js", "text/javascript; charset=utf-8")

    async def style(self, request: Request) -> Response:
        return _asset("dashboard.css", "text/css; charset=utf-8")

    async def vendor(self, request: Request) -> Response:
        """The vendored uPlot files (its script, its style sheet, its licence)."""
        name = request.path_params["name"]
        if name not in VENDORED:
            return PlainTextResponse("not found\n", 404)
        return _asset(f"vendor/uplot/{name}", VENDORED[name])

    @requires(ADMIN)
    async def history(self, request: Request) -> Response:
        """``{"columns": {"t": [...], SERIES: [...]}, "every_s"}``: the time series (after
        ``?since=T``, seconds since the epoch)."""
        since = request.query_params.get("since")
        try:
            after = float(since) if since is not None else None
        except ValueError:
            return JSONResponse({"error": "bad_request", "message": f"since must be a number, not {since!r}"}, 400)
        return JSONResponse(finite(await asyncio.to_thread(self.state.history, after)), headers=NO_STORE)

    @requires(ADMIN)
    async def snapshot(self, request: Request) -> Response:
        """The snapshot; while the review store is down, ``503`` with its error and
        ``Retry-After`` (the rest of the snapshot, the deploy state above all, still in the body).
        The event stream carries the same snapshot and goes on."""
        doc = await asyncio.to_thread(self.state.snapshot)
        review = doc.get("review")
        if isinstance(review, dict) and review.get("error") == STORE_UNAVAILABLE:
            body = doc | {"error": review["error"], "message": review["message"]}
            return unavailable(body, review.get("retry_after_s", 5))
        return JSONResponse(doc, headers=NO_STORE)

    @requires(ADMIN)
    async def events(self, request: Request) -> Response:
        """Server-sent events until the client goes or the server drains (so an open page does
        not hold up the shutdown)."""

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {int(EVENT_INTERVAL_S * 3000)}\n\n"
            while self.stopping is None or not self.stopping.is_set():
                doc = await asyncio.to_thread(self.state.snapshot)
                yield f"data: {json.dumps(doc, separators=(',', ':'))}\n\n"
                await asyncio.sleep(EVENT_INTERVAL_S)

        headers = {**NO_STORE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _asset(name: str, content_type: str) -> Response:
    body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
    return Response(body, headers={"Content-Type": content_type, **NO_STORE})
