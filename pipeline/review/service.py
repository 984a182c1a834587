"""A live server's review queue: segments in from the streams, reviews in from the reviewers,
revisions out to the clients, corrections out as ground truth.

Database and file work runs in worker threads (:func:`asyncio.to_thread`); everything else on
the server's event loop. A submitted review goes

* to the client of that session, as a ``revision`` message, while it is still connected;
* to the deployment as feedback for every variant that transcribed that audio (the ledger scores
  it: shadow agreement, canary gates, concept drift), unless no model did (level ``human``);
* into the store, where each variant's transcript of the segment is scored against it
  (``GET /v1/review/stats``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from speechpipe.pipeline import protocol
from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.live.actions import SubmitReview
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings, model_runs_at
from speechpipe.pipeline.review.store import AiText, Item, NewItem, ReviewStore
from speechpipe.pipeline.review.threshold import curve

log = logging.getLogger("speechpipe.review")

#: how often (on the server's clock) the store's figures (queue length, oldest item) are refreshed
#: for telemetry and the dashboard.
STATS_EVERY_S = 2.0
#: the most recent reviewed segments the dashboard's threshold curves are drawn from.
DASHBOARD_ROWS = 5000
#: how often expired audio is deleted.
PURGE_EVERY_S = 3600.0


@dataclass
class ReviewCounters:
    """What this server did since start (the store holds what all replicas did)."""

    queued: int = 0
    failed: int = 0
    reviewed: int = 0
    revisions_sent: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class ReviewService:
    """See the module docstring.

    Args:
        store: the queue.
        automation: the server's level of automation.
        settings: the ``[review]`` table.
        push: sends a message to the live stream of a session; False when it is gone.
        feedback: scores a human transcript of ``(session, segment)`` against every variant.
        on_reviewed: told each submitted item (telemetry).
        clock: Unix seconds.
    """

    def __init__(
        self,
        store: ReviewStore,
        automation: AutomationSettings,
        settings: ReviewSettings,
        push: Callable[[str, dict], bool],
        feedback: Callable[[str, int, str], object] | None = None,
        on_reviewed: Callable[[Item], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.automation = automation
        self.settings = settings
        self.push = push
        self.feedback = feedback
        self.on_reviewed = on_reviewed
        self.clock = clock
        self.counters = ReviewCounters()
        self.figures: dict = {}
        self._tasks: set[asyncio.Task] = set()
        self._last_stats = self._last_purge = -math.inf

    # -- from the streams ----------------------------------------------------------------------------

    def enqueue(self, variant: str, role: str, stream_id: str, request: SubmitReview, level: str | None = None) -> None:
        """A segment of a live stream served by ``variant`` at ``level`` (the server's by default)
        goes to review (called on the event loop)."""
        transcripts = []
        if request.text is not None:
            transcripts.append(AiText(variant, role, request.text, request.confidence))
        new = NewItem(
            session=stream_id,
            segment=request.segment,
            variant=variant,
            level=level or self.automation.level,
            reason=request.reason,
            start_s=request.start_s,
            end_s=request.end_s,
            audio=request.audio,
            draft=request.draft,
            confidence=request.confidence,
            transcripts=transcripts,
        )
        task = asyncio.get_running_loop().create_task(self._add(new), name=f"review-add-{stream_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, new: NewItem) -> None:
        try:
            await asyncio.to_thread(self.store.add, new, self.clock())
        except Exception:  # the final has gone out; the review is what is lost, and it is said
            self.counters.failed += 1
            log.exception("review: segment %d of %s could not be queued", new.segment, new.session)
            return
        self.counters.queued += 1
        self.counters.by_reason[new.reason] = self.counters.by_reason.get(new.reason, 0) + 1

    async def flush(self) -> None:
        """Wait for the segments being written (a server stopping, a test)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- from the reviewers ----------------------------------------------------------------------

    async def stats(self) -> dict:
        """The store's figures (every replica's), this server's counters and its level."""
        figures = await asyncio.to_thread(self.store.stats, self.clock())
        return figures | {"level": self.automation.level, "server": asdict(self.counters)}

    def dashboard(self) -> dict:
        """The dashboard's view (called from a worker thread): the store's figures, the level and
        its threshold, and per variant the curve of share sent against share of errors caught."""
        by_variant: dict[str, list[dict]] = {}
        for row in self.store.reviewed(limit=DASHBOARD_ROWS):
            by_variant.setdefault(row["variant"], []).append(row)
        return {
            "level": self.automation.level,
            "review_below": self.automation.review_below,
            "figures": self.figures,
            "curves": {v: [p.to_dict() for p in curve(rows)] for v, rows in by_variant.items()},
        }

    async def queue(self) -> list[Item]:
        return await asyncio.to_thread(self.store.queue, self.clock())

    async def session(self, session: str) -> list[Item]:
        return await asyncio.to_thread(self.store.session, session)

    async def claim(self, reviewer: str) -> Item | None:
        return await asyncio.to_thread(self.store.claim, reviewer, self.clock(), self.settings.claim_s)

    async def release(self, item_id: str, claim: str | None) -> Item:
        return await asyncio.to_thread(self.store.release, item_id, claim, self.clock())

    async def submit(self, item_id: str, text: str, claim: str | None, reviewer: str) -> Item:
        """Store a review, then send it where it is ground truth (see the module docstring)."""
        item = await asyncio.to_thread(self.store.submit, item_id, text, claim, reviewer, self.clock())
        self.counters.reviewed += 1
        if self.push(item.session, protocol.revision(item.segment, text)):
            self.counters.revisions_sent += 1
        if self.feedback is not None and model_runs_at(item.level):
            try:
                self.feedback(item.session, item.segment, text)
            except KeyError:  # a session this replica never served, or one long gone from its ledger
                log.info("review: session %s is not in this server's ledger; scored in the store only", item.session)
        if self.on_reviewed is not None:
            try:
                self.on_reviewed(item)
            except Exception:  # telemetry must never break a review
                log.exception("review telemetry failed")
        return item

    # -- upkeep (the review part calls it at each tick, on the server's clock) ---------------------

    async def upkeep(self, now: float) -> bool:
        """Refresh the figures every :data:`STATS_EVERY_S` and purge expired audio every
        :data:`PURGE_EVERY_S` of ``now``; True when the figures were refreshed."""
        refreshed = False
        try:
            if now - self._last_purge >= PURGE_EVERY_S:
                gone = await asyncio.to_thread(self.store.purge, now, self.settings.keep_days)
                self._last_purge = now
                if gone:
                    log.info("review: deleted the audio of %d segment(s) past %g days", gone, self.settings.keep_days)
            if now - self._last_stats >= STATS_EVERY_S:
                self.figures = await asyncio.to_thread(self.store.stats, now)
                self._last_stats = now
                refreshed = True
        except Exception:  # a database hiccup must not stop the upkeep
            log.exception("review upkeep failed")
        return refreshed

    async def stop(self) -> None:
        await self.flush()


def open_store(config: Config) -> ReviewStore | None:
    """The review queue's store of ``config`` (None where ``[review] db`` is unset; then only
    ``full`` automation, without its audit, can run). Raises :class:`ConfigError`."""
    settings = config.review
    if not settings.db:
        levels = {config.for_variant(name).automation.level for name in config.variant_names()}
        if levels - {"full"}:
            wanted = ", ".join(sorted(levels - {"full"}))
            raise ConfigError(f"automation.level {wanted} sends segments to people: set [review] db (--db)")
        return None
    data_dir = settings.data_dir or (
        Path(settings.db).expanduser().resolve().parent / "review-audio" if "://" not in settings.db else "review-audio"
    )
    try:
        return ReviewStore(settings.db, data_dir)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"review.db: its driver is missing ({exc}); PostgreSQL: pip install 'speechpipe[postgres]'"
        ) from None
    except (ValueError, SQLAlchemyError) as exc:
        raise ConfigError(f"review.db: {settings.db}: {exc}") from None
