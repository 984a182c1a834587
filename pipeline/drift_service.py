"""A live server's drift monitoring: each stream's segments as features, a sliding window per
variant compared with the baseline (:class:`~speechpipe.pipeline.monitoring.drift.DriftMonitor`),
alerts reported when a feature crosses its threshold, and the figures for ``GET /admin/drift``
and ``/metrics``. Events come from the event loop; one lock keeps it consistent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from speechpipe.pipeline.config import ConfigError
from speechpipe.pipeline.monitoring.baseline import load_profile
from speechpipe.pipeline.monitoring.collector import FeatureCollector
from speechpipe.pipeline.monitoring.drift import DriftMonitor, FeatureDrift
from speechpipe.pipeline.monitoring.settings import MonitoringSettings

log = logging.getLogger("speechpipe.drift")


class DriftService:
    """See the module docstring.

    Args:
        settings: the ``[monitoring]`` table (its ``baseline`` is loaded here).
        on_alert: told ``(drift, raised)`` when a feature crosses its threshold either way (the
            server's telemetry: a span and a log line); without it the crossing is logged.
    """

    def __init__(self, settings: MonitoringSettings, on_alert: Callable[[FeatureDrift, bool], None] | None = None):
        try:
            self.profile = load_profile(settings.baseline)
        except ValueError as exc:
            raise ConfigError(f"monitoring.baseline: {exc}") from None
        self.settings = settings
        self.monitor = DriftMonitor(self.profile, settings.window_segments, settings.min_segments)
        self.on_alert = on_alert
        self._lock = threading.Lock()
        self._latest: dict[str, list[FeatureDrift]] = {}
        self._alerting: set[tuple[str, str]] = set()

    def observer(self, variant: str) -> FeatureCollector:
        """The observer of one stream served by ``variant``: its segments' features go in."""

        def add(_stream_id: str, _index: int, features: dict) -> None:
            with self._lock:
                self.monitor.add(variant, features)

        return FeatureCollector(add)

    def evaluate(self) -> list[FeatureDrift]:
        """Judge every variant's window now; report the features that crossed their threshold."""
        with self._lock:
            variants = self.monitor.variants()
            self._latest = {v: self.monitor.report(v) for v in variants}
            crossed = []
            for drifts in self._latest.values():
                for d in drifts:
                    key = (d.variant, d.feature)
                    if d.alert != (key in self._alerting):
                        (self._alerting.add if d.alert else self._alerting.discard)(key)
                        crossed.append(d)
        for d in crossed:
            if self.on_alert is None:
                what = "drifted" if d.alert else "back within its baseline"
                log.warning(
                    "drift: %s %s.%s %s (score %.3g, threshold %.3g)",
                    d.variant,
                    d.stage,
                    d.feature,
                    what,
                    d.score,
                    d.threshold,
                )
                continue
            try:
                self.on_alert(d, d.alert)
            except Exception:  # telemetry must never break serving
                log.exception("drift alert report failed")
        return crossed

    def rows(self) -> list[tuple[str, str, str, float, float, bool]]:
        with self._lock:
            return [
                (d.variant, d.stage, d.feature, d.score, d.threshold, d.alert)
                for ds in self._latest.values()
                for d in ds
            ]

    def snapshot(self) -> dict:
        """``{"variants": {NAME: {"features": {FEATURE: {"score", "threshold", "alert", "n", "stage"}}}}}``."""
        with self._lock:
            return {
                "window_segments": self.settings.window_segments,
                "min_segments": self.settings.min_segments,
                "variants": {
                    v: {"features": {d.feature: d.to_dict() for d in drifts}} for v, drifts in self._latest.items()
                },
            }
