"""The metrics of the human review queue (rows of :data:`speechpipe.telemetry.metric_specs.METRICS`)."""

from __future__ import annotations

from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_kinds import COUNTER, OBSERVABLE_GAUGE, MetricSpec

REVIEW_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        n.REVIEW_QUEUE,
        OBSERVABLE_GAUGE,
        "{item}",
        (),
        "software",
        "segments waiting for a reviewer (claimed ones included), in the shared store: every replica's",
    ),
    MetricSpec(
        n.REVIEW_OLDEST_AGE, OBSERVABLE_GAUGE, "s", (), "software", "age of the oldest segment waiting for review"
    ),
    MetricSpec(
        n.REVIEW_REVIEWED,
        COUNTER,
        "{item}",
        (n.AUTOMATION_LEVEL, n.REVIEW_REASON),
        "output",
        "segments reviewed by people on this server (throughput), by level and why they were sent",
    ),
    MetricSpec(
        n.REVIEW_AI_WER,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT,),
        "output",
        "WER of each variant's transcripts against the reviewers' (human vs AI), over every reviewed segment",
    ),
    MetricSpec(
        n.REVIEW_AI_WORDS,
        OBSERVABLE_GAUGE,
        "{word}",
        (n.DRIFT_VARIANT,),
        "output",
        "reviewed words each variant's human-vs-AI WER is measured on",
    ),
    MetricSpec(
        n.REVIEW_VAD_CUTS,
        COUNTER,
        "{word}",
        (),
        "output",
        "words reviewers on this server heard in the margins around segments: speech the VAD cut off",
    ),
    MetricSpec(
        n.REVIEW_VAD_MISSES,
        COUNTER,
        "{word}",
        (),
        "output",
        "words reviewers on this server heard in audio the VAD rejected (its audit sample): speech it missed",
    ),
)
