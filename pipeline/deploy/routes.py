"""The admin API and human feedback, JSON in and out.

* ``GET /admin/deploy``: the deploy state (mode, variants with role, weight, streams and config
  id, step, state, history).
* ``POST /admin/deploy``: an action, ``{"action": "switch", "active": NAME}``, ``{"action":
  "rollback"}``, ``{"action": "promote"}``, ``{"action": "set_weight", "variant": NAME, "weight":
  0.25}``, ``{"action": "pause"}`` or ``{"action": "resume"}``; answers the change and the state.
* ``GET /admin/drift``: drift of each variant's recent segments from the baseline,
  ``{"variants": {NAME: {"features": {FEATURE: {"score", "threshold", "alert", "n"}}}}}``.
* ``POST /v1/feedback``: ``{"session": ID, "segment": N?, "text": "..."}``, a human reference
  scored against every variant that transcribed that audio.
* ``/dashboard`` and its data (:mod:`speechpipe.pipeline.dashboard.routes`).

The admin routes take the admin token (``Authorization: Bearer``, or ``?token=``): without one
configured they answer 403, with a missing or wrong one 401. Feedback takes the stream token (open
when streams are).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.dashboard.routes import dashboard_routes
from speechpipe.pipeline.dashboard.state import DashboardState
from speechpipe.pipeline.deploy import DeployError
from speechpipe.pipeline.deploy.deployment import Deployment
from speechpipe.pipeline.monitoring.service import DriftService
from speechpipe.pipeline.review.service import ReviewService
from speechpipe.pipeline.server.app import NO_STORE, bearer_token, token_matches, unauthorized

#: the largest request body accepted (a feedback text, an admin action).
MAX_BODY = 64 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status, headers=NO_STORE)


async def read_json(request: Request) -> dict:
    """The request's JSON object, or :class:`BadRequest` saying what is wrong with it."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(413, "too_large", f"request body over {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "bad_request", "body must be a JSON object")
    return doc


def admin_routes(
    *,
    admin_token: str | None,
    stream_token: str | None,
    deployment: Callable[[], Deployment | None],
    drift: Callable[[], DriftService | None] = lambda: None,
    metrics: Callable[[], tuple[bytes, str]] = lambda: (b"", "text/plain"),
    closing: Callable[[], bool] = lambda: False,
    review: Callable[[], ReviewService | None] = lambda: None,
) -> list[BaseRoute]:
    """The routes, on the server's deployment (None while the variants load: 503), with the
    dashboard's (:mod:`speechpipe.pipeline.dashboard.routes`) on ``metrics``, the deployment and drift."""

    def admin_refusal(request: Request) -> Response | None:
        if not admin_token:
            return error(403, "forbidden", "the admin API is off: start the server with --admin-token")
        if not token_matches(bearer_token(request), admin_token):
            return unauthorized("missing or wrong admin token\n")
        return None

    def loaded() -> Deployment:
        dep = deployment()
        if dep is None:
            raise BadRequest(503, "not_ready", "the pipeline variants are still loading")
        return dep

    async def deploy_state(request: Request) -> Response:
        if (refused := admin_refusal(request)) is not None:
            return refused
        try:
            return JSONResponse(loaded().snapshot(), headers=NO_STORE)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)

    async def deploy_action(request: Request) -> Response:
        if (refused := admin_refusal(request)) is not None:
            return refused
        try:
            dep = loaded()
            action = await read_json(request)
            reason = action.pop("reason", None) or "admin"
            if not isinstance(reason, str):
                raise BadRequest(400, "bad_request", "reason must be a string")
            change = dep.apply(action, reason=f"admin: {reason}" if reason != "admin" else reason)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        except DeployError as exc:
            return error(400, "bad_action", str(exc))
        return JSONResponse({"change": change.to_dict(), "deploy": dep.snapshot()}, headers=NO_STORE)

    async def feedback(request: Request) -> Response:
        if stream_token and not token_matches(bearer_token(request), stream_token):
            return unauthorized()
        try:
            dep = loaded()
            doc = await read_json(request)
            session, segment, text = doc.get("session"), doc.get("segment"), doc.get("text")
            unknown = sorted(set(doc) - {"session", "segment", "text"})
            if unknown:
                raise BadRequest(400, "bad_request", f"unknown field(s): {', '.join(unknown)}")
            if not isinstance(session, str) or not session:
                raise BadRequest(400, "bad_request", "session must be the stream id given in ready")
            if segment is not None and (isinstance(segment, bool) or not isinstance(segment, int) or segment < 0):
                raise BadRequest(400, "bad_request", "segment must be a segment index (a whole number)")
            if not isinstance(text, str):
                raise BadRequest(400, "bad_request", "text must be a string (the human transcript)")
            scores = dep.feedback(session, segment, text)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        except KeyError as exc:
            return error(404, "unknown_session", str(exc.args[0]))
        body = {
            "session": session,
            "segment": segment,
            "scores": {
                s.variant: {"role": s.role, "wer": s.wer, "errors": s.errors, "words": s.words, "text": s.hypothesis}
                for s in scores
            },
        }
        return JSONResponse(body, headers=NO_STORE)

    async def drift_state(request: Request) -> Response:
        if (refused := admin_refusal(request)) is not None:
            return refused
        service = drift()
        if service is None:
            return error(404, "no_baseline", "drift monitoring is off: start the server with --baseline")
        return JSONResponse(service.snapshot(), headers=NO_STORE)

    def drift_figures() -> tuple[dict, dict] | None:
        service = drift()
        return None if service is None else (service.snapshot(), service.histograms())

    def review_figures() -> dict | None:
        service = review()
        return None if service is None else service.dashboard()

    board = DashboardState(
        metrics, lambda: dep.snapshot() if (dep := deployment()) else None, drift_figures, review_figures
    )
    return [
        *dashboard_routes(board, admin_refusal, closing),
        Route("/admin/drift", drift_state, methods=["GET"]),
        Route("/admin/deploy", deploy_state, methods=["GET"]),
        Route("/admin/deploy", deploy_action, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
    ]
