"""Data and concept drift of per-segment features against a baseline, pure and synchronous.

Statistics, one per kind of feature (after Evidently): quantities use the Wasserstein distance
between the window and the baseline divided by the baseline's standard deviation ("normed"
Wasserstein, comparable across features); 0/1 features the difference of the rates; categories
(the sample rate) the Jensen-Shannon distance of the frequencies.

Thresholds come from the baseline itself (after NannyML): windows of the monitored size are drawn
from the baseline's own segments, scored against the whole baseline, and the threshold is set
above what those windows reach (their 99.5th percentile, times ``margin``), so that data like the
baseline's does not alarm.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from speechpipe.stages.features import BINARY, CATEGORICAL

NUMERIC, RATE, CATEGORY = "numeric", "rate", "categorical"


def kind_of(feature: str) -> str:
    return CATEGORY if feature in CATEGORICAL else RATE if feature in BINARY else NUMERIC


def drift_score(kind: str, baseline: np.ndarray, window: np.ndarray, scale: float = 0.0) -> float:
    """How far ``window`` lies from ``baseline`` for a feature of ``kind`` (0: the same); a
    quantity's distance is divided by the baseline's spread, or ``scale`` where that is larger."""
    if not baseline.size or not window.size:
        return 0.0
    if kind == RATE:
        return abs(float(window.mean()) - float(baseline.mean()))
    if kind == CATEGORY:
        cats = sorted(set(baseline.tolist()) | set(window.tolist()))
        p = np.array([np.mean(baseline == c) for c in cats])
        q = np.array([np.mean(window == c) for c in cats])
        value = float(jensenshannon(p, q, base=2))
        return 0.0 if math.isnan(value) else value
    spread = max(float(baseline.std()), scale)
    if spread <= 1e-12:  # a constant baseline: any change is a change of its whole size
        spread = max(abs(float(baseline.mean())), 1.0)
    return float(wasserstein_distance(baseline, window)) / spread


def learn_threshold(
    kind: str,
    baseline: np.ndarray,
    size: int,
    groups: Sequence[str] | None = None,
    *,
    resamples: int = 400,
    quantile: float = 0.995,
    margin: float = 1.25,
    seed: int = 0,
    scale: float = 0.0,
) -> float:
    """The score that windows of ``size`` segments like the baseline's stay under (``scale``: see
    :func:`drift_score`).

    With ``groups`` (the stream of each baseline segment) a window is made of whole streams drawn
    at random and scored against the baseline's other streams: segments of one stream share a
    speaker, a room and a level, so windows of segments drawn one by one from the whole baseline
    wander far less than new traffic does (on the corpus, other utterances of the same sources
    then alarmed at 1.2-1.3 times such thresholds). Without groups, or with fewer than ``2 * size``
    segments (no room for a window and something to compare it with), segments are drawn one by one.
    """
    rng = random.Random(seed)
    scores = []
    if groups is not None and len(set(groups)) >= 3 and baseline.size >= 2 * size:
        by_group: dict[str, list[float]] = {}
        for g, v in zip(groups, baseline.tolist()):
            by_group.setdefault(g, []).append(v)
        names = sorted(by_group)
        for _ in range(resamples):
            rng.shuffle(names)
            window: list[float] = []
            k = 0
            while len(window) < size and k < len(names) - 1:  # keep at least one stream to compare with
                window += by_group[names[k]]
                k += 1
            rest = np.array([v for g in names[k:] for v in by_group[g]])
            scores.append(drift_score(kind, rest, np.array(window[:size]), scale))
    else:
        values = baseline.tolist()
        scores = [drift_score(kind, baseline, np.array(rng.choices(values, k=size)), scale) for _ in range(resamples)]
    floor = 1e-6 if kind != CATEGORY else 0.05
    return max(floor, float(np.quantile(scores, quantile)) * margin)


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one variant now."""

    variant: str
    stage: str
    feature: str
    score: float
    threshold: float
    alert: bool
    n: int

    def to_dict(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "alert": self.alert, "n": self.n, "stage": self.stage}


class DriftMonitor:
    """A sliding window of recent segments per variant, compared with a baseline profile.

    Args:
        profile: a baseline profile (:func:`speechpipe.pipeline.monitoring.baseline.build_profile`).
        window_segments: segments in the window (the profile's thresholds are for this size).
        min_segments: below this many segments in the window no feature is judged.
    """

    def __init__(self, profile: Mapping, window_segments: int | None = None, min_segments: int = 30) -> None:
        self.profile = profile
        self.window_segments = window_segments or int(profile["window_segments"])
        self.min_segments = min_segments
        self._windows: dict[str, deque[Mapping[str, float]]] = {}
        # the baseline's values as arrays, once: every report of every variant compares with them
        self._values = {
            (variant, name): np.array(spec["values"], dtype=float)
            for variant, base in profile["variants"].items()
            for name, spec in base["features"].items()
        }

    def baseline_of(self, variant: str) -> str | None:
        """The baseline variant ``variant`` is compared with: its own, or the only one there is."""
        variants = self.profile["variants"]
        if variant in variants:
            return variant
        return next(iter(variants)) if len(variants) == 1 else None

    def variants(self) -> list[str]:
        """The variants that have segments in a window."""
        return list(self._windows)

    def window(self, variant: str) -> list[Mapping[str, float]]:
        """The segments in ``variant``'s window now, oldest first."""
        return list(self._windows.get(variant, ()))

    def add(self, variant: str, features: Mapping[str, float]) -> None:
        """One segment's features (input and output together)."""
        self._windows.setdefault(variant, deque(maxlen=self.window_segments)).append(dict(features))

    def report(self, variant: str) -> list[FeatureDrift]:
        """Every feature of ``variant``'s window against its baseline (empty below ``min_segments``)."""
        base_name = self.baseline_of(variant)
        window = self._windows.get(variant, ())
        if base_name is None or len(window) < self.min_segments:
            return []
        out = []
        for name, spec in self.profile["variants"][base_name]["features"].items():
            values = np.array([seg[name] for seg in window if name in seg], dtype=float)
            if not values.size:
                continue
            threshold = _scaled(spec["thresholds"], len(values))
            score = drift_score(spec["kind"], self._values[(base_name, name)], values, spec.get("scale", 0.0))
            out.append(FeatureDrift(variant, spec["stage"], name, score, threshold, score > threshold, len(values)))
        return out

    def alerts(self, variants: Iterable[str] | None = None) -> list[FeatureDrift]:
        names = variants if variants is not None else list(self._windows)
        return [d for v in names for d in self.report(v) if d.alert]


def _scaled(thresholds: Mapping[str, float], n: int) -> float:
    """A threshold for a window of ``n`` from those learned: the nearest size at or below ``n``
    (smaller windows wander further, so its threshold is the safer one)."""
    sizes = sorted(int(k) for k in thresholds)
    below = [s for s in sizes if s <= n] or sizes[:1]
    return float(thresholds[str(below[-1])])
