"""The dashboard's time series: one point every few seconds of what its charts draw, kept for a
few hours, pure and synchronous (time comes in as ``now``).

A point is flat: ``{"t": now, "streams_open": 3, "latency_p95.default": 0.91, ...}``, a key per
series, ``SERIES.VARIANT`` for the figures of one variant (:data:`VARIANT_SERIES`). The page asks
for the columns once (``GET /dashboard/history``) and then appends the latest point that each
snapshot carries, so what it draws over an hour does not travel every second.

The deployment's changes (advance, rollback, promote, revert, ...) are not points: they are the
deploy history, with their own times, drawn over every chart as marks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

#: service-wide series: open streams, streams accepted and refused over the recent span (a
#: minute; less in the server's first minute), finals lost since start.
SERVICE_SERIES = ("streams_open", "accepted_last_min", "refused_last_min", "lost")
#: per-variant series: final latency p50 / p95 over the recent span (s), the estimated WER over
#: the drift window and its interval, the human WER (feedback and reviews) over ``human_s``,
#: the share of new streams and the open streams.
VARIANT_SERIES = (
    "latency_p50",
    "latency_p95",
    "estimated_wer",
    "estimated_low",
    "estimated_high",
    "human_wer",
    "weight",
    "streams_open",
)


def timeline_point(state: Mapping) -> dict[str, float | None]:
    """The point of one dashboard snapshot (its ``time``, ``service``, ``variants``, ``deploy``
    and ``drift``): every series it has a value for."""
    service = state.get("service") or {}
    point: dict[str, float | None] = {"t": state["time"]}
    figures = {
        "streams_open": service.get("streams_open"),
        "accepted_last_min": service.get("accepted_recent"),
        "refused_last_min": service.get("refused_recent"),
        "lost": service.get("lost"),
    }
    point.update((key, figures[key]) for key in SERVICE_SERIES)
    variants = state.get("variants") or {}
    deployed = ((state.get("deploy") or {}).get("variants")) or {}
    drift = ((state.get("drift") or {}).get("variants")) or {}
    for name in sorted(set(variants) | set(deployed)):
        v = variants.get(name) or {}
        latency = v.get("latency_recent") or {}
        quality = (drift.get(name) or {}).get("quality") or {}
        figures = {
            "latency_p50": latency.get("p50"),
            "latency_p95": latency.get("p95"),
            "estimated_wer": quality.get("estimated_wer"),
            "estimated_low": quality.get("low"),
            "estimated_high": quality.get("high"),
            "human_wer": v.get("human_wer_recent"),
            "weight": (deployed.get(name) or {}).get("weight"),
            "streams_open": v.get("streams_open"),
        }
        for key, value in figures.items():
            point[f"{key}.{name}"] = value
    return point


class Timeline:
    """Points at least ``every_s`` apart, the last ``span_s`` of them.

    Args:
        span_s: how far back points are kept.
        every_s: the least time between two points (a point offered sooner is not kept).
    """

    def __init__(self, span_s: float = 3 * 3600.0, every_s: float = 2.0) -> None:
        self.span_s, self.every_s = span_s, every_s
        self._points: deque[dict[str, float | None]] = deque()

    def add(self, point: Mapping[str, float | None]) -> bool:
        """Keep ``point`` (its ``t`` is now) unless the last one is under ``every_s`` old; the
        points older than ``span_s`` go. True when kept."""
        now = float(point["t"])
        if self._points and now - float(self._points[-1]["t"]) < self.every_s:
            return False
        self._points.append(dict(point))
        while self._points and self._points[0]["t"] < now - self.span_s:
            self._points.popleft()
        return True

    @property
    def last(self) -> dict[str, float | None] | None:
        return self._points[-1] if self._points else None

    def columns(self, since: float | None = None) -> dict[str, list[float | None]]:
        """The points after ``since`` (all: None) as columns, ``t`` first; a series a point
        lacks (a variant not yet seen) is None there."""
        rows = [p for p in self._points if since is None or p["t"] > since]
        keys: dict[str, None] = {"t": None}
        for p in rows:
            keys.update(dict.fromkeys(p))
        return {key: [p.get(key) for p in rows] for key in keys}
