"""A live server's drift monitoring: each stream's segments as features, a sliding window per
variant compared with the baseline (:class:`~speechpipe.pipeline.monitoring.drift.DriftMonitor`),
human feedback as a rolling WER against the baseline's
(:class:`~speechpipe.pipeline.monitoring.concept.ConceptMonitor`; reported as the feature ``wer``
of stage ``concept``), each feature that crosses its threshold logged and returned (the drift part reports it
to the server's telemetry), and the figures for ``GET /admin/drift``, ``/metrics`` and the dashboard. Events come from the event loop and the
scheduler's threads; one lock keeps it consistent."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque

from speechpipe.pipeline.config import ConfigError
from speechpipe.pipeline.monitoring.baseline import load_profile, window_sizes, with_thresholds
from speechpipe.pipeline.monitoring.collector import FeatureCollector
from speechpipe.pipeline.monitoring.concept import FEEDBACK, ConceptDrift, ConceptMonitor
from speechpipe.pipeline.monitoring.drift import DriftMonitor, FeatureDrift
from speechpipe.pipeline.monitoring.histograms import feature_histogram
from speechpipe.pipeline.monitoring.quality import LEVEL, Calibration, Estimate, Sample, calibrate, estimate
from speechpipe.pipeline.monitoring.settings import MonitoringSettings

log = logging.getLogger("speechpipe.drift")

#: sessions whose segments are kept for the feedback that may come (the oldest dropped)
MAX_SESSIONS = 2000
#: segments kept of one session (a longer one is not used to calibrate: its feedback's truth is
#: of all of it)
MAX_SESSION_SEGMENTS = 500
#: feedback samples kept in the calibration beside the baseline's (the oldest dropped)
MAX_FEEDBACK_SAMPLES = 2000
#: estimates kept per variant for the dashboard's chart (one a judgement: an hour at 10 s)
QUALITY_HISTORY = 360


class DriftService:
    """See the module docstring.

    Args:
        settings: the ``[monitoring]`` table (its ``baseline`` is loaded here).
    """

    def __init__(self, settings: MonitoringSettings):
        try:
            profile = load_profile(settings.baseline)
        except ValueError as exc:
            raise ConfigError(f"monitoring.baseline: {exc}") from None
        self.profile = with_thresholds(profile, window_sizes(settings.window_segments, settings.min_segments))
        self.settings = settings
        self.monitor = DriftMonitor(self.profile, settings.window_segments, settings.min_segments)
        self.concept = ConceptMonitor(
            {v: spec.get("wer") for v, spec in self.profile["variants"].items()},
            settings.concept_window_words,
            settings.concept_min_words,
        )
        #: the estimated WER's calibration per baseline variant (profiles without one: none)
        self.calibrations = {
            v: Calibration.from_dict(spec["quality"]["calibration"])
            for v, spec in self.profile["variants"].items()
            if spec.get("quality", {}).get("calibration")
        }
        self._quality: dict[str, Estimate | None] = {}
        #: per baseline variant, the samples its calibration was fitted on, then feedback's
        self._samples = {
            v: [Sample(**d) for d in spec["quality"].get("samples", [])]
            for v, spec in self.profile["variants"].items()
            if spec.get("quality", {}).get("calibration")
        }
        self._feedback_samples: dict[str, list[Sample]] = {}
        #: each variant's estimates over time: [time, estimated_wer, low, high] at each judgement
        self._quality_history: dict[str, deque] = {}
        #: each recent session's segments (features by index), per variant: what its feedback is
        #: scored on
        self._sessions: OrderedDict[tuple[str, str], dict[int, dict] | None] = OrderedDict()
        self._lock = threading.Lock()
        self._latest: dict[str, list[FeatureDrift]] = {}
        self._concept: dict[str, ConceptDrift] = {}
        self._alerts: list[dict] = []  # raised and cleared, newest last (the dashboard's list)
        self._alerting: set[tuple[str, str]] = set()

    def observer(self, variant: str) -> FeatureCollector:
        """The observer of one stream served by ``variant``: its segments' features go in."""

        def add(stream_id: str, index: int, features: dict) -> None:
            with self._lock:
                self.monitor.add(variant, features)
                key = (variant, stream_id)
                segments = self._sessions.setdefault(key, {})
                self._sessions.move_to_end(key)
                if segments is not None:  # a session too long to calibrate with is None
                    segments[index] = dict(features)
                    if len(segments) > MAX_SESSION_SEGMENTS:
                        self._sessions[key] = None
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)

        return FeatureCollector(add)

    def feedback(self, variant: str, errors: int, words: int) -> None:
        """A human reference scored against ``variant`` (the deployment's scores)."""
        with self._lock:
            self.concept.add(variant, errors, words)

    def recalibrate(self, variant: str, session: str, errors: int, words: int, segment: int | None = None) -> bool:
        """Trusted feedback on a whole session ``variant`` served, or on its ``segment``: those
        segments and the truth join the calibration of the estimated WER, fitted again (a new
        version; ``source`` counts the feedback). False when the segments or a calibration are
        not here."""
        with self._lock:
            base = self.monitor.baseline_of(variant)
            kept = self._sessions.get((variant, session))
            if base not in self._samples or not kept or not words:
                return False
            if segment is None:
                segments = [kept[k] for k in sorted(kept)]
            elif segment in kept:
                segments = [kept[segment]]
            else:
                return False
            added = self._feedback_samples.setdefault(base, [])
            added.append(Sample.of(segments, errors, words))
            del added[:-MAX_FEEDBACK_SAMPLES]
            fitted = calibrate(self._samples[base] + added, f"baseline + {len(added)} feedback")
            if fitted is None:
                return False
            self.calibrations[base] = fitted
            log.info("estimated WER of %s recalibrated (%s): version %s", base, fitted.source, fitted.version)
            return True

    def evaluate(self, now: float | None = None) -> list[FeatureDrift]:
        """Judge every variant's window now; log and return the features that crossed their
        threshold either way."""
        with self._lock:
            variants = list(dict.fromkeys(self.monitor.variants() + self.concept.variants()))
            self._latest = {v: self.monitor.report(v) for v in variants}
            self._quality = {v: self._estimate(v) for v in variants}
            at = now if now is not None else time.time()
            for v, est in self._quality.items():
                if est is not None:
                    point = [round(at, 3), round(est.estimated_wer, 4), round(est.low, 4), round(est.high, 4)]
                    self._quality_history.setdefault(v, deque(maxlen=QUALITY_HISTORY)).append(point)
            for v in variants:
                alerts = [d.feature for d in self._latest[v] if d.alert]
                c = self._concept[v] = self.concept.report(v, alerts)
                if c.source == FEEDBACK and c.threshold is not None:
                    self._latest[v].append(FeatureDrift(v, "concept", "wer", c.wer, c.threshold, c.alert, c.words))
            crossed = []
            for drifts in self._latest.values():
                for d in drifts:
                    key = (d.variant, d.feature)
                    if d.alert != (key in self._alerting):
                        (self._alerting.add if d.alert else self._alerting.discard)(key)
                        crossed.append(d)
                        self._alerts.append(
                            {"time": now if now is not None else time.time(), "raised": d.alert, **d.to_dict()}
                            | {"variant": d.variant, "feature": d.feature}
                        )
            del self._alerts[:-200]
        for d in crossed:
            log.log(
                logging.WARNING if d.alert else logging.INFO,
                "drift: %s %s.%s %s: score %.3g, threshold %.3g over %d segments",
                d.variant,
                d.stage,
                d.feature,
                "drifted" if d.alert else "back within its baseline",
                d.score,
                d.threshold,
                d.n,
            )
        return crossed

    def _calibration(self, variant: str) -> Calibration | None:
        """The estimated WER's calibration of ``variant``'s baseline (None: none)."""
        base = self.monitor.baseline_of(variant)
        return self.calibrations.get(base) if base is not None else None

    def _estimate(self, variant: str) -> Estimate | None:
        """The window's estimated WER (None: no calibration, or fewer than ``min_segments``)."""
        calibration = self._calibration(variant)
        window = self.monitor.window(variant)
        if calibration is None or len(window) < self.settings.min_segments:
            return None
        return estimate(window, calibration)

    def quality(self) -> dict[str, dict]:
        """Each variant's estimated WER now (``estimated_wer``, ``low``, ``high``, ...)."""
        with self._lock:
            return {v: e.to_dict() for v, e in self._quality.items() if e is not None}

    def rows(self) -> list[tuple[str, str, str, float, float, bool]]:
        with self._lock:
            return [
                (d.variant, d.stage, d.feature, d.score, d.threshold, d.alert)
                for ds in self._latest.values()
                for d in ds
            ]

    def snapshot(self) -> dict:
        """``{"variants": {NAME: {"features": {FEATURE: {"score", "threshold", "alert", "n", "stage"}},
        "concept": {...}}}, "alerts": [...]}``."""
        with self._lock:
            return {
                "window_segments": self.settings.window_segments,
                "min_segments": self.settings.min_segments,
                "variants": {
                    v: {
                        "features": {d.feature: d.to_dict() for d in drifts},
                        "concept": self._concept[v].to_dict() if v in self._concept else None,
                        "quality": self._quality_doc(v),
                        "baseline": self.monitor.baseline_state(v),
                    }
                    for v, drifts in self._latest.items()
                },
                "alerts": list(self._alerts),
            }

    def _quality_doc(self, variant: str) -> dict | None:
        """``{"estimated_wer", "low", "high", "segments", "words", "calibration": {...}}``, or
        None without a calibration; ``estimated_wer`` None while the window is too small."""
        calibration = self._calibration(variant)
        if calibration is None:
            return None
        est = self._quality.get(variant)
        figures = est.to_dict() if est is not None else {"estimated_wer": None, "low": None, "high": None}
        figures.pop("calibration", None)
        return figures | {
            "history": list(self._quality_history.get(variant, ())),
            "level": LEVEL,
            "calibration": {
                "version": calibration.version,
                "source": calibration.source,
                "files": calibration.files,
                "segments": calibration.segments,
            },
        }

    def histograms(self, bins: int = 16) -> dict:
        """Per variant and feature, the baseline's and the current window's distributions on the
        same bins (the dashboard's charts)."""
        with self._lock:
            out: dict[str, dict] = {}
            for variant in self.monitor.variants():
                base = self.monitor.baseline_of(variant)
                if base is None:
                    continue
                window = self.monitor.window(variant)
                feats = self.profile["variants"][base]["features"]
                out[variant] = {
                    name: feature_histogram(
                        spec["kind"], spec["values"], [s[name] for s in window if name in s], bins=bins
                    )
                    for name, spec in feats.items()
                }
            return out
