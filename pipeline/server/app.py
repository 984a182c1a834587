"""The server's ASGI app: the WebSocket endpoint and the HTTP routes, on Starlette.

Routes:

* ``/stream``: the WebSocket endpoint (docs/protocol.md); token-protected when a token is set.
* ``/``: the browser client (microphone over the same WebSocket); ``/app.js``, ``/pcm-worklet.js``.
* ``/healthz``: 200 while the process serves requests.
* ``/readyz``: 200 once the model is loaded, 503 while loading or draining.
* ``/metrics``: Prometheus text exposition.

Further routes (the admin API, feedback) are given by the server as ``extra_routes``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
}

NO_STORE = {"Cache-Control": "no-store"}


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: ``Authorization: Bearer ...``, else ``?token=``."""
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.query_params.get("token")


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a given token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def unauthorized(message: str = "missing or wrong token\n") -> Response:
    return PlainTextResponse(message, 401, headers={"WWW-Authenticate": 'Bearer realm="speechpipe"', **NO_STORE})


def build_app(
    *,
    stream: Callable[[WebSocket], Awaitable[None]],
    token: str | None,
    is_ready: Callable[[], tuple[bool, str]],
    metrics: Callable[[], tuple[bytes, str]],
    on_unauthorized: Callable[[], None],
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The app of one server.

    Args:
        stream: serves an accepted ``/stream`` WebSocket until the stream is over.
        token: the stream token (None: anyone may stream).
        is_ready: ``(ready, why not)`` for ``/readyz``.
        metrics: renders ``/metrics`` as ``(body, content_type)``.
        on_unauthorized: told of each stream refused for its token.
        extra_routes: more routes (admin API, feedback).
    """

    async def stream_endpoint(websocket: WebSocket) -> None:
        if token and not token_matches(bearer_token(websocket), token):
            on_unauthorized()
            await websocket.send_denial_response(unauthorized())
            return
        await websocket.accept()
        await stream(websocket)

    async def upgrade_required(_request: Request) -> Response:
        return PlainTextResponse(
            "/stream is a WebSocket endpoint\n",
            426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade", **NO_STORE},
        )

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=NO_STORE)

    async def readyz(_request: Request) -> Response:
        ready, why = is_ready()
        return PlainTextResponse("ready\n" if ready else f"{why}\n", 200 if ready else 503, headers=NO_STORE)

    async def metrics_page(_request: Request) -> Response:
        body, content_type = metrics()
        return Response(body, headers={"Content-Type": content_type, **NO_STORE})

    def static(name: str, content_type: str) -> Callable[[Request], Awaitable[Response]]:
        async def page(_request: Request) -> Response:
            body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
            return Response(body, headers={"Content-Type": content_type, **NO_STORE})

        return page

    routes: list[BaseRoute] = [
        WebSocketRoute("/stream", stream_endpoint),
        Route("/stream", upgrade_required),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        *(Route(path, static(name, ctype)) for path, (name, ctype) in _STATIC.items()),
        *extra_routes,
    ]
    return Starlette(routes=routes)
