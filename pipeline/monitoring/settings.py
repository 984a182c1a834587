"""The ``[monitoring]`` table (pure; the pipeline's config imports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MonitoringSettings:
    """Drift monitoring of a live server (``[monitoring]``; docs/monitoring.md).

    Attributes:
        baseline: a profile written by ``speechpipe baseline build`` ("" : no drift monitoring).
        window_segments: the recent segments of each variant compared with the baseline.
        min_segments: no feature is judged before a variant's window holds this many.
        concept_window_words: the most recent feedback words of each variant whose WER is
            compared with the baseline's (concept drift).
        concept_min_words: below this many feedback words the output-confidence features stand in.
    """

    baseline: str = ""
    window_segments: int = 100
    min_segments: int = 30
    concept_window_words: int = 400
    concept_min_words: int = 100

    def __post_init__(self) -> None:
        if self.min_segments < 1 or self.window_segments < self.min_segments:
            raise ValueError("monitoring.min_segments must be at least 1 and at most monitoring.window_segments")
        if self.concept_min_words < 1 or self.concept_window_words < self.concept_min_words:
            raise ValueError(
                "monitoring.concept_min_words must be at least 1 and at most monitoring.concept_window_words"
            )
