"""Telemetry of drift monitoring: the score and alert of every feature as gauges, and each alert
(raised or cleared) as a ``drift`` span with a ``drift.alert`` event (the service logs it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation
from speechpipe.telemetry.metric_specs import METRICS_BY_NAME

#: (variant, stage, feature, score, threshold, alert) of every feature judged now.
DriftRows = Callable[[], Iterable[tuple[str, str, str, float, float, bool]]]


def register_drift_gauges(inst: Instrumentation, rows: DriftRows) -> None:
    """``speechpipe.drift.score`` and ``speechpipe.drift.alert``, observed from ``rows``."""
    meter = inst.meter

    def observe(index: int):
        def callback(_options: CallbackOptions):
            out = []
            for variant, stage, feature, score, _threshold, alert in rows():
                attrs = {n.DRIFT_VARIANT: variant, n.DRIFT_STAGE: stage, n.DRIFT_FEATURE: feature}
                out.append(Observation(float(score) if index == 0 else float(alert), attrs))
            return out

        return callback

    for index, name in enumerate((n.DRIFT_SCORE, n.DRIFT_ALERT)):
        spec = METRICS_BY_NAME[name]
        meter.create_observable_gauge(spec.name, [observe(index)], spec.unit, spec.description)


#: each variant's estimated WER now: ``{variant: {"estimated_wer", "low", "high", ...}}``.
QualityFigures = Callable[[], dict[str, dict]]


def register_quality_gauges(inst: Instrumentation, figures: QualityFigures) -> None:
    """``speechpipe.quality.estimated_wer`` and its interval's bounds, per variant."""
    meter = inst.meter

    def observe(key: str):
        def callback(_options: CallbackOptions):
            return [
                Observation(float(q[key]), {n.DRIFT_VARIANT: variant})
                for variant, q in figures().items()
                if q.get(key) is not None
            ]

        return callback

    for key, name in (
        ("estimated_wer", n.QUALITY_ESTIMATED_WER),
        ("low", n.QUALITY_ESTIMATED_WER_LOW),
        ("high", n.QUALITY_ESTIMATED_WER_HIGH),
    ):
        spec = METRICS_BY_NAME[name]
        meter.create_observable_gauge(spec.name, [observe(key)], spec.unit, spec.description)


def drift_alert(
    inst: Instrumentation,
    variant: str,
    stage: str,
    feature: str,
    score: float,
    threshold: float,
    n_segments: int,
    raised: bool,
) -> None:
    """A feature crossed its threshold (``raised``) or came back under it."""
    attrs = {
        n.DRIFT_VARIANT: variant,
        n.DRIFT_STAGE: stage,
        n.DRIFT_FEATURE: feature,
        "drift.score": score,
        "drift.threshold": threshold,
        "drift.window_segments": n_segments,
        "drift.raised": raised,
    }
    with inst.tracer.start_as_current_span(n.SPAN_DRIFT, context=Context(), attributes=inst.base_attributes()) as span:
        span.add_event(n.EVENT_DRIFT_ALERT, attrs)
