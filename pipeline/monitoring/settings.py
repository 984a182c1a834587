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
    """

    baseline: str = ""
    window_segments: int = 100
    min_segments: int = 30

    def __post_init__(self) -> None:
        if self.min_segments < 1 or self.window_segments < self.min_segments:
            raise ValueError("monitoring.min_segments must be at least 1 and at most monitoring.window_segments")
