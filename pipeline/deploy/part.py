"""The deployment as a part of the live server: the admin API, human feedback, the gates judged
at each tick, and the observer that feeds each routed stream's finals to the ledger.

* ``GET /admin/deploy``: the deploy state (mode, variants with role, weight, streams and config
  id, step, state, history).
* ``POST /admin/deploy``: an action, ``{"action": "switch", "active": NAME}``, ``{"action":
  "rollback"}``, ``{"action": "promote"}``, ``{"action": "revert"}`` (after a promotion: back to
  the previous primary), ``{"action": "set_weight", "variant": NAME, "weight": 0.25}``,
  ``{"action": "pause"}`` or ``{"action": "resume"}``; answers the change and the state.
* ``GET /admin/deploy/feedback?after=SEQ&limit=N&session=ID``: the feedback kept in the state
  store (``seq``, ``at``, ``session``, ``segment``, ``principal``, ``counted``, ``text`` and each
  variant's ``scores`` with its hypothesis), oldest first after ``after``; ``unsaved``: how many
  accepted ones still wait for the store to take them.
* ``POST /v1/feedback``: ``{"session": ID, "segment": N?, "text": "..."}``, a human reference
  scored against every variant that transcribed that audio. Answered to the session's owner (the
  principal that opened it), reviewers and admins; anyone else gets the 404 of an unknown
  session. The owner sees its own variant's score and text, a reviewer or admin every variant's.
  ``"counted"`` says whether it moved the figures: only feedback from a principal with the
  ``feedback``, ``review`` or ``admin`` scope does (gates, drift); a client's with ``stream``
  only is kept apart as client feedback (``"feedback": {"counted", "client"}`` of the deploy
  state, :class:`~speechpipe.pipeline.deploy.deployment.ClientFeedback` events). Every accepted
  feedback is kept in the deploy state store (``"saved"`` says it is written; while the store
  cannot be written it waits in memory, in order, and is written at the next tick that can; past
  :data:`~speechpipe.pipeline.deploy.deployment.MAX_UNSAVED_FEEDBACK` waiting, feedback is refused
  with 503 and ``Retry-After``).

The admin routes need the ``admin`` scope (the admin token; without one configured they answer
403, with a missing or wrong one 401), feedback the ``feedback`` scope, or ``stream`` (client
feedback) or ``review`` (the stream token holds ``stream`` and ``feedback``; open when streams
are). The deployment itself is the server's (it routes every stream); it is given in
the :class:`~speechpipe.pipeline.server.parts.ServerContext`.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.deploy import DeployError
from speechpipe.pipeline.deploy.deployment import Deployment, FeedbackBacklog
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.server.auth import (
    ADMIN,
    FEEDBACK,
    NO_STORE,
    REVIEW,
    STREAM,
    SessionOwners,
    requires,
    sees_everything,
    trusted,
)
from speechpipe.pipeline.server.http import STORE_UNAVAILABLE, BadRequest, error, read_json, unavailable
from speechpipe.pipeline.server.parts import Part, ServerContext, StreamInfo

log = logging.getLogger("speechpipe.deploy")

#: what a refused feedback is told to wait (the state store is retried at every tick).
RETRY_AFTER_S = 5.0


class DeployPart(Part):
    """See the module docstring."""

    name = "deploy"

    def __init__(self) -> None:
        self.deployment: Deployment | None = None
        self.owners = SessionOwners()  # the server's, once started

    async def start(self, ctx: ServerContext) -> None:
        self.deployment = ctx.deployment
        self.owners = ctx.owners

    def observers(self, stream: StreamInfo) -> list[Observer]:
        # a stream that named its variant is not the deployment's traffic: its gates compare routed ones
        if self.deployment is None or not stream.routed:
            return []
        return [self.deployment.observer(stream.stream_id, stream.variant)]

    async def tick(self, now: float) -> None:
        if self.deployment is not None:
            if self.deployment.replicator is None:
                self.deployment.tick()
            else:  # its store is another machine: off the event loop
                await asyncio.to_thread(self.deployment.tick)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/deploy", self.state, methods=["GET"]),
            Route("/admin/deploy", self.act, methods=["POST"]),
            Route("/admin/deploy/feedback", self.stored_feedback, methods=["GET"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
        ]

    def _loaded(self) -> Deployment:
        if self.deployment is None:
            raise BadRequest(503, "not_ready", "the pipeline variants are still loading")
        return self.deployment

    @requires(ADMIN)
    async def state(self, request: Request) -> Response:
        try:
            return JSONResponse(self._loaded().snapshot(), headers=NO_STORE)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)

    @requires(ADMIN)
    async def act(self, request: Request) -> Response:
        try:
            dep = self._loaded()
            action = await read_json(request)
            reason = action.pop("reason", None) or "admin"
            if not isinstance(reason, str):
                raise BadRequest(400, "bad_request", "reason must be a string")
            reason = f"admin: {reason}" if reason != "admin" else reason
            change = (
                dep.apply(action, reason=reason) if dep.replicator is None else await _shared_apply(dep, action, reason)
            )
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        except DeployError as exc:
            return error(400, "bad_action", str(exc))
        except StoreDown as exc:
            message = f"the shared deploy state cannot be written now ({exc}); nothing was changed"
            return unavailable({"error": STORE_UNAVAILABLE, "message": message}, RETRY_AFTER_S)
        return JSONResponse({"change": change.to_dict(), "deploy": dep.snapshot()}, headers=NO_STORE)

    @requires(ADMIN)
    async def stored_feedback(self, request: Request) -> Response:
        try:
            dep = self._loaded()
            after = _whole(request.query_params.get("after", "0"), "after")
            limit = min(_whole(request.query_params.get("limit", "1000"), "limit"), 10_000)
            session = request.query_params.get("session") or None
            rows = await asyncio.to_thread(dep.stored_feedback, after, limit, session)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        return JSONResponse({"feedback": rows, "unsaved": dep.unsaved_feedback()}, headers=NO_STORE)

    @requires(FEEDBACK, also=(STREAM, REVIEW))
    async def feedback(self, request: Request) -> Response:
        try:
            dep = self._loaded()
            session, segment, text = _feedback_fields(await read_json(request))
            if dep.replicator is not None:  # a session another replica served: its record from the store
                try:
                    await asyncio.to_thread(dep.fetch_session, session)
                except Exception as exc:  # noqa: BLE001  # the store is down: this request only
                    message = f"the shared session ledger cannot be read now ({type(exc).__name__})"
                    return unavailable({"error": STORE_UNAVAILABLE, "message": message}, RETRY_AFTER_S)
            # Someone else's session is answered exactly like one that does not exist.
            if not self.owners.may_see(session, request, stored=dep.session_owner(session)):
                raise KeyError(dep.unknown_session(session))
            counted = trusted(request)
            principal = request.user.display_name
            feedback = functools.partial(
                dep.feedback, session, segment, text, counted=counted, keep=True, principal=principal
            )
            scores = feedback() if dep.replicator is None else await asyncio.to_thread(feedback)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        except KeyError as exc:
            return error(404, "unknown_session", str(exc.args[0]))
        except FeedbackBacklog as exc:
            return unavailable({"error": STORE_UNAVAILABLE, "message": str(exc)}, RETRY_AFTER_S)
        if not sees_everything(request):  # the owner sees its own transcript, never another variant's
            scores = [s for s in scores if s.role != "shadow"]
        body = {
            "session": session,
            "segment": segment,
            "counted": counted,
            "saved": dep.feedback_saved(),
            "scores": {
                s.variant: {"role": s.role, "wer": s.wer, "errors": s.errors, "words": s.words, "text": s.hypothesis}
                for s in scores
            },
        }
        return JSONResponse(body, headers=NO_STORE)


class StoreDown(Exception):
    """The shared deploy store failed under an admin action (nothing was changed)."""


async def _shared_apply(dep: Deployment, action: dict, reason: str):
    """An admin action made on the shared store, in a transaction, off the event loop."""
    try:
        return await asyncio.to_thread(dep.apply, action, reason)
    except DeployError:
        raise
    except Exception as exc:  # the store is down or refused: this action only
        log.warning("admin action not made: the deploy store failed: %s", exc)
        raise StoreDown(type(exc).__name__) from exc


def _whole(value: str, name: str) -> int:
    if not value.isdigit():
        raise BadRequest(400, "bad_request", f"{name} must be a whole number")
    return int(value)


def _feedback_fields(doc: dict) -> tuple[str, int | None, str]:
    """``(session, segment, text)`` of a feedback body, checked."""
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
    return session, segment, text
