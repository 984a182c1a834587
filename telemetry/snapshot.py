"""Metric points as plain JSON-ready dicts: the final figures an offline run writes to ``summary.json``."""

from __future__ import annotations

import math
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricsData,
    Sum,
)


def _clean(value: float) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), 6)


def metrics_to_dict(data: MetricsData | None) -> dict[str, Any]:
    """``{metric name: {"unit", "kind", "points": [{"attributes", ...figures}]}}``, sorted by name.

    Sums and gauges give ``value``; histograms give ``count``, ``sum``, ``mean``, ``min``, ``max``
    and their ``buckets`` (upper bounds with counts, the last one ``null`` = +Inf).
    """
    out: dict[str, Any] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                entry = out.setdefault(metric.name, {"unit": metric.unit, "kind": "", "points": []})
                d = metric.data
                for p in d.data_points:
                    point: dict[str, Any] = {"attributes": dict(sorted(p.attributes.items()))}
                    if isinstance(d, Histogram):
                        entry["kind"] = "histogram"
                        point.update(
                            count=p.count,
                            sum=_clean(p.sum),
                            mean=_clean(p.sum / p.count) if p.count else None,
                            min=_clean(p.min) if p.count else None,
                            max=_clean(p.max) if p.count else None,
                            buckets=[
                                [_clean(b) if i < len(p.explicit_bounds) else None, c]
                                for i, (b, c) in enumerate(zip(list(p.explicit_bounds) + [math.inf], p.bucket_counts))
                                if c
                            ],
                        )
                    elif isinstance(d, Sum):
                        entry["kind"] = "counter" if d.is_monotonic else "updowncounter"
                        point["value"] = _clean(p.value)
                    elif isinstance(d, Gauge):
                        entry["kind"] = "gauge"
                        point["value"] = _clean(p.value)
                    else:  # exponential histograms are not configured by speechpipe
                        continue
                    entry["points"].append(point)
    for entry in out.values():
        entry["points"].sort(key=lambda p: sorted((k, str(v)) for k, v in p["attributes"].items()))
    return dict(sorted(out.items()))
