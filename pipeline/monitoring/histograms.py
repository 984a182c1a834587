"""Baseline and current distributions of a feature on shared bins, for the dashboard's charts."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from speechpipe.pipeline.monitoring.drift import CATEGORY, RATE


def feature_histogram(kind: str, baseline: Sequence[float], current: Sequence[float], bins: int = 16) -> dict:
    """``{"kind", "labels", "baseline", "current"}``: the share of each side's values in each bin
    (categories and 0/1 features by value; quantities on equal bins spanning both sides' 1st to
    99th percentiles, the outermost bins holding the tails)."""
    base = np.asarray(baseline, dtype=float)
    cur = np.asarray(current, dtype=float)
    if kind in (CATEGORY, RATE):
        cats = sorted(set(base.tolist()) | set(cur.tolist()))
        labels = [f"{c:g}" for c in cats]
        return {
            "kind": kind,
            "labels": labels,
            "baseline": [_share(base, base == c) for c in cats],
            "current": [_share(cur, cur == c) for c in cats],
        }
    both = np.concatenate([base, cur])
    if not both.size:
        return {"kind": kind, "labels": [], "baseline": [], "current": []}
    lo, hi = np.percentile(both, [1, 99])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    labels = [f"{(a + b) / 2:.3g}" for a, b in pairwise(edges)]

    def shares(x: np.ndarray) -> list[float]:
        if not x.size:
            return [0.0] * bins
        counts = np.histogram(np.clip(x, lo, hi), bins=edges)[0]
        return (counts / x.size).round(4).tolist()

    return {
        "kind": kind,
        "labels": labels,
        "edges": edges.round(4).tolist(),
        "baseline": shares(base),
        "current": shares(cur),
    }


def _share(x: np.ndarray, mask: np.ndarray) -> float:
    return round(float(mask.sum()) / x.size, 4) if x.size else 0.0
