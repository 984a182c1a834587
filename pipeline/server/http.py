"""What the HTTP routes of every part share: JSON errors, reading a JSON body, and the one place
that bounds request bodies (:class:`BodyLimit`).

Every request body is bounded before an endpoint reads it: :class:`BodyLimit`, an ASGI
middleware, finds the route a request goes to, refuses a ``Content-Length`` over that route's
limit with 413 before a byte is read, and counts a body without one (chunked) as it arrives,
answering 413 as soon as it goes over. A route's limit is :data:`MAX_BODY` (64 KiB: an admin
action, a feedback or review text) unless its endpoint declares another with :func:`body_limit`
(an upload: ``server.max_upload_bytes``), together with the shape of its 413.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speechpipe.pipeline.server.auth import NO_STORE

#: the largest request body a route takes unless it declares otherwise (an admin action, a
#: feedback or review text).
MAX_BODY = 64 * 1024

#: renders the 413 of a body over ``limit`` bytes.
TooLarge = Callable[[int], Response]


class BadRequest(Exception):
    """A request the endpoint refuses: rendered by :func:`error`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error(status: int, code: str, message: str) -> Response:
    """The JSON error of the admin, feedback and review APIs: ``{"error": CODE, "message": ...}``."""
    return JSONResponse({"error": code, "message": message}, status, headers=NO_STORE)


#: the error of a part whose store cannot be reached now (the review queue's database).
STORE_UNAVAILABLE = "store_unavailable"


def unavailable(doc: dict, retry_after_s: float) -> Response:
    """``503`` with ``doc`` and ``Retry-After``: a store a part needs cannot be reached now."""
    return JSONResponse(doc, 503, headers={**NO_STORE, "Retry-After": str(max(1, round(retry_after_s)))})


def too_large(limit: int) -> Response:
    return error(413, "too_large", f"request body over {limit} bytes")


async def read_json(request: Request) -> dict:
    """The request's JSON object (its size already bounded by :class:`BodyLimit`), or
    :class:`BadRequest` saying what is wrong with it."""
    body = await request.body()
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "bad_request", "body must be a JSON object")
    return doc


def body_limit(
    limit: int, refuse: TooLarge = too_large
) -> Callable[[Callable[..., Awaitable]], Callable[..., Awaitable]]:
    """Declare that an endpoint takes bodies of up to ``limit`` bytes, refused with ``refuse(limit)``."""

    def decorate(endpoint: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        @functools.wraps(endpoint)
        async def bounded(*args):
            return await endpoint(*args)

        bounded.max_body = limit
        bounded.too_large = refuse
        return bounded

    return decorate


class _Over(Exception):
    """A chunked body went over its route's limit while the endpoint read it."""


class BodyLimit:
    """The ASGI middleware bounding every request body (see the module docstring).

    Args:
        app: the app inside.
        routes: the app's routes, searched for the route a request goes to.
        default: the limit of a route that declares none.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], default: int = MAX_BODY) -> None:
        self.app = app
        self.routes = routes
        self.default = default

    def _limit(self, scope: Scope) -> tuple[int, TooLarge]:
        for route in self.routes:
            match, _child = route.matches(scope)
            if match == Match.FULL:
                endpoint = getattr(route, "endpoint", None)
                return getattr(endpoint, "max_body", self.default), getattr(endpoint, "too_large", too_large)
        return self.default, too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, refuse = self._limit(scope)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await refuse(limit)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _Over
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except _Over:
            if started:  # the endpoint answered before it read it all: nothing more to say
                return
            await refuse(limit)(scope, receive, send)
