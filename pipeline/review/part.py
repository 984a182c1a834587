"""The review queue as a part of the live server: segments in from the streams, the review API
and page, a session's revisions, the figures refreshed at each tick (docs/review.md).

``review`` scope (the reviewer token; without one configured the routes answer 403):

* ``POST /v1/review/claim`` (``{"reviewer": NAME, "take_back": BOOL}`` optional): the next item,
  claimed, as ``{"id", "session", "segment", "audio_url", "draft", "confidence", "claimed_until",
  "claim", "margin_before_s", "margin_after_s", "reason_label", "reason_text", "neighbours",
  "back_to_you", ...}``; 204 when the queue is empty. An item this reviewer skipped or gave back
  within ``[review] release_hold_s`` comes only when nothing else is free (``back_to_you``), and
  not at all with ``"take_back": false``.
* ``GET /v1/review/{id}/audio``: the item's clip (FLAC): the segment with its margins.
* ``POST /v1/review/{id}`` ``{"text": "...", "before"?: "...", "after"?: "...", "claim"?: CLAIM}``:
  the human transcript of the segment, and the words heard in the margins before and after it.
* ``POST /v1/review/{id}/release`` (``{"claim", "reviewer"}`` optional): back to the queue; the
  reviewer who gives it back (by default the one who claimed it) is not handed it again at once.
* ``GET /v1/review/stats``: queue length, oldest age, done, per-variant human-vs-AI WER, and per
  variant each stage's errors (``by_stage``).
* ``GET /v1/review/queue``: what waits, in the order claims take it.
* ``GET /review``: the page.

``GET /v1/sessions/{id}``: the session's segments sent to review with their revisions (not the
VAD's audits of its rejected audio, which are no segments of the client's), to its
owner (the principal that opened it, ``stream`` scope), reviewers and admins; anyone else gets
the 404 of an unknown session. The owner is the server's record of its recent sessions, else the
one stored with the session's review items: so after a restart the owner still reads a session
that has items in the store (a session with none has nothing to read anyway).

The part reports to the server's observer :class:`Reviewed` for each review submitted here and
:class:`ReviewFigures` whenever the store's figures are refreshed (telemetry's gauges).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import resources

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.live.actions import AddMargin, ReviewRequest
from speechpipe.pipeline.review.policy import VAD_AUDIT, explain
from speechpipe.pipeline.review.service import ReviewService, open_store
from speechpipe.pipeline.review.store import DONE, MAX_TEXT, Item, ReviewError
from speechpipe.pipeline.server.auth import ADMIN, NO_STORE, REVIEW, STREAM, SessionOwners, requires
from speechpipe.pipeline.server.http import STORE_UNAVAILABLE, BadRequest, error, read_json, unavailable
from speechpipe.pipeline.server.parts import Part, ServerContext, StreamInfo

MAX_NAME = 128

log = logging.getLogger("speechpipe.review")


@dataclass(frozen=True)
class Reviewed:
    """A segment reviewed on this server, with the words the VAD cut off (heard in its margins)
    and missed (heard in its rejected audio)."""

    variant: str
    level: str
    reason: str
    vad_cut_words: int = 0
    vad_miss_words: int = 0


@dataclass(frozen=True)
class ReviewFigures:
    """The store's figures, refreshed: ``{"queue", "oldest_age_s", "variants": {NAME: {"wer", "words"}}}``."""

    figures: dict


def item_doc(item: Item, review_below: float | None = None) -> dict:
    """An item as the API shows it, with why it is queued in words (``reason_label``, short, and
    ``reason_text``, a sentence: :func:`~speechpipe.pipeline.review.policy.explain`, against
    ``review_below``, its variant's threshold now)."""
    doc = asdict(item)
    doc["audio_url"] = f"/v1/review/{item.id}/audio" if item.audio else None
    doc["start"], doc["end"] = doc.pop("start_s"), doc.pop("end_s")
    doc.pop("owner")  # who opened the session is the session route's business, not the reviewers'
    why = explain(item.reason, item.level, item.confidence, review_below, item.draft)
    doc["reason_label"], doc["reason_text"] = why.label, why.text
    return doc


def neighbour_doc(item: Item | None) -> dict | None:
    """A neighbouring segment as a claim shows it (None: not in the store): ``text`` the
    reviewer's words once it is reviewed (``by: human``), else the AI text that its level lets a
    reviewer see, its draft (``by: ai``), else none (``by: null``: at ``human`` and ``shadow``
    the AI's text is kept from reviewers, at ``full`` from the audit's)."""
    if item is None:
        return None
    done = item.state == DONE
    text = item.text if done else item.draft
    by = "human" if done else "ai" if text is not None else None
    return {
        "segment": item.segment,
        "start": item.start_s,
        "end": item.end_s,
        "state": item.state,
        "text": text,
        "by": by,
    }


def _page(name: str, content_type: str) -> Response:
    body = resources.files("speechpipe.pipeline").joinpath("web", name).read_bytes()
    return Response(body, headers={"Content-Type": content_type, **NO_STORE})


#: what a client is told to wait before it asks again while the store is down (seconds).
RETRY_AFTER_S = 5


def store_unavailable() -> dict:
    """The error document of a store that cannot be reached (its cause is logged, not shown: a
    database's message may name its host or its SQL)."""
    return {
        "error": STORE_UNAVAILABLE,
        "message": "the review store cannot be reached; segments sent to review wait in the server's spool",
        "retry_after_s": RETRY_AFTER_S,
    }


def _served(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """An endpoint of the review API given the service, its refusals rendered as JSON errors; the
    one place where the store's failures become ``503 store_unavailable`` with ``Retry-After``."""

    @functools.wraps(endpoint)
    async def run(part: ReviewPart, request: Request) -> Response:
        try:
            return await endpoint(part, request, part._service())
        except (BadRequest, ReviewError) as exc:
            return error(exc.status, exc.code, exc.message)
        except SQLAlchemyError as exc:
            log.warning("review API %s %s: the store failed (%s)", request.method, request.url.path, type(exc).__name__)
            return unavailable(store_unavailable(), RETRY_AFTER_S)

    return run


class ReviewPart(Part):
    """See the module docstring. The store of ``config`` is opened here, so a database that
    cannot be opened (or a level that needs people without one) stops the server before it
    listens; the service runs once the part starts."""

    name = "review"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.service: ReviewService | None = None
        self._report: Observer | None = None
        self.owners = SessionOwners()  # the server's, once started
        #: the finals a session's client got (the deployment's ledger), once started
        self.finals_of: Callable[[str, tuple[int, ...]], tuple[str, dict] | None] | None = None
        #: each variant's ``review_below``, which says why a low-confidence item is queued
        self.review_below = {n: config.for_variant(n).automation.review_below for n in config.variant_names()}

    @property
    def queues_reviews(self) -> bool:
        return self.store is not None

    async def start(self, ctx: ServerContext) -> None:
        self.owners = ctx.owners
        self.finals_of = ctx.deployment.finals_of
        if self.store is None:
            return
        self._report = ctx.observer
        self.service = ReviewService(
            self.store,
            self.config.automation,
            self.config.review,
            ctx.push,
            ctx.deployment.feedback,
            on_reviewed=self._reviewed,
            clock=ctx.clock,
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()

    async def tick(self, now: float) -> None:
        if self.service is not None and await self.service.upkeep(now) and self._report is not None:
            self._report.on_event(ReviewFigures(self.service.figures))

    def enqueue(self, stream: StreamInfo, request: ReviewRequest) -> None:
        """A segment of ``stream`` goes to review, or more of its after-margin (called on the
        event loop)."""
        if self.service is None:
            return
        if isinstance(request, AddMargin):
            self.service.add_margin(stream.variant, stream.stream_id, request)
            return
        level = stream.config.automation.level
        self.service.enqueue(stream.variant, stream.role, stream.stream_id, request, level, owner=stream.principal)

    def _reviewed(self, item: Item) -> None:
        if self._report is not None:
            cut, missed = item.vad_cut_words or 0, item.vad_miss_words or 0
            self._report.on_event(Reviewed(item.variant, item.level, item.reason, cut, missed))

    def dashboard(self) -> dict | None:
        """The dashboard's view of the queue (from a worker thread), None without one; while the
        store cannot be reached, :func:`store_unavailable` with the last figures refreshed."""
        if self.service is None:
            return None
        try:
            return self.service.dashboard()
        except SQLAlchemyError as exc:
            log.warning("dashboard: the review store failed (%s)", type(exc).__name__)
            return store_unavailable() | {"figures": self.service.figures, "spooled": self.service.waiting()}

    # -- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/review/claim", self.claim, methods=["POST"]),
            Route("/v1/review/stats", self.stats),
            Route("/v1/review/queue", self.queue),
            Route("/v1/review/{id}/audio", self.audio),
            Route("/v1/review/{id}/release", self.release, methods=["POST"]),
            Route("/v1/review/{id}", self.submit, methods=["POST"]),
            Route("/v1/sessions/{id}", self.session),
            Route("/review", self.page),
            Route("/review.js", self.script),
        ]

    def _service(self) -> ReviewService:
        if self.store is None:
            raise BadRequest(404, "no_review_queue", "this server has no review queue: set [review] db")
        if self.service is None:
            raise BadRequest(503, "not_ready", "the pipeline variants are still loading")
        return self.service

    @requires(REVIEW)
    @_served
    async def claim(self, request: Request, svc: ReviewService) -> Response:
        doc = await _optional_json(request)
        take_back = doc.get("take_back", True)
        if not isinstance(take_back, bool):
            raise BadRequest(400, "bad_request", "take_back must be true or false")
        item, back = await svc.claim(_reviewer(request, doc), take_back)
        if item is None:
            return Response(status_code=204, headers=NO_STORE)
        before, after = await svc.neighbours(item)
        neighbours = {"before": neighbour_doc(before), "after": neighbour_doc(after)}
        neighbours |= self._sent_around(item, neighbours)
        return JSONResponse(self._doc(item) | {"neighbours": neighbours, "back_to_you": back}, headers=NO_STORE)

    def _sent_around(self, item: Item, found: dict) -> dict:
        """The neighbours the store lacks (finals that went out without review), from what the
        client of the session got, as the deployment's ledger keeps it: only where the item's own
        AI text is shown to its reviewer (its draft), and for the variant that served it."""
        missing = {k: item.segment + d for k, d in (("before", -1), ("after", 1)) if found[k] is None}
        if not missing or item.reason == VAD_AUDIT or item.draft is None or self.finals_of is None:
            return {}
        served = self.finals_of(item.session, tuple(missing.values()))
        if served is None or served[0] != item.variant:
            return {}
        out = {}
        for key, segment in missing.items():
            piece = served[1].get(segment)
            if piece is not None:
                out[key] = {"segment": segment, "start": piece.start_s, "end": piece.end_s, "state": "sent"}
                out[key] |= {"text": piece.text.strip(), "by": "ai"}
        return out

    def _doc(self, item: Item) -> dict:
        return item_doc(item, self.review_below.get(item.variant))

    @requires(REVIEW)
    @_served
    async def submit(self, request: Request, svc: ReviewService) -> Response:
        doc = await read_json(request)
        text, before, after = (_text(doc, key, required=key == "text") for key in ("text", "before", "after"))
        item_id, claim, reviewer = request.path_params["id"], _claim(doc), _reviewer(request, doc)
        item = await svc.submit(item_id, text, claim, reviewer, before, after)
        return JSONResponse(self._doc(item), headers=NO_STORE)

    @requires(REVIEW)
    @_served
    async def release(self, request: Request, svc: ReviewService) -> Response:
        doc = await _optional_json(request)
        named = "reviewer" in doc or "x-reviewer" in request.headers  # else: who claimed it gave it back
        item = await svc.release(request.path_params["id"], _claim(doc), _reviewer(request, doc) if named else None)
        return JSONResponse(self._doc(item), headers=NO_STORE)

    @requires(REVIEW)
    @_served
    async def audio(self, request: Request, svc: ReviewService) -> Response:
        item = await svc.item(request.path_params["id"])
        path = svc.store.audio_path(item) if item is not None else None
        if path is None or not path.is_file():
            return error(404, "not_found", "no audio for this item (unknown, or past the retention period)")
        return FileResponse(path, media_type="audio/flac", headers=NO_STORE)

    @requires(REVIEW)
    @_served
    async def stats(self, request: Request, svc: ReviewService) -> Response:
        return JSONResponse(await svc.stats(), headers=NO_STORE)

    @requires(REVIEW)
    @_served
    async def queue(self, request: Request, svc: ReviewService) -> Response:
        items = await svc.queue()
        return JSONResponse({"items": [self._doc(i) for i in items]}, headers=NO_STORE)

    @requires(REVIEW)
    @_served
    async def page(self, request: Request, svc: ReviewService) -> Response:
        return _page("review.html", "text/html; charset=utf-8")

    async def script(self, request: Request) -> Response:
        return _page("review.js", "text/javascript; charset=utf-8")

    @requires(STREAM, also=(REVIEW, ADMIN))
    @_served
    async def session(self, request: Request, svc: ReviewService) -> Response:
        session = request.path_params["id"]
        # Someone else's session is answered exactly like one that does not exist.
        unknown = error(404, "unknown_session", f"unknown session {session!r}")
        if self.owners.may_see(session, request):
            items = await svc.session(session)
            if not items and self.owners.owner(session) is None:
                return unknown
        elif self.owners.owner(session) is not None:
            return unknown  # a live session of someone else's: the store is not asked
        else:  # not in the server's record (a restart, or long ago): the owner stored with its items
            items = await svc.session(session)
            if not items or not self.owners.may_see(session, request, stored=_stored_owner(items)):
                return unknown
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
            if i.reason != VAD_AUDIT
        ]
        return JSONResponse({"session": request.path_params["id"], "segments": segments}, headers=NO_STORE)


def _stored_owner(items: list[Item]) -> str | None:
    """The owner stored with a session's items (the first that has one: items queued by a
    speechpipe before owners were stored have none)."""
    return next((i.owner for i in items if i.owner), None)


async def _optional_json(request: Request) -> dict:
    if not (await request.body()).strip():
        return {}
    return await read_json(request)


def _reviewer(request: Request, doc: dict) -> str:
    name = doc.get("reviewer", request.headers.get("x-reviewer", "reviewer"))
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise BadRequest(400, "bad_request", f"reviewer must be a name of 1-{MAX_NAME} characters")
    return name


def _text(doc: dict, key: str, required: bool) -> str:
    """A transcript field of a submit, stripped: ``text`` must be there (an empty one says there
    was no speech), ``before`` and ``after`` may be left out (or null)."""
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        what = "the transcript" if required else "the words heard in the margin, if any"
        raise BadRequest(400, "bad_request", f"{key} must be {what}, a string of at most {MAX_TEXT} characters")
    return value.strip()


def _claim(doc: dict) -> str | None:
    claim = doc.get("claim")
    if claim is not None and not isinstance(claim, str):
        raise BadRequest(400, "bad_request", "claim must be the string the claim returned")
    return claim
