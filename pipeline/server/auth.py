"""Who is calling, and what they may do: principals with scopes, found by one authentication
backend (Starlette's :class:`~starlette.middleware.authentication.AuthenticationMiddleware`), and
the scope each route declares (:func:`requires`).

Scopes: ``stream`` (open live streams, the OpenAI routes, read its own sessions, send client
feedback on them), ``feedback`` (send human references that count: they move the canary's gates,
drift and review WER), ``review`` (the review API and page, every session), ``admin`` (the admin
API and the dashboard, every session). Principals come from the ``[auth]`` table's named keys
(:mod:`.keys`: exactly the scopes each lists) and from the server's tokens, with the rights they
always had:

* the stream token: principal ``stream``, scopes ``stream`` and ``feedback``;
* the admin token: ``admin``; the reviewer token: ``reviewer``, scope ``review``;
* without a stream token or a key with ``stream``, every caller (whatever token it sends, or
  none) has ``stream`` and ``feedback``: the anonymous scopes are a floor every principal
  stands on.

A session belongs to the principal that opened it (:class:`SessionOwners`): its routes answer its
owner, reviewers and admins, and 404 to anyone else, exactly as for a session that does not exist.
Tokens are kept and compared as sha256 digests; none is ever logged.

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
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket

from speechpipe.pipeline.config import ConfigError
from speechpipe.pipeline.server.keys import KEY_SCOPES, ApiKey, token_digest

STREAM, FEEDBACK, REVIEW, ADMIN = "stream", "feedback", "review", "admin"
SCOPES = KEY_SCOPES  # the scopes a key may list are all there are

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
    """The principals a server knows, by the sha256 of their token, and the scopes of anyone else.

    Only digests are kept: a presented token is hashed and compared with every digest in constant
    time (:func:`hmac.compare_digest`, no early exit), so neither the tokens nor how much of one
    matched can leak through memory dumps, logs or timing.

    Attributes:
        digests: each token's sha256 (hex) and the principal it stands for.
        anonymous: the scopes every caller has.
    """

    digests: dict[str, Principal] = field(default_factory=dict)
    anonymous: frozenset[str] = frozenset({STREAM, FEEDBACK})

    @classmethod
    def from_tokens(
        cls,
        stream: str | None = None,
        admin: str | None = None,
        reviewer: str | None = None,
        keys: Iterable[ApiKey] = (),
    ) -> Principals:
        """The principals of the server's three tokens (None or empty: that token is not set)
        and of the named ``keys`` (the ``[auth]`` table). Raises :class:`ConfigError` when two
        of them share a token: a token must say who it is.

        The legacy tokens keep their rights: the stream token ``stream`` and ``feedback`` (so
        its holders' feedback counts, as it always did), the admin token ``admin``, the
        reviewer token ``review``. A key gets exactly the scopes it lists. Streams are open to
        anyone (the anonymous floor: ``stream`` and ``feedback``) only while neither the
        stream token nor any key with the ``stream`` scope is set."""
        keys = tuple(keys)
        given = [t for t in (stream, admin, reviewer) if t]
        if len(set(given)) < len(given):
            raise ConfigError("the admin and reviewer tokens must differ from each other and from the stream token")
        closed = bool(stream) or any(STREAM in k.scopes for k in keys)
        anonymous = frozenset() if closed else frozenset({STREAM, FEEDBACK})
        digests: dict[str, Principal] = {}
        entries = [
            (token_digest(token), name, scopes)
            for token, name, scopes in (
                (stream, "stream", {STREAM, FEEDBACK}),
                (admin, "admin", {ADMIN}),
                (reviewer, "reviewer", {REVIEW}),
            )
            if token
        ] + [(k.token_sha256, k.name, set(k.scopes)) for k in keys]
        for digest, name, scopes in entries:
            if digest in digests:
                raise ConfigError(f"the key {name!r} has the same token as {digests[digest].name!r}")
            if any(p.name == name for p in digests.values()):
                raise ConfigError(f"two principals are named {name!r}: names must be unique")
            digests[digest] = Principal(name, frozenset(scopes) | anonymous)
        return cls(digests, anonymous)

    def find(self, token: str | None) -> Principal:
        """The principal of ``token`` (its digest compared with every known one in constant
        time), else the anonymous one."""
        found = None
        if token:
            presented = token_digest(token)
            for known, principal in self.digests.items():
                if hmac.compare_digest(presented, known):  # hex digests: ASCII, as compare_digest needs
                    found = principal
        return found or Principal("anonymous", self.anonymous)

    def grants(self, scope: str) -> bool:
        """Whether anyone can hold ``scope`` (a token grants it, or everyone has it)."""
        return scope in self.anonymous or any(scope in p.scopes for p in self.digests.values())

    def describe(self, principal: Principal) -> dict:
        """What ``GET /v1/whoami`` tells a caller about itself: its principal's name and scopes,
        whether it may open a stream, and whether streaming needs a token at all on this server.
        A client asks before it connects: a WebSocket refused for its token closes with 1006 in a
        browser, which cannot read the 401, so only this says why."""
        return {
            "principal": principal.name,
            "authenticated": principal.is_authenticated,
            "scopes": sorted(principal.scopes),
            "stream": STREAM in principal.scopes,
            "stream_token_required": STREAM not in self.anonymous,
        }


# -- sessions belong to who opened them ---------------------------------------------------------


class SessionOwners:
    """Which principal opened each recent session (its name), the one record of it: the server
    notes every stream it serves (WebSocket, realtime, upload) and the session routes ask.

    Bounded: the last ``max_sessions`` sessions. An older one, or one from before a restart
    (this record lives in memory), has no owner here: a route that keeps owners with its data
    (the review store does, with each item) passes the stored one to :meth:`may_see`.
    """

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._owners: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()  # streams open on the event loop, uploads too; cheap anyway

    def record(self, session: str, principal: str | None) -> None:
        with self._lock:
            self._owners[session] = principal
            while len(self._owners) > self.max_sessions:
                self._owners.popitem(last=False)

    def owner(self, session: str) -> str | None:
        with self._lock:
            return self._owners.get(session)

    def may_see(self, session: str, conn: HTTPConnection, stored: str | None = None) -> bool:
        """Whether the caller of ``conn`` may see ``session``: its owner (as recorded here, else
        ``stored``, the owner a store kept with the session), or a principal with the ``review``
        or ``admin`` scope. Anyone else must be answered as if it did not exist."""
        if conn.auth.scopes and ({REVIEW, ADMIN} & set(conn.auth.scopes)):
            return True
        owner = self.owner(session) or stored
        return owner is not None and owner == conn.user.display_name


def sees_everything(conn: HTTPConnection) -> bool:
    """Whether the caller holds ``review`` or ``admin``: it sees every variant's text of a session."""
    return bool({REVIEW, ADMIN} & set(conn.auth.scopes))


def trusted(conn: HTTPConnection) -> bool:
    """Whether the caller's feedback counts (moves gates, drift, review WER): ``feedback``,
    ``review`` or ``admin`` scope. A caller with ``stream`` only is a client: its feedback is kept
    apart."""
    return bool({FEEDBACK, REVIEW, ADMIN} & set(conn.auth.scopes))


#: a token where a log line might carry one: a bearer header, the token header, a ``token=`` query
_TOKEN_IN_TEXT = re.compile(r"(?i)(bearer\s+|x-speechpipe-token:\s*|[?&]token=)[^\s&'\"]+")


class RedactTokens(logging.Filter):
    """Replaces any token in a log record by ``[redacted]``. The WebSocket implementation under
    uvicorn logs every handshake's headers at debug level (``Authorization: Bearer ...``
    included), and uvicorn's access log every path (``?token=...``): installed on their loggers
    (:func:`redact_tokens_in_logs`), no token reaches a log whatever the level."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = _TOKEN_IN_TEXT.sub(lambda m: m.group(1) + "[redacted]", text)
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


#: the loggers that may see a request's headers or query: uvicorn's and the WebSocket library's
_REQUEST_LOGGERS = ("uvicorn.error", "uvicorn.access", "websockets.server", "websockets")


def redact_tokens_in_logs() -> None:
    """Install :class:`RedactTokens` on the loggers that see requests (once)."""
    for name in _REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


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


def requires(
    scope: str, refuse: Refusal = refusal, *, also: tuple[str, ...] = ()
) -> Callable[[Callable[..., Awaitable]], Callable[..., Awaitable]]:
    """Declare that an endpoint (a function or method taking a request or a WebSocket last) needs
    ``scope`` (or any of ``also``: a session route its owner calls with ``stream`` and a reviewer
    with ``review``). A caller without any gets ``refuse``'s answer (a WebSocket, as its
    handshake's denial) and the endpoint does not run. The scopes are kept on the endpoint
    (``required_scope``, ``accepted_scopes``): the route x principal matrix
    (tests/test_routes_principals.py) reads them."""
    accepted = frozenset((scope, *also))
    if not accepted <= set(SCOPES):
        raise ValueError(f"unknown scope in {sorted(accepted)}")

    def decorate(endpoint: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        @functools.wraps(endpoint)
        async def guarded(*args):
            conn: HTTPConnection = args[-1]
            if not accepted & set(conn.auth.scopes):
                principals: Principals = conn.app.state.principals
                denied = refuse(conn, scope, any(principals.grants(s) for s in accepted))
                if isinstance(conn, WebSocket):
                    await conn.send_denial_response(denied)
                    return None
                return denied
            return await endpoint(*args)

        guarded.required_scope = scope
        guarded.accepted_scopes = accepted
        return guarded

    return decorate


def required_scope(endpoint: object) -> str | None:
    """The scope an endpoint declared (None: open to everyone)."""
    return getattr(endpoint, "required_scope", None)


def accepted_scopes(endpoint: object) -> frozenset[str] | None:
    """Every scope that lets a caller in (None: open to everyone)."""
    return getattr(endpoint, "accepted_scopes", None)
