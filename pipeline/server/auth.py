"""Who is calling, and what they may do: principals with scopes, found by one authentication
backend (Starlette's :class:`~starlette.middleware.authentication.AuthenticationMiddleware`), and
the scope each route declares (:func:`requires`).

Scopes: ``stream`` (open live streams, the OpenAI routes, read a session's revisions),
``feedback`` (send human references), ``review`` (the review API and page), ``admin`` (the admin
API and the dashboard). The server's tokens become principals with the rights they always had:

* the stream token: ``stream`` and ``feedback``;
* the admin token: ``admin``; the reviewer token: ``review``;
* without a stream token, every caller (whatever token it sends, or none) has ``stream`` and
  ``feedback``: the anonymous scopes are a floor every principal stands on.

A request carries its token as ``Authorization: Bearer TOKEN``, as ``X-Speechpipe-Token: TOKEN``
or as ``?token=TOKEN`` (browsers cannot set headers on a WebSocket or an ``EventSource``). A token
nobody was given is not an error at this point: its caller is anonymous, and a route that needs
more answers 401. So ``/healthz`` stays open to a client with a stale token.

A route refused for want of a scope answers 401 with ``WWW-Authenticate`` when some token grants
the scope (the caller has the wrong one, or none), and 403 ``forbidden`` when none does (the
feature is off: start the server with its token). Features whose clients expect another shape
(the OpenAI API, the WebSocket handshake) give :func:`requires` their own refusal.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket

from speechpipe.pipeline.config import ConfigError

STREAM, FEEDBACK, REVIEW, ADMIN = "stream", "feedback", "review", "admin"
SCOPES = (STREAM, FEEDBACK, REVIEW, ADMIN)

#: the header a client may carry its token in, besides ``Authorization: Bearer``.
TOKEN_HEADER = "x-speechpipe-token"

NO_STORE = {"Cache-Control": "no-store"}

#: what a refused caller is told, by scope: the 401's text, and the 403's when no token grants it.
_WRONG = {
    STREAM: "missing or wrong token\n",
    FEEDBACK: "missing or wrong token\n",
    REVIEW: "missing or wrong reviewer token\n",
    ADMIN: "missing or wrong admin token\n",
}
_OFF = {
    REVIEW: "the review API is off: start the server with --reviewer-token",
    ADMIN: "the admin API is off: start the server with --admin-token",
}


@dataclass(frozen=True)
class Principal(BaseUser):
    """Who a request is: ``name`` (``stream``, ``admin``, ``reviewer`` or ``anonymous``) and the
    scopes it holds (the anonymous ones included)."""

    name: str
    scopes: frozenset[str]

    @property
    def is_authenticated(self) -> bool:
        return self.name != "anonymous"

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.name


@dataclass(frozen=True)
class Principals:
    """The principals a server knows, by token, and the scopes of anyone else.

    Attributes:
        tokens: each token and the principal it stands for.
        anonymous: the scopes every caller has.
    """

    tokens: dict[str, Principal] = field(default_factory=dict)
    anonymous: frozenset[str] = frozenset({STREAM, FEEDBACK})

    @classmethod
    def from_tokens(
        cls, stream: str | None = None, admin: str | None = None, reviewer: str | None = None
    ) -> Principals:
        """The principals of the server's three tokens (None or empty: that token is not set).
        Raises :class:`ConfigError` when two of them are the same: a token must say who it is."""
        given = [t for t in (stream, admin, reviewer) if t]
        if len(set(given)) < len(given):
            raise ConfigError("the admin and reviewer tokens must differ from each other and from the stream token")
        anonymous = frozenset() if stream else frozenset({STREAM, FEEDBACK})
        tokens = {}
        for token, name, scopes in (
            (stream, "stream", {STREAM, FEEDBACK}),
            (admin, "admin", {ADMIN}),
            (reviewer, "reviewer", {REVIEW}),
        ):
            if token:
                tokens[token] = Principal(name, frozenset(scopes) | anonymous)
        return cls(tokens, anonymous)

    def find(self, token: str | None) -> Principal:
        """The principal of ``token`` (compared in constant time), else the anonymous one."""
        found = None
        if token:
            for known, principal in self.tokens.items():
                if hmac.compare_digest(token.encode(), known.encode()):
                    found = principal
        return found or Principal("anonymous", self.anonymous)

    def grants(self, scope: str) -> bool:
        """Whether anyone can hold ``scope`` (a token grants it, or everyone has it)."""
        return scope in self.anonymous or any(scope in p.scopes for p in self.tokens.values())


def request_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, the token header, else ``?token=``."""
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.headers.get(TOKEN_HEADER) or conn.query_params.get("token")


class TokenBackend(AuthenticationBackend):
    """Maps a request's token to its principal (see the module docstring)."""

    def __init__(self, principals: Principals) -> None:
        self.principals = principals

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Principal]:
        principal = self.principals.find(request_token(conn))
        return AuthCredentials(sorted(principal.scopes)), principal


# -- routes declare their scope -----------------------------------------------------------------

#: builds the answer to a caller without the scope: ``(connection, scope, granted)``, where
#: ``granted`` says some principal holds it (401) or none does (403: the feature is off).
Refusal = Callable[[HTTPConnection, str, bool], Response]


def unauthorized(message: str = _WRONG[STREAM]) -> Response:
    return PlainTextResponse(message, 401, headers={"WWW-Authenticate": 'Bearer realm="speechpipe"', **NO_STORE})


def refusal(conn: HTTPConnection, scope: str, granted: bool) -> Response:
    """The usual refusal: 401 with ``WWW-Authenticate``, or 403 ``forbidden`` when no token grants
    the scope."""
    if not granted and scope in _OFF:
        return JSONResponse({"error": "forbidden", "message": _OFF[scope]}, 403, headers=NO_STORE)
    return unauthorized(_WRONG[scope])


def requires(scope: str, refuse: Refusal = refusal) -> Callable[[Callable[..., Awaitable]], Callable[..., Awaitable]]:
    """Declare that an endpoint (a function or method taking a request or a WebSocket last) needs
    ``scope``. A caller without it gets ``refuse``'s answer (a WebSocket, as its handshake's
    denial) and the endpoint does not run. The scope is kept on the endpoint as
    ``required_scope``: the route x principal matrix (tests/test_routes_principals.py) reads it."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(endpoint: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        @functools.wraps(endpoint)
        async def guarded(*args):
            conn: HTTPConnection = args[-1]
            if scope not in conn.auth.scopes:
                principals: Principals = conn.app.state.principals
                denied = refuse(conn, scope, principals.grants(scope))
                if isinstance(conn, WebSocket):
                    await conn.send_denial_response(denied)
                    return None
                return denied
            return await endpoint(*args)

        guarded.required_scope = scope
        return guarded

    return decorate


def required_scope(endpoint: object) -> str | None:
    """The scope an endpoint declared (None: open to everyone)."""
    return getattr(endpoint, "required_scope", None)
