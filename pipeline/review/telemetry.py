"""Telemetry of the human review queue: the queue and its oldest item, and each variant's WER
against the reviewers' transcripts, as gauges (read from the store's figures, which every replica
shares); each review submitted on this server counted, with the words its reviewer heard outside
the VAD's segments (cut off in the margins, missed in rejected audio)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from opentelemetry.metrics import CallbackOptions, Observation

from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation
from speechpipe.telemetry.metric_specs import METRICS_BY_NAME

log = logging.getLogger("speechpipe.review")

#: the store's figures: ``{"queue", "oldest_age_s", "variants": {NAME: {"wer", "words"}}}``
Figures = Callable[[], dict]


def register_review_gauges(inst: Instrumentation, figures: Figures) -> None:
    """``speechpipe.review.queue``, ``.oldest_age``, ``.ai_wer`` and ``.ai_words``, observed from
    ``figures`` (empty before the first refresh: nothing is reported)."""

    def queue(_options: CallbackOptions) -> list[Observation]:
        f = figures()
        return [Observation(f["queue"], {})] if "queue" in f else []

    def oldest(_options: CallbackOptions) -> list[Observation]:
        age = figures().get("oldest_age_s")
        return [Observation(age, {})] if age is not None else []

    def per_variant(key: str) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_options: CallbackOptions) -> list[Observation]:
            rows = figures().get("variants", {})
            return [Observation(v[key], {n.DRIFT_VARIANT: name}) for name, v in rows.items() if v.get(key) is not None]

        return observe

    for name, callback in (
        (n.REVIEW_QUEUE, queue),
        (n.REVIEW_OLDEST_AGE, oldest),
        (n.REVIEW_AI_WER, per_variant("wer")),
        (n.REVIEW_AI_WORDS, per_variant("words")),
    ):
        spec = METRICS_BY_NAME[name]
        inst.meter.create_observable_gauge(spec.name, [callback], spec.unit, spec.description)


def reviewed(inst: Instrumentation, variant: str, level: str, reason: str) -> None:
    """One segment reviewed on this server."""
    attrs = inst.base_attributes() | {n.PIPELINE_VARIANT: variant, n.AUTOMATION_LEVEL: level, n.REVIEW_REASON: reason}
    inst.instruments[n.REVIEW_REVIEWED].add(1, attrs)


def vad_words(inst: Instrumentation, variant: str, cut: int, missed: int) -> None:
    """The words a review found the VAD cut off (``speechpipe.review.vad_cuts``) and missed
    (``speechpipe.review.vad_misses``)."""
    attrs = inst.base_attributes() | {n.PIPELINE_VARIANT: variant}
    if cut:
        inst.instruments[n.REVIEW_VAD_CUTS].add(cut, attrs)
    if missed:
        inst.instruments[n.REVIEW_VAD_MISSES].add(missed, attrs)
