"""The review API, the review page and a session's revisions (docs/review.md).

Reviewer token (``--reviewer-token`` / ``SPEECHPIPE_REVIEWER_TOKEN``; ``Authorization: Bearer`` or
``?token=``; without one configured the routes answer 403):

* ``POST /v1/review/claim`` (``{"reviewer": NAME}`` optional): the next item, claimed, as
  ``{"id", "session", "segment", "audio_url", "draft", "confidence", "claimed_until", "claim", ...}``;
  204 when the queue is empty.
* ``GET /v1/review/{id}/audio``: the segment's audio (FLAC).
* ``POST /v1/review/{id}`` ``{"text": "...", "claim"?: CLAIM}``: the human transcript.
* ``POST /v1/review/{id}/release``: back to the queue.
* ``GET /v1/review/stats``: queue length, oldest age, done, per-variant human-vs-AI WER.
* ``GET /v1/review/queue``: what waits, in the order claims take it.
* ``GET /review``: the page.

Stream token: ``GET /v1/sessions/{id}``, the session's segments sent to review with their
revisions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from importlib import resources

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.deploy.routes import BadRequest, error, read_json
from speechpipe.pipeline.review.service import ReviewService
from speechpipe.pipeline.review.store import MAX_TEXT, Item, ReviewError
from speechpipe.pipeline.server.app import NO_STORE, bearer_token, token_matches, unauthorized

MAX_NAME = 128


def item_doc(item: Item) -> dict:
    """An item as the API shows it."""
    doc = asdict(item)
    doc["audio_url"] = f"/v1/review/{item.id}/audio" if item.audio else None
    doc["start"], doc["end"] = doc.pop("start_s"), doc.pop("end_s")
    return doc


def review_routes(
    *, reviewer_token: str | None, stream_token: str | None, service: Callable[[], ReviewService | None]
) -> list[BaseRoute]:
    """The routes on the server's review service (None: no review queue configured, 404)."""

    def guarded(handler: Callable) -> Callable:
        async def route(request: Request) -> Response:
            if not reviewer_token:
                return error(403, "forbidden", "the review API is off: start the server with --reviewer-token")
            if not token_matches(bearer_token(request), reviewer_token):
                return unauthorized("missing or wrong reviewer token\n")
            svc = service()
            if svc is None:
                return error(404, "no_review_queue", "this server has no review queue: set [review] db")
            try:
                return await handler(request, svc)
            except BadRequest as exc:
                return error(exc.status, exc.code, exc.message)
            except ReviewError as exc:
                return error(exc.status, exc.code, exc.message)

        return route

    async def optional_json(request: Request) -> dict:
        if not (await request.body()).strip():
            return {}
        return await read_json(request)

    def reviewer_of(request: Request, doc: dict) -> str:
        name = doc.get("reviewer", request.headers.get("x-reviewer", "reviewer"))
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise BadRequest(400, "bad_request", f"reviewer must be a name of 1-{MAX_NAME} characters")
        return name

    def claim_of(doc: dict) -> str | None:
        claim = doc.get("claim")
        if claim is not None and not isinstance(claim, str):
            raise BadRequest(400, "bad_request", "claim must be the string the claim returned")
        return claim

    async def claim(request: Request, svc: ReviewService) -> Response:
        item = await svc.claim(reviewer_of(request, await optional_json(request)))
        if item is None:
            return Response(status_code=204, headers=NO_STORE)
        return JSONResponse(item_doc(item), headers=NO_STORE)

    async def submit(request: Request, svc: ReviewService) -> Response:
        doc = await read_json(request)
        text = doc.get("text")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise BadRequest(
                400, "bad_request", f"text must be the transcript, a string of at most {MAX_TEXT} characters"
            )
        item = await svc.submit(request.path_params["id"], text.strip(), claim_of(doc), reviewer_of(request, doc))
        return JSONResponse(item_doc(item), headers=NO_STORE)

    async def release(request: Request, svc: ReviewService) -> Response:
        item = await svc.release(request.path_params["id"], claim_of(await optional_json(request)))
        return JSONResponse(item_doc(item), headers=NO_STORE)

    async def audio(request: Request, svc: ReviewService) -> Response:
        item = svc.store.get(request.path_params["id"])
        path = svc.store.audio_path(item) if item is not None else None
        if path is None or not path.is_file():
            return error(404, "not_found", "no audio for this item (unknown, or past the retention period)")
        return FileResponse(path, media_type="audio/flac", headers=NO_STORE)

    async def stats(request: Request, svc: ReviewService) -> Response:
        figures = await svc.stats()
        return JSONResponse(figures, headers=NO_STORE)

    async def queue(request: Request, svc: ReviewService) -> Response:
        items = await svc.queue()
        return JSONResponse({"items": [item_doc(i) for i in items]}, headers=NO_STORE)

    async def page(request: Request, svc: ReviewService) -> Response:
        body = resources.files("speechpipe.pipeline").joinpath("web", "review.html").read_bytes()
        return Response(body, headers={"Content-Type": "text/html; charset=utf-8", **NO_STORE})

    async def session(request: Request) -> Response:
        if stream_token and not token_matches(bearer_token(request), stream_token):
            return unauthorized()
        svc = service()
        if svc is None:
            return error(404, "no_review_queue", "this server has no review queue: set [review] db")
        items = await svc.session(request.path_params["id"])
        segments = [
            {
                "segment": i.segment,
                "start": i.start_s,
                "end": i.end_s,
                "state": i.state,
                "review": "done" if i.state == "done" else "pending",
                "text": i.text,
                "by": "human" if i.state == "done" else None,
            }
            for i in items
        ]
        return JSONResponse({"session": request.path_params["id"], "segments": segments}, headers=NO_STORE)

    return [
        Route("/v1/review/claim", guarded(claim), methods=["POST"]),
        Route("/v1/review/stats", guarded(stats)),
        Route("/v1/review/queue", guarded(queue)),
        Route("/v1/review/{id}/audio", guarded(audio)),
        Route("/v1/review/{id}/release", guarded(release), methods=["POST"]),
        Route("/v1/review/{id}", guarded(submit), methods=["POST"]),
        Route("/v1/sessions/{id}", session),
        Route("/review", guarded(page)),
        Route("/review.js", _asset("review.js", "text/javascript; charset=utf-8")),
    ]


def _asset(name: str, content_type: str) -> Callable:
    async def serve(request: Request) -> Response:
        body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
        return Response(body, headers={"Content-Type": content_type, **NO_STORE})

    return serve
