"""Data and concept drift of per-segment features against a baseline, pure and synchronous.

Statistics, one per kind of feature (after Evidently): quantities use the Wasserstein distance
between the window and the baseline divided by the baseline's standard deviation ("normed"
Wasserstein, comparable across features); 0/1 features the difference of the rates; categories
(the sample rate) the Jensen-Shannon distance of the frequencies.

Thresholds come from the baseline itself (after NannyML): windows of the monitored size are drawn
from the baseline's own segments, scored against the whole baseline, and the threshold is set
above what those windows reach (their 99.5th percentile, times ``margin``), so that data like the
baseline's does not alarm. A baseline cannot show what it never saw: where it holds no empty
final, no guard drop or one sample rate, resampling it gives a threshold of 0 and one event would
alarm. So every threshold is at least :func:`sampling_floor`: what chance alone gives a window of
its size (binomial counts of events the baseline saw at most half a time in its size).

A baseline of a few recordings has seen little of how recordings differ (speakers, rooms,
microphones): with windows made of whole recordings, the spread of its windows' scores is an
estimate from few recordings, and other recordings of the same kind went past it (issue 26: a
16-file baseline alarmed on ``avg_logprob`` for clean recordings it had not seen). So a threshold
learned from whole recordings is raised by the upper 95 % confidence bound of a spread estimated
from that many recordings (:func:`recordings_factor`), and a quantity is not judged at all where
the baseline holds fewer than :data:`MIN_RECORDINGS` recordings or fewer than twice the window's
segments: the monitor says the baseline is too small for that window instead of raising alarms.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom, chi2, wasserstein_distance

from speechpipe.stages.features import BINARY, CATEGORICAL

NUMERIC, RATE, CATEGORY = "numeric", "rate", "categorical"
#: the fewest recordings (files, streams) a baseline needs before its quantities are judged
MIN_RECORDINGS = 8


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


def sampling_floor(kind: str, baseline: np.ndarray, size: int, quantile: float = 0.995) -> float:
    """The least threshold of a window of ``size`` segments, whatever resampling the baseline gave.

    Rates and categories: a window of segments like the baseline's holds, by chance, up to the
    ``quantile`` of a binomial count of events (an empty final, a segment of another sample rate)
    at the baseline's rate, kept at least half an event in the baseline's size, since an event it
    never saw is rare, not impossible (63 segments without an empty final, a window of 20: two
    empty finals are chance, three alarm). Quantities: as many segments as that moved by one
    spread of the baseline (a window's distance of 2/20 of a spread, where a baseline of 63
    segments never clipped, for two segments slightly unlike any it saw)."""
    if not baseline.size or size < 1:
        return 0.0
    unseen = 0.5 / (baseline.size + 1)
    if kind == NUMERIC:
        return float(binom.ppf(quantile, size, unseen)) / size
    if kind == RATE:
        rate = float(baseline.mean())
        p = min(max(rate, unseen), 1 - unseen)
        high, low = binom.ppf(quantile, size, p) / size, binom.ppf(1 - quantile, size, p) / size
        return max(high - rate, rate - low, 0.0)
    # categories: the most likely share of a window moved to a category the baseline lacks
    _, counts = np.unique(baseline, return_counts=True)
    moved = binom.ppf(quantile, size, unseen) / size
    base = counts / counts.sum()
    window = np.append(base * (1 - moved), moved)
    value = float(jensenshannon(np.append(base, 0.0), window, base=2))
    return 0.0 if math.isnan(value) else value


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
    confidence: float | None = 0.95,
) -> float:
    """The score that windows of ``size`` segments like the baseline's stay under (``scale``: see
    :func:`drift_score`; ``confidence``: of :func:`recordings_factor`, None for none).

    With ``groups`` (the stream of each baseline segment) a window is made of whole streams drawn
    at random and scored against the baseline's other streams: segments of one stream share a
    speaker, a room and a level, so windows of segments drawn one by one from the whole baseline
    wander far less than new traffic does (on the corpus, other utterances of the same sources
    then alarmed at 1.2-1.3 times such thresholds). Without groups, or with fewer than ``2 * size``
    segments (no room for a window and something to compare it with), segments are drawn one by one.
    """
    rng = random.Random(seed)
    scores = []
    recordings = len(set(groups)) if groups is not None else 0
    by_recording = recordings >= 3 and baseline.size >= 2 * size
    if by_recording:
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
    spread = float(np.quantile(scores, quantile)) * margin
    if by_recording and confidence is not None:
        spread *= recordings_factor(recordings, confidence)
    return max(sampling_floor(kind, baseline, size), spread)


def recordings_factor(recordings: int, confidence: float = 0.95) -> float:
    """How much more than it shows the spread of ``recordings`` recordings may be: the upper
    ``confidence`` bound of a standard deviation estimated from that many, over the estimate
    (sqrt((n - 1) / chi2 quantile)): 1.44 for 16 recordings, 1.24 for 40, 1.13 for 100."""
    if recordings < 2:
        return 1.0
    return math.sqrt((recordings - 1) / float(chi2.ppf(1 - confidence, recordings - 1)))


def too_small(recordings: int | None, segments: int, size: int) -> str | None:
    """Why a baseline of ``recordings`` recordings (None: not recorded) and ``segments`` segments
    cannot judge the quantities of a window of ``size`` segments, or None when it can."""
    if recordings is not None and recordings < MIN_RECORDINGS:
        return (
            f"baseline too small: {recordings} recordings; windows are judged from {MIN_RECORDINGS} "
            "recordings on (build it from more files)"
        )
    if segments < 2 * size:
        return (
            f"baseline too small: {segments} segments cannot judge a window of {size} "
            f"(it needs {2 * size}: a window and as much to compare it with)"
        )
    return None


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
    #: False where the baseline is too small to judge this feature at this window (never alerts)
    judged: bool = True

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "alert": self.alert,
            "n": self.n,
            "stage": self.stage,
            "judged": self.judged,
        }


class DriftMonitor:
    """A sliding window of recent segments per variant, compared with a baseline profile.

    Args:
        profile: a baseline profile (:func:`speechpipe.pipeline.monitoring.baseline.build_profile`).
        window_segments: segments in the window (the profile's thresholds are for this size).
        min_segments: below this many segments in the window no feature is judged.
        clear_ratio: a raised alert clears only once its score is under this share of the
            threshold, so that a window hovering at the threshold does not raise and clear an
            alert at every new segment (the harmful-VAD canary flapped on ``words_per_s`` 4 times
            in 8 s without it).
    """

    def __init__(
        self,
        profile: Mapping,
        window_segments: int | None = None,
        min_segments: int = 30,
        clear_ratio: float = 0.85,
    ) -> None:
        self.profile = profile
        self.window_segments = window_segments or int(profile["window_segments"])
        self.min_segments = min_segments
        self.clear_ratio = clear_ratio
        self._raised: set[tuple[str, str]] = set()
        self._windows: dict[str, deque[Mapping[str, float]]] = {}
        # the baseline's values as arrays, once: every report of every variant compares with them
        self._floors: dict[tuple[str, str, int], float] = {}
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

    def baseline_state(self, variant: str) -> dict | None:
        """``{"variant", "recordings", "segments", "judged", "reason"}``: the baseline ``variant``
        is compared with and whether it can judge the quantities of a full window (None: no
        baseline for it)."""
        base_name = self.baseline_of(variant)
        if base_name is None:
            return None
        base = self.profile["variants"][base_name]
        groups = base.get("groups")
        recordings = len(set(groups)) if groups else None
        reason = too_small(recordings, int(base["segments"]), self.window_segments)
        return {
            "variant": base_name,
            "recordings": recordings,
            "segments": int(base["segments"]),
            "judged": reason is None,
            "reason": reason,
        }

    def report(self, variant: str) -> list[FeatureDrift]:
        """Every feature of ``variant``'s window against its baseline (empty below ``min_segments``);
        an alert is raised above the threshold and held down to ``clear_ratio`` of it; quantities
        are scored but not judged where the baseline is too small (:func:`too_small`)."""
        base_name = self.baseline_of(variant)
        window = self._windows.get(variant, ())
        if base_name is None or len(window) < self.min_segments:
            return []
        out = []
        state = self.baseline_state(variant)
        for name, spec in self.profile["variants"][base_name]["features"].items():
            values = np.array([seg[name] for seg in window if name in seg], dtype=float)
            if not values.size:
                continue
            base = self._values[(base_name, name)]
            threshold = max(_scaled(spec["thresholds"], len(values)), self._floor(base_name, name, len(values)))
            score = drift_score(spec["kind"], base, values, spec.get("scale", 0.0))
            key = (variant, name)
            judged = spec["kind"] != NUMERIC or (
                state is not None and too_small(state["recordings"], state["segments"], len(values)) is None
            )
            alert = judged and (score > threshold or (key in self._raised and score > self.clear_ratio * threshold))
            (self._raised.add if alert else self._raised.discard)(key)
            out.append(FeatureDrift(variant, spec["stage"], name, score, threshold, alert, len(values), judged))
        return out

    def _floor(self, variant: str, feature: str, n: int) -> float:
        """:func:`sampling_floor` for a window of ``n`` (profiles written before it lack it)."""
        key = (variant, feature, n)
        if key not in self._floors:
            spec = self.profile["variants"][variant]["features"][feature]
            self._floors[key] = sampling_floor(spec["kind"], self._values[(variant, feature)], n)
        return self._floors[key]

    def alerts(self, variants: Iterable[str] | None = None) -> list[FeatureDrift]:
        names = variants if variants is not None else list(self._windows)
        return [d for v in names for d in self.report(v) if d.alert]


def _scaled(thresholds: Mapping[str, float], n: int) -> float:
    """A threshold for a window of ``n`` from those learned: the nearest size at or below ``n``
    (smaller windows wander further, so its threshold is the safer one)."""
    sizes = sorted(int(k) for k in thresholds)
    below = [s for s in sizes if s <= n] or sizes[:1]
    return float(thresholds[str(below[-1])])
