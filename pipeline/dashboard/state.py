"""One dashboard snapshot: the figures of ``/metrics`` (:mod:`.figures`), the deploy state, and
drift per feature with its baseline and current histograms. Built at most once a second however
many pages are open (each page's event stream reads the latest one), and at the server's ticks
when the time series (:mod:`.timeline`) want a point, so they go on while no page is open; each
snapshot carries the latest ``point``."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from speechpipe.pipeline.dashboard.figures import DashboardFeed
from speechpipe.pipeline.dashboard.timeline import Timeline, timeline_point


def finite(value: object) -> object:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class DashboardState:
    """See the module docstring.

    Args:
        metrics: renders ``/metrics`` as ``(body, content_type)``.
        deploy: the deploy snapshot (None while the variants load).
        drift: the drift snapshot and histograms (None without a baseline).
        review: the review queue's figures and threshold curves (None without a review queue).
        clock: wall-clock seconds.
        min_interval_s: a snapshot younger than this is served again.
        timeline: where the time series' points go (a new one of 3 h, a point every 2 s).
    """

    def __init__(
        self,
        metrics: Callable[[], tuple[bytes, str]],
        deploy: Callable[[], dict | None],
        drift: Callable[[], tuple[dict, dict] | None],
        review: Callable[[], dict | None] = lambda: None,
        *,
        clock: Callable[[], float] = time.time,
        min_interval_s: float = 0.9,
        timeline: Timeline | None = None,
    ) -> None:
        self.metrics, self.deploy, self.drift, self.review = metrics, deploy, drift, review
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.feed = DashboardFeed()
        self.timeline = timeline or Timeline()
        self._lock = threading.Lock()
        self._latest: tuple[float, dict] | None = None

    def snapshot(self) -> dict:
        """The latest snapshot, rebuilt when it is older than ``min_interval_s``."""
        with self._lock:
            now = self.clock()
            if self._latest is not None and now - self._latest[0] < self.min_interval_s:
                return self._latest[1]
            body, _ctype = self.metrics()
            drift = self.drift()
            extra = {
                "deploy": self.deploy(),
                "drift": None if drift is None else drift[0] | {"histograms": drift[1]},
                "review": self.review(),
            }
            state = finite(self.feed.update(now, body.decode("utf-8", "replace"), extra))
            self.timeline.add(finite(timeline_point(state)))
            state["point"] = self.timeline.last
            self._latest = (now, state)
            return state

    def point_due(self) -> bool:
        """Whether the time series wants a new point now (the server's tick asks, so that no
        page being open costs a ``/metrics`` parse only every ``every_s``)."""
        last = self.timeline.last
        return last is None or self.clock() - float(last["t"]) >= self.timeline.every_s

    def history(self, since: float | None = None) -> dict:
        """The time series as columns (after ``since``), for a page that opens."""
        with self._lock:
            return {"columns": self.timeline.columns(since), "every_s": self.timeline.every_s}
