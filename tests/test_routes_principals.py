"""Every route of the server against every principal: a real server on 127.0.0.1 with the stream,
admin and reviewer tokens set and every part plugged in; each route of its app (read from the app,
so a new route cannot escape this) called with no token, each token and a wrong one. A caller
whose principal holds the scope the route declares gets anything but 401/403; one who does not
gets 401 or 403. The matrix is written as a markdown table (``pytest -s`` prints it; with
``SPEECHPIPE_WRITE_ROUTES=1`` it is written to docs/routes.md, which must list every route).

And the one body limit: a body over a route's limit is refused with 413 before it is read,
whether its size is announced (``Content-Length``) or not (chunked)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os

import pytest
from conftest import ROOT, SPEECH
from livehelp import ServerThread
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from speechpipe.pipeline.clients.client import stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.server.auth import Principals, accepted_scopes, required_scope
from speechpipe.pipeline.server.http import MAX_BODY
from speechpipe.pipeline.server.keys import AuthSettings

pytestmark = pytest.mark.corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
REFERENCE = " ".join(JFK.with_suffix(".txt").read_text().split())

STREAM, ADMIN, REVIEWER = "stream-secret", "admin-secret", "reviewer-secret"
ALICE, BOB, LABELER = "alice-secret", "bob-secret", "labeler-secret"
#: two stream keys (alice, bob) and a key trusted with feedback only, beside the legacy tokens
KEYS = AuthSettings(
    (
        {"name": "alice", "token": ALICE, "scopes": ["stream"]},
        {"name": "bob", "token": BOB, "scopes": ["stream"]},
        {"name": "labeler", "token": LABELER, "scopes": ["feedback"]},
    )
).keys
CALLERS = {
    "none": None,
    "wrong": "not-a-token",
    "stream": STREAM,
    "alice": ALICE,
    "bob": BOB,
    "feedback": LABELER,
    "reviewer": REVIEWER,
    "admin": ADMIN,
}
DOC = ROOT / "docs" / "routes.md"


def endpoints(app) -> list[tuple[str, str, str | None]]:
    """``(method, path, scope)`` of every route of ``app``: each HTTP method it takes (HEAD aside),
    ``WS`` for a WebSocket route."""
    found = []
    for route in app.routes:
        scope = required_scope(route.endpoint)
        if scope is not None:  # the declared scope, then any other the route also takes
            scope = "/".join([scope, *sorted(accepted_scopes(route.endpoint) - {scope})])
        if isinstance(route, WebSocketRoute):
            found.append(("WS", route.path, scope))
        elif isinstance(route, Route):
            found += [(m, route.path, scope) for m in sorted(route.methods or {"GET"}) if m != "HEAD"]
        else:  # a mount or a host would hide routes from this matrix
            pytest.fail(f"a route of a kind this test does not know: {route!r}")
    return found


def call_http(port: int, method: str, path: str, token: str | None, body: bytes = b"{}") -> int:
    """The status of one request (the headers only: an event stream never ends)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


async def call_ws(port: int, path: str, token: str | None) -> int:
    """101 when the handshake is accepted, else the status it was denied with."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, open_timeout=30):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def table(rows: list[tuple[str, str, str | None, dict[str, int]]]) -> str:
    head = "| route | scope | " + " | ".join(CALLERS) + " |"
    lines = [head, "|" + "---|" * (2 + len(CALLERS))]
    for method, path, scope, got in rows:
        cells = " | ".join(str(got[c]) for c in CALLERS)
        lines.append(f"| `{method} {path}` | {scope or 'open'} | {cells} |")
    return "\n".join(lines) + "\n"


def test_every_route_answers_each_principal_as_its_scope_says(engine, tmp_path):
    cfg = Config().with_overrides({"review.db": str(tmp_path / "reviews.db")})
    principals = Principals.from_tokens(stream=STREAM, admin=ADMIN, reviewer=REVIEWER, keys=KEYS)
    rows = []
    session_rows = []
    with ServerThread(engine, config=cfg, token=STREAM, admin_token=ADMIN, reviewer_token=REVIEWER, keys=KEYS) as srv:
        routes = endpoints(srv.server.app)
        for method, path, scope in routes:
            url = path.replace("{id}", "x")
            got = {}
            for caller, token in CALLERS.items():
                if method == "WS":
                    got[caller] = asyncio.run(call_ws(srv.server.port, url, token))
                else:
                    got[caller] = call_http(srv.server.port, method, url, token)
            rows.append((method, path, scope, got))
        # The session routes on a real session of alice's: her own, everyone else's someone else's.
        port = srv.server.port
        session = asyncio.run(stream_file(srv.url, JFK, speed=0, token=ALICE)).ready["session"]
        fb = json.dumps({"session": session, "text": REFERENCE}).encode()
        for method, path, call in (
            ("GET", "/v1/sessions/{id}", lambda t: call_http(port, "GET", f"/v1/sessions/{session}", t)),
            ("POST", "/v1/feedback", lambda t: call_http(port, "POST", "/v1/feedback", t, fb)),
        ):
            session_rows.append((method, path, "alice's session", {c: call(t) for c, t in CALLERS.items()}))
    text = table(rows) + "\n" + table(session_rows)
    (tmp_path / "routes.md").write_text(text)
    print("\n" + text)
    for method, path, scope, got in rows:
        for caller, token in CALLERS.items():
            accepted = set(scope.split("/")) if scope else None
            allowed = accepted is None or bool(accepted & principals.find(token).scopes)
            status = got[caller]
            if allowed:
                assert status not in (401, 403) and status < 500, (method, path, caller, status)
            else:
                assert status in (401, 403), (method, path, caller, status)
    # Alice's session: hers, the reviewer's and the admin's to see; bob and the legacy stream
    # principal get the 404 of an unknown session; without a scope the route refuses first.
    expected = {
        "GET": {"none": 401, "wrong": 401, "stream": 404, "alice": 200, "bob": 404, "feedback": 401},
        "POST": {"none": 401, "wrong": 401, "stream": 404, "alice": 200, "bob": 404, "feedback": 404},
    }
    for method, path, _, got in session_rows:
        assert {c: got[c] for c in expected[method]} == expected[method], (method, path, got)
        assert got["reviewer"] == 200, (method, path, got)
    # The admin token alone takes no feedback (it never did); it reads every session.
    assert session_rows[0][3]["admin"] == 200 and session_rows[1][3]["admin"] == 401
    # Every part's routes are there, each with the scope its feature needs.
    scopes = {(m, p): s.split("/")[0] if s else s for m, p, s in routes}
    assert scopes[("WS", "/stream")] == "stream" and scopes[("GET", "/healthz")] is None
    assert scopes[("POST", "/admin/deploy")] == "admin" and scopes[("GET", "/dashboard/state")] == "admin"
    assert scopes[("POST", "/v1/feedback")] == "feedback" and scopes[("POST", "/v1/audio/transcriptions")] == "stream"
    assert scopes[("POST", "/v1/review/claim")] == "review" and scopes[("GET", "/admin/drift")] == "admin"
    if os.environ.get("SPEECHPIPE_WRITE_ROUTES"):
        DOC.write_text(DOC_HEAD + text)
    listed = {line.split("`")[1] for line in DOC.read_text().splitlines() if line.startswith("| `")}
    assert listed == {f"{m} {p}" for m, p, _ in routes}, "docs/routes.md is stale: SPEECHPIPE_WRITE_ROUTES=1"


DOC_HEAD = """# Routes and who may call them

Written by `tests/test_routes_principals.py` (`SPEECHPIPE_WRITE_ROUTES=1 pytest -s
tests/test_routes_principals.py`): a server with the stream, admin and reviewer tokens set, three
keys (`alice` and `bob` with `stream`, `feedback` with the `feedback` scope only) and a review
queue, every route of its app called with no token, a wrong one, and each principal's. Each cell
is the HTTP status (101: a WebSocket accepted). A route's scope is what its endpoint declares,
then any other scope it also takes (`feedback/review/stream`: any of them). The stream token
holds `stream` and `feedback`, the admin token `admin`, the reviewer token `review`, a key
exactly what it lists. Allowed callers get what the request deserves (400 for the empty bodies
sent here, 404 for the unknown id `x`); the others 401, or 403 where no token grants the scope.
POST bodies are `{}`.

The second table: the session routes on a real session opened by `alice` (her feedback is the
true transcript). Her own session answers her; reviewers and admins see every session; anyone
else who may call the route gets 404, exactly as for a session that does not exist. The admin
token alone takes no feedback (its route needs `feedback`, `stream` or `review`). Feedback from a
principal without the `feedback`, `review` or `admin` scope (alice) is answered with
`"counted": false` and never reaches the canary's gates or drift.

"""


def test_every_body_is_bounded_before_it_is_read(engine):
    with ServerThread(engine, admin_token=ADMIN) as srv:
        port = srv.server.port
        headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}

        def post(path: str, body, chunked: bool = False) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", path, body=body, headers=headers, encode_chunked=chunked)
                r = conn.getresponse()
                return r.status, json.loads(r.read() or b"{}")
            finally:
                conn.close()

        # Announced: refused from its Content-Length, nothing read.
        status, body = post("/admin/deploy", b" " * (MAX_BODY + 1))
        assert status == 413 and body["error"] == "too_large"
        # Chunked: counted as it comes, refused once over.
        chunks = iter([b" " * 16384] * 5)
        status, body = post("/v1/feedback", chunks, chunked=True)
        assert status == 413 and body["error"] == "too_large"
        # Up to the limit it goes through to the endpoint (which finds the JSON wanting).
        status, body = post("/admin/deploy", b"{}" + b" " * (MAX_BODY - 2))
        assert status == 400 and body["error"] == "bad_action"
