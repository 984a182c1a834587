"""Choosing ``[automation] review_below`` knowingly: from reviewed segments, the share sent to
review against the share of the AI's word errors caught, per variant. Pure.

A segment is sent to review when its confidence is below the threshold; a reviewed segment's
errors are caught (the human transcript replaces it). Sorting reviewed segments by confidence
gives every threshold's load and catch at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Point:
    """One threshold: segments below it go to review.

    Attributes:
        threshold: the ``review_below`` value.
        sent: share of segments sent to review.
        caught: share of the AI's word errors in those segments.
        wer_before: the AI's WER over all the segments (no review).
        wer_after: the WER clients end up with once the sent segments are reviewed.
    """

    threshold: float
    sent: float
    caught: float
    wer_before: float
    wer_after: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def curve(rows: Iterable[Mapping]) -> list[Point]:
    """Every distinct threshold over ``rows`` (``{"confidence", "errors", "words"}`` of reviewed
    segments), from sending nothing to sending everything."""
    items = sorted((float(r["confidence"]), int(r["errors"]), int(r["words"])) for r in rows)
    if not items:
        return []
    total_errors = sum(e for _, e, _ in items)
    total_words = sum(w for _, _, w in items) or 1
    before = total_errors / total_words
    points = [Point(0.0, 0.0, 0.0, before, before)]
    sent = caught = 0
    for k, (confidence, errors, _words) in enumerate(items):
        sent += 1
        caught += errors
        if k + 1 < len(items) and items[k + 1][0] == confidence:
            continue  # one threshold sends every segment of the same confidence
        threshold = items[k + 1][0] if k + 1 < len(items) else 1.0 + 1e-9
        points.append(
            Point(
                threshold=min(threshold, 1.0) if k + 1 < len(items) else 1.0,
                sent=sent / len(items),
                caught=caught / total_errors if total_errors else 1.0,
                wer_before=before,
                wer_after=(total_errors - caught) / total_words,
            )
        )
    return points


def pick(points: list[Point], target: float) -> Point | None:
    """The lowest threshold that catches at least ``target`` of the errors (None: no data)."""
    for p in points:
        if p.caught >= target - 1e-12:
            return p
    return points[-1] if points else None
