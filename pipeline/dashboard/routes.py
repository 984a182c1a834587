"""The live dashboard: ``/dashboard`` (the page), ``/dashboard.js``, ``/dashboard/state`` (one
snapshot as JSON) and ``/dashboard/events`` (server-sent events, one snapshot a second). The page
and its data take the admin token (``?token=`` for browsers); its deploy actions go to
``POST /admin/deploy`` with the same token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.dashboard.state import DashboardState
from speechpipe.pipeline.server.app import NO_STORE

#: seconds between two events of a page's stream.
EVENT_INTERVAL_S = 1.0


def dashboard_routes(
    state: DashboardState,
    refusal: Callable[[Request], Response | None],
    closing: Callable[[], bool],
) -> list[BaseRoute]:
    """The routes; ``refusal`` answers a request without the admin token, ``closing`` says the
    server drains (event streams end then, so they do not hold the shutdown)."""

    def asset(name: str, content_type: str, guarded: bool) -> Callable:
        async def page(request: Request) -> Response:
            if guarded and (refused := refusal(request)) is not None:
                return refused
            body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
            return Response(body, headers={"Content-Type": content_type, **NO_STORE})

        return page

    async def snapshot(request: Request) -> Response:
        if (refused := refusal(request)) is not None:
            return refused
        return JSONResponse(await asyncio.to_thread(state.snapshot), headers=NO_STORE)

    async def events(request: Request) -> Response:
        if (refused := refusal(request)) is not None:
            return refused

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {int(EVENT_INTERVAL_S * 3000)}\n\n"
            while not closing():
                doc = await asyncio.to_thread(state.snapshot)
                yield f"data: {json.dumps(doc, separators=(',', ':'))}\n\n"
                await asyncio.sleep(EVENT_INTERVAL_S)

        headers = {**NO_STORE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return [
        Route("/dashboard", asset("dashboard.html", "text/html; charset=utf-8", True)),
        Route("/dashboard.js", asset("dashboard.js", "text/javascript; charset=utf-8", False)),
        Route("/dashboard.css", asset("dashboard.css", "text/css; charset=utf-8", False)),
        Route("/dashboard/state", snapshot),
        Route("/dashboard/events", events),
    ]
