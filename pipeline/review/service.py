"""A live server's review queue: segments in from the streams, reviews in from the reviewers,
revisions out to the clients, corrections out as ground truth.

Database and file work runs in worker threads (:func:`asyncio.to_thread`); everything else on
the server's event loop. A submitted review goes

* to the client of that session, as a ``revision`` message, while it is still connected;
* to the deployment as feedback for every variant that transcribed that audio (the ledger scores
  it: shadow agreement, canary gates, concept drift), unless no model did (level ``human``);
* into the store, where each variant's transcript of the segment is scored against it, and the
  review by stage: the ASR's errors, the VAD's cuts (words heard in the margins) and misses
  (words heard in the rejected audio of a ``vad_audit`` item) (``GET /v1/review/stats``).

A ``vad_audit`` item is no segment of the client's: its review goes to the store alone (no
revision, no feedback).

A segment sent to review is durable before its client is told ``review: pending``: the stream's
hand-over writes it to the local spool (:mod:`.spool`) on the event loop, before the final
leaves; a single mover then takes the spool to the store in order, one item at a time, and while
the store fails retries with a backoff that doubles up to :data:`RETRY_MAX_S`, on the server's
clock (each tick retries once the wait is over; no sleeping). What is still spooled when the
server stops is moved by the next one.
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
from speechpipe.pipeline.live.actions import AddMargin, SubmitReview
from speechpipe.pipeline.review.policy import VAD_AUDIT
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings, model_runs_at
from speechpipe.pipeline.review.spool import ReviewSpool
from speechpipe.pipeline.review.store import (
    AiText,
    Item,
    MarginAfter,
    NewItem,
    ReviewStore,
    default_data_dir,
    given_back_by,
)
from speechpipe.pipeline.review.threshold import curve

log = logging.getLogger("speechpipe.review")

#: how often (on the server's clock) the store's figures (queue length, oldest item) are refreshed
#: for telemetry and the dashboard.
STATS_EVERY_S = 2.0
#: the most recent reviewed segments the dashboard's threshold curves are drawn from.
DASHBOARD_ROWS = 5000
#: how often expired audio is deleted.
PURGE_EVERY_S = 3600.0
#: how often audio files without a row are looked for, and how old one must be to go: a file is
#: written a moment before its row commits, so a young one may be an item on its way in.
SWEEP_EVERY_S = 600.0
SWEEP_GRACE_S = 600.0
#: the first wait before moving spooled items to a store that failed, doubled at each failure
#: in a row up to the last.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: spooled items read at a time by the mover.
MOVE_BATCH = 16


@dataclass
class ReviewCounters:
    """What this server did since start (the store holds what all replicas did)."""

    queued: int = 0
    failed: int = 0
    spooled: int = 0
    margins: int = 0  # after-margins added to items already sent
    store_failures: int = 0
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
        spool: where items wait for the store (default: :func:`spool_path` of the settings).
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
        spool: ReviewSpool | None = None,
    ) -> None:
        self.store = store
        self.spool = spool if spool is not None else ReviewSpool(spool_path(settings, store))
        self.automation = automation
        self.settings = settings
        self.push = push
        self.feedback = feedback
        self.on_reviewed = on_reviewed
        self.clock = clock
        self.counters = ReviewCounters()
        self.figures: dict = {}
        self._tasks: set[asyncio.Task] = set()
        self._last_stats = self._last_purge = self._last_sweep = -math.inf
        self._mover: asyncio.Task | None = None
        #: something was spooled since the mover last looked at the spool (see :meth:`_move_all`)
        self._spooled_since = False
        self._failures = 0  # failed moves in a row
        self._retry_at = -math.inf
        self._stopped = False

    # -- from the streams ----------------------------------------------------------------------------

    def enqueue(
        self,
        variant: str,
        role: str,
        stream_id: str,
        request: SubmitReview,
        level: str | None = None,
        owner: str | None = None,
    ) -> None:
        """A segment of a live stream served by ``variant`` at ``level`` (the server's by default)
        goes to review (called on the event loop); ``owner``, the principal that opened the
        stream, is kept with it (the session's owner may read it after a restart)."""
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
            owner=owner,
            margin_before_s=request.margin_before_s,
            margin_after_s=request.margin_after_s,
        )
        try:
            if self.spool.put(new, self.clock()):
                self.counters.spooled += 1
        except Exception:  # the local disk failed: the one case where the item is lost, and it is said
            self.counters.failed += 1
            log.exception("review: segment %d of %s could not be spooled", new.segment, new.session)
            return
        self._move(self.clock())

    def add_margin(self, variant: str, stream_id: str, request: AddMargin) -> None:
        """More after-margin for a segment of ``stream_id`` sent to review before its audio came:
        spooled behind its item, and moved to the store in the same order (called on the event
        loop). Lost only with the local disk, and then the item keeps the margin it had."""
        more = MarginAfter(
            stream_id, request.segment, variant, request.audio, request.after_from_s, request.margin_after_s
        )
        try:
            self.spool.put(more, self.clock())
        except Exception:
            log.exception("review: the after-margin of segment %d of %s could not be spooled", more.segment, stream_id)
            return
        self._move(self.clock())

    def _move(self, now: float) -> None:
        """Start the mover unless it runs or waits for its next try."""
        if self._stopped:
            return
        self._spooled_since = True
        if (self._mover is None or self._mover.done()) and now >= self._retry_at:
            task = asyncio.get_running_loop().create_task(self._move_all(), name="review-spool-mover")
            self._mover = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _move_all(self) -> None:
        """Move the spool to the store, oldest first, until it is empty or the store fails; and
        again while something was spooled during a pass (an item put while the mover read an
        empty spool in its thread would otherwise wait for the next put or tick)."""
        while self._spooled_since:
            self._spooled_since = False
            if not await self._move_pass():
                return

    async def _move_pass(self) -> bool:
        """One pass over the spool; False when the store failed (the rest waits for a retry)."""
        while batch := await asyncio.to_thread(self.spool.head, MOVE_BATCH):
            for s in batch:
                try:
                    if isinstance(s.item, MarginAfter):
                        if not await asyncio.to_thread(self.store.add_margin, s.item):
                            log.info("review: %s: no clip to add the after-margin to (gone, or not its own)", s.key)
                    else:
                        await asyncio.to_thread(self.store.add, s.item, s.spooled_at)
                except Exception as exc:  # noqa: BLE001  # the store is down: the item waits in the spool
                    self._failures += 1
                    self.counters.store_failures += 1
                    wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures - 1))
                    self._retry_at = self.clock() + wait
                    tries = await asyncio.to_thread(self.spool.failed, s.seq, f"{type(exc).__name__}: {exc}")
                    log.warning(
                        "review: the store failed (%s); %s waits in the spool (try %d), next try in %.1f s",
                        type(exc).__name__,
                        s.key,
                        tries,
                        wait,
                    )
                    return False
                await asyncio.to_thread(self.spool.done, s.seq)
                self._failures, self._retry_at = 0, -math.inf
                if isinstance(s.item, MarginAfter):
                    self.counters.margins += 1
                    continue
                self.counters.queued += 1
                self.counters.by_reason[s.item.reason] = self.counters.by_reason.get(s.item.reason, 0) + 1
        return True

    async def flush(self) -> None:
        """Wait for the mover (a server stopping, a test); what the store refused stays spooled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def waiting(self) -> int:
        """How many items wait in the spool (from a worker thread)."""
        return len(self.spool)

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

    async def item(self, item_id: str) -> Item | None:
        return await asyncio.to_thread(self.store.get, item_id)

    async def queue(self) -> list[Item]:
        return await asyncio.to_thread(self.store.queue, self.clock())

    async def session(self, session: str) -> list[Item]:
        return await asyncio.to_thread(self.store.session, session)

    async def claim(self, reviewer: str, take_back: bool = True) -> tuple[Item | None, bool]:
        """The next item for ``reviewer`` (:meth:`ReviewStore.claim`, an item they gave back held
        for ``release_hold_s``), and whether it is one they gave back within that hold (then
        nothing else was free)."""
        now, hold = self.clock(), self.settings.release_hold_s
        item = await asyncio.to_thread(self.store.claim, reviewer, now, self.settings.claim_s, hold, take_back)
        return item, item is not None and given_back_by(item, reviewer, now, hold)

    async def neighbours(self, item: Item) -> tuple[Item | None, Item | None]:
        return await asyncio.to_thread(self.store.neighbours, item)

    async def release(self, item_id: str, claim: str | None, reviewer: str | None = None) -> Item:
        return await asyncio.to_thread(self.store.release, item_id, claim, self.clock(), reviewer)

    async def submit(
        self, item_id: str, text: str, claim: str | None, reviewer: str, before: str = "", after: str = ""
    ) -> Item:
        """Store a review (``text`` the segment's words, ``before``/``after`` the words heard in
        the margins), then send it where it is ground truth (see the module docstring)."""
        now = self.clock()
        item = await asyncio.to_thread(self.store.submit, item_id, text, claim, reviewer, now, before, after)
        self.counters.reviewed += 1
        if item.reason == VAD_AUDIT:  # rejected audio: nothing of the client's to revise or score
            self._told(item)
            return item
        if self.push(item.session, protocol.revision(item.segment, text)):
            self.counters.revisions_sent += 1
        if self.feedback is not None and model_runs_at(item.level):
            try:
                self.feedback(item.session, item.segment, text)
            except KeyError:  # a session this replica never served, or one long gone from its ledger
                log.info("review: session %s is not in this server's ledger; scored in the store only", item.session)
        self._told(item)
        return item

    def _told(self, item: Item) -> None:
        if self.on_reviewed is not None:
            try:
                self.on_reviewed(item)
            except Exception:  # telemetry must never break a review
                log.exception("review telemetry failed")

    # -- upkeep (the review part calls it at each tick, on the server's clock) ---------------------

    async def upkeep(self, now: float) -> bool:
        """Sweep audio without a row every :data:`SWEEP_EVERY_S`, start moving the spool to the
        store when its wait is over, purge expired audio every :data:`PURGE_EVERY_S` and refresh
        the figures every :data:`STATS_EVERY_S` of ``now``; True when the figures were refreshed.
        The sweep runs before the mover starts, so a file on its way in is never taken for a
        leftover (its grace period covers the moves that start from a stream meanwhile)."""
        if now - self._last_sweep >= SWEEP_EVERY_S and (self._mover is None or self._mover.done()):
            swept = await self._guarded(self.store.sweep, now, SWEEP_GRACE_S)
            self._last_sweep = now
            if swept:
                log.info("review: removed %d audio file(s) that no item owns", swept)
        self._move(now)
        if now - self._last_purge >= PURGE_EVERY_S:
            gone = await self._guarded(self.store.purge, now, self.settings.keep_days)
            self._last_purge = now
            if gone:
                log.info("review: deleted the audio of %d segment(s) past %g days", gone, self.settings.keep_days)
        if now - self._last_stats >= STATS_EVERY_S:
            figures = await self._guarded(self.store.stats, now)
            if figures is not None:
                self.figures, self._last_stats = figures, now
                return True
        return False

    async def _guarded(self, work: Callable, *args: object) -> object:
        """``work(*args)`` in a worker thread; None when it fails (a database hiccup must not stop
        the upkeep, and a store that is down is said without a traceback at each tick)."""
        try:
            return await asyncio.to_thread(work, *args)
        except SQLAlchemyError as exc:
            log.warning("review upkeep: the store failed (%s)", type(exc).__name__)
        except Exception:
            log.exception("review upkeep failed")
        return None

    async def stop(self) -> None:
        """Wait for the mover, then close the spool (what is in it waits for the next start)."""
        self._stopped = True
        await self.flush()
        self.spool.close()


def spool_path(settings: ReviewSettings, store: ReviewStore) -> Path:
    """``[review] spool``, else ``spool.db`` in the store's data directory."""
    if settings.spool:
        return Path(settings.spool).expanduser()
    if store.data_dir is None:
        raise ValueError("the review service needs a store with a data directory")
    return store.data_dir / "spool.db"


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
    data_dir = settings.data_dir or default_data_dir(settings.db)
    try:
        return ReviewStore(settings.db, data_dir)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"review.db: its driver is missing ({exc}); PostgreSQL: pip install 'speechpipe[postgres]'"
        ) from None
    except (ValueError, SQLAlchemyError) as exc:
        raise ConfigError(f"review.db: {settings.db}: {exc}") from None
