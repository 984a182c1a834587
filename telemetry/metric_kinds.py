"""The kinds of metric instrument, and :class:`MetricSpec`, the row of the metrics table."""

from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
UP_DOWN_COUNTER = "updowncounter"
HISTOGRAM = "histogram"
OBSERVABLE_COUNTER = "observable_counter"
OBSERVABLE_GAUGE = "observable_gauge"
OBSERVABLE_UP_DOWN_COUNTER = "observable_updowncounter"


@dataclass(frozen=True)
class MetricSpec:
    """One instrument: its name, kind, unit, the attributes beyond :data:`BASE_METRIC_ATTRIBUTES`,
    what it means, and (histograms) its bucket boundaries."""

    name: str
    kind: str
    unit: str
    attributes: tuple[str, ...]
    group: str
    description: str
    buckets: tuple[float, ...] | None = None
