"""The server's ASGI app (Starlette): its parts' routes behind one authentication backend and one
body limit.

Middleware, outermost first: :class:`~starlette.middleware.authentication.AuthenticationMiddleware`
with the :class:`~speechpipe.pipeline.server.auth.TokenBackend` (every request gets its principal
and scopes; each endpoint declares the scope it needs), then
:class:`~speechpipe.pipeline.server.http.BodyLimit` (every request body bounded before an endpoint
reads it). The app's ``state.principals`` is what refusals consult (401 or 403).

Routes of the server itself (:class:`~speechpipe.pipeline.server.speech_server.SpeechServer`):

* ``/stream``: the WebSocket endpoint (docs/protocol.md), ``stream`` scope; a plain GET is 426.
* ``/``: the browser client (microphone over the same WebSocket); ``/app.js``, ``/transcript.js``,
  ``/pcm-worklet.js``; its icon ``/favicon.svg``, also at ``/favicon.ico`` (where browsers look).
* ``/v1/whoami``: the caller's principal and scopes, and whether streaming needs a token (200 to
  anyone: the browser client asks before it connects, since a refused WebSocket only shows it 1006).
* ``/healthz``: 200 while the process serves requests.
* ``/readyz``: 200 once the model is loaded, 503 while loading or draining.
* ``/metrics``: the telemetry part's; an empty page on a server without one.

uvicorn runs the app with its lifespan on (:mod:`.runner`); the parts start when the variants have
loaded and stop after the streams have drained (the server's ``start`` and ``shutdown``), since
their routes must answer while the model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.server.auth import NO_STORE, Principals, TokenBackend
from speechpipe.pipeline.server.http import BodyLimit

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/transcript.js": ("transcript.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    # Browsers ask for /favicon.ico on any page that names no icon (the API's JSON, say), and a
    # 404 there is noise in every log; Chromium and Firefox draw the SVG served under that name.
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}

EMPTY_METRICS = "text/plain; version=0.0.4; charset=utf-8"


async def static_page(request: Request) -> Response:
    """One of the browser client's files."""
    name, content_type = _STATIC[request.url.path]
    body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
    return Response(body, headers={"Content-Type": content_type, **NO_STORE})


async def whoami(request: Request) -> Response:
    """``GET /v1/whoami``: who the caller's token makes it (:meth:`Principals.describe`). Open to
    everyone, a wrong token or none included: the answer says what the token is worth."""
    principals: Principals = request.app.state.principals
    return JSONResponse(principals.describe(request.user), headers=NO_STORE)


async def upgrade_required(_request: Request) -> Response:
    return PlainTextResponse(
        "/stream is a WebSocket endpoint\n", 426, headers={"Upgrade": "websocket", "Connection": "Upgrade", **NO_STORE}
    )


async def no_metrics(_request: Request) -> Response:
    """``/metrics`` of a server without telemetry: an empty exposition."""
    return Response(b"", headers={"Content-Type": EMPTY_METRICS, **NO_STORE})


def static_routes() -> list[BaseRoute]:
    return [Route(path, static_page) for path in _STATIC]


def build_app(routes: Sequence[BaseRoute], principals: Principals) -> Starlette:
    """The app serving ``routes`` (the server's and its parts'), authenticated against
    ``principals``. ``/metrics`` is added empty when no route serves it."""
    routes = list(routes)
    if not any(getattr(r, "path", None) == "/metrics" for r in routes):
        routes.append(Route("/metrics", no_metrics))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=TokenBackend(principals)),
            Middleware(BodyLimit, routes=routes),
        ],
    )
    app.state.principals = principals
    return app
