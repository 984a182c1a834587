"""Concept drift: is the output getting worse for the same kind of input? Pure and synchronous.

Where humans send references (``POST /v1/feedback``), a variant's word error rate over a rolling
window of its most recent scored words is compared with the WER the baseline measured on its
own references. The threshold comes from the baseline itself, as for data drift: windows of
about the same number of words are drawn from the baseline's scored files (whole files, since a
file's errors come together), and the threshold sits above the WER those windows reach (their
99.5th percentile, times a margin). Where no feedback has come in, there is no WER to compare:
the output-confidence features of the data-drift report (mean log-probability, word probability,
no-speech probability, empty finals, and the share of segments where the hallucination guard
judged Whisper's confidences too low and dropped text) stand in, and the report says so
(``source``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: output features that stand in for accuracy where no reference comes in.
CONFIDENCE_FEATURES = ("avg_logprob", "word_probability", "no_speech_prob", "empty", "guard_drops")
FEEDBACK, CONFIDENCE = "feedback", "confidence"


@dataclass(frozen=True)
class ConceptDrift:
    """One variant's accuracy now: from feedback (``wer`` against ``baseline_wer``) or, without
    enough feedback, from the confidence stand-ins (``alert`` when one of them drifted)."""

    variant: str
    source: str
    alert: bool
    wer: float | None = None
    baseline_wer: float | None = None
    threshold: float | None = None
    words: int = 0
    items: int = 0
    stand_ins: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "alert": self.alert,
            "wer": self.wer,
            "baseline_wer": self.baseline_wer,
            "threshold": self.threshold,
            "words": self.words,
            "items": self.items,
            "stand_ins": list(self.stand_ins),
        }


def learn_wer_threshold(
    files: Sequence[Sequence[int]],
    words: int,
    *,
    resamples: int = 400,
    quantile: float = 0.995,
    margin: float = 1.25,
    seed: int = 0,
) -> float:
    """The WER that windows of about ``words`` scored words, drawn from the baseline's files
    (``[errors, words]`` each, with replacement), stay under."""
    usable = [(int(e), int(w)) for e, w in files if int(w) > 0]
    if not usable:
        return 0.0
    rng = random.Random(seed)
    rates = []
    for _ in range(resamples):
        errors = total = 0
        while total < words:
            e, w = rng.choice(usable)
            errors, total = errors + e, total + w
        rates.append(errors / total)
    base = sum(e for e, _ in usable) / sum(w for _, w in usable)
    return max(base + 0.01, float(np.quantile(rates, quantile)) * margin)


class ConceptMonitor:
    """Rolling feedback WER per variant against the baseline's WER.

    Args:
        baseline: per variant, the profile's ``wer`` entry (``{"errors", "words", "files"}``);
            variants without one get no threshold (their WER is shown, never alarmed).
        window_words: the most recent scored words kept per variant.
        min_words: below this many words in the window the confidence stand-ins are used.
    """

    def __init__(self, baseline: Mapping[str, Mapping], window_words: int = 400, min_words: int = 100) -> None:
        self.window_words = window_words
        self.min_words = min_words
        self.baseline = {v: b for v, b in baseline.items() if b and b.get("words")}
        self._windows: dict[str, deque[tuple[int, int]]] = {}
        sizes = sorted({min_words, (min_words + window_words) // 2, window_words})
        self._thresholds = {
            v: {n: learn_wer_threshold(b.get("files") or [[b["errors"], b["words"]]], n) for n in sizes}
            for v, b in self.baseline.items()
        }

    def baseline_of(self, variant: str) -> str | None:
        if variant in self.baseline:
            return variant
        return next(iter(self.baseline)) if len(self.baseline) == 1 else None

    def variants(self) -> list[str]:
        """The variants that have feedback."""
        return list(self._windows)

    def add(self, variant: str, errors: int, words: int) -> None:
        """One scored feedback item of ``variant``; the oldest leave once the window is full."""
        window = self._windows.setdefault(variant, deque())
        window.append((int(errors), int(words)))
        while len(window) > 1 and sum(w for _, w in window) - window[0][1] >= self.window_words:
            window.popleft()

    def report(self, variant: str, confidence_alerts: Sequence[str] = ()) -> ConceptDrift:
        """``variant`` now; ``confidence_alerts`` are its output-confidence features in alert."""
        window = self._windows.get(variant, ())
        words = sum(w for _, w in window)
        stand_ins = tuple(f for f in confidence_alerts if f in CONFIDENCE_FEATURES)
        if words < self.min_words:
            return ConceptDrift(
                variant, CONFIDENCE, bool(stand_ins), words=words, items=len(window), stand_ins=stand_ins
            )
        wer = sum(e for e, _ in window) / words
        base = self.baseline_of(variant)
        if base is None:
            return ConceptDrift(variant, FEEDBACK, False, wer=wer, words=words, items=len(window))
        b = self.baseline[base]
        thresholds = self._thresholds[base]
        size = max([n for n in thresholds if n <= words] or [min(thresholds)])
        threshold = thresholds[size]
        return ConceptDrift(
            variant,
            FEEDBACK,
            wer > threshold,
            wer=wer,
            baseline_wer=b["errors"] / b["words"],
            threshold=threshold,
            words=words,
            items=len(window),
        )
