"""The dashboard's figures, read from the server's own ``/metrics`` text (so the page and a
Prometheus scrape can never disagree), pure and synchronous.

Totals are since the server started; ``recent`` figures are the difference between now and the
exposition about ``recent_s`` ago (what Prometheus' ``increase()`` would give), so a change shows
within a minute instead of being diluted by hours of history. Quantiles are read from histogram
buckets the way Prometheus' ``histogram_quantile`` reads them (linear within the bucket).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

VARIANT, ROLE = "pipeline_variant", "deploy_role"


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


@dataclass(frozen=True)
class Query:
    """Sums over samples of one metric, optionally restricted to label values."""

    samples: Samples

    def select(self, name: str, **where: str) -> Iterable[tuple[dict, float]]:
        for (n, labels), value in self.samples.items():
            if n != name:
                continue
            d = dict(labels)
            if all(d.get(k) == v for k, v in where.items()):
                yield d, value

    def total(self, name: str, **where: str) -> float:
        return sum(v for _, v in self.select(name, **where))

    def by(self, name: str, key: str, **where: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in self.select(name, **where):
            out[labels.get(key, "")] = out.get(labels.get(key, ""), 0.0) + value
        return out

    def buckets(self, name: str, **where: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets ``(upper bound, count)``, summed over series."""
        acc: dict[float, float] = {}
        for labels, value in self.select(f"{name}_bucket", **where):
            le = float(labels["le"])
            acc[le] = acc.get(le, 0.0) + value
        return sorted(acc.items())

    def mean(self, name: str, **where: str) -> float | None:
        count = self.total(f"{name}_count", **where)
        return self.total(f"{name}_sum", **where) / count if count else None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile(q, ...)`` over cumulative ``buckets`` (None without observations)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # Prometheus answers the highest finite bound
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def minus(now: Samples, before: Samples) -> Samples:
    """Counters and histograms as increases since ``before`` (gauges would be meaningless: only
    use the result for cumulative series)."""
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


def _latency(q: Query, **where: str) -> dict:
    b = q.buckets("speechpipe_final_latency_seconds", **where)
    return {"p50": quantile(0.5, b), "p95": quantile(0.95, b), "n": int(b[-1][1]) if b else 0}


def service_figures(q: Query, recent: Query) -> dict:
    """The whole server: streams, refusals, lost finals, latency, ASR queue and RTF, CPU, memory."""
    return {
        "streams_open": q.total("speechpipe_streams_active"),
        "accepted": q.total("speechpipe_input_streams_total"),
        "refused": q.total("speechpipe_streams_rejected_total"),
        "refused_by": q.by("speechpipe_streams_rejected_total", "stream_reject_reason"),
        "lost": q.total("speechpipe_finals_lost_total"),
        "lost_by": q.by("speechpipe_finals_lost_total", "segment_lost"),
        "finals": q.total("speechpipe_output_segments_total"),
        "latency": _latency(q),
        "latency_recent": _latency(recent),
        "queue": q.by("speechpipe_asr_queue_depth", "asr_kind"),
        "rtf_p50": quantile(0.5, q.buckets("speechpipe_asr_rtf", asr_kind="final")),
        "rtf_recent_p50": quantile(0.5, recent.buckets("speechpipe_asr_rtf", asr_kind="final")),
        "cpu": max(q.by("process_cpu_utilization", VARIANT).values(), default=None),
        "memory_bytes": max(q.by("process_memory_usage_bytes", VARIANT).values(), default=None),
    }


def variant_figures(q: Query, recent: Query, name: str) -> dict:
    """One variant (every role it served in): streams, finals, latency, input and output figures."""
    v = {VARIANT: name}
    finals = q.total("speechpipe_output_segments_total", **v)
    empty = q.total("speechpipe_output_segments_total", asr_empty="true", **v)
    r_finals = recent.total("speechpipe_output_segments_total", **v)
    r_empty = recent.total("speechpipe_output_segments_total", asr_empty="true", **v)
    neg_logprob = q.mean("speechpipe_output_neg_avg_logprob", **v)
    rms = q.mean("speechpipe_input_rms_headroom_dB", audio_scope="segment", **v)
    return {
        "roles": sorted({labels.get(ROLE, "") for labels, _ in q.select("speechpipe_input_streams_total", **v)}),
        "streams": q.total("speechpipe_input_streams_total", **v),
        "streams_open": q.total("speechpipe_streams_active", **v),
        "finals": finals,
        "words": q.total("speechpipe_output_words_total", **v),
        "empty": empty,
        "empty_rate": empty / finals if finals else None,
        "empty_rate_recent": r_empty / r_finals if r_finals else None,
        "lost": q.total("speechpipe_finals_lost_total", **v),
        "latency": _latency(q, **v),
        "latency_recent": _latency(recent, **v),
        "avg_logprob": -neg_logprob if neg_logprob is not None else None,
        "no_speech_prob": q.mean("speechpipe_output_no_speech_prob", **v),
        "guard_drops": q.total("speechpipe_output_hallucination_drops_total", **v),
        "rms_dbfs": -rms if rms is not None else None,
        "speech_ratio": q.mean("speechpipe_vad_speech_ratio", **v),
        "sample_rates": q.by("speechpipe_input_streams_total", "audio_sample_rate", **v),
        "feedback_wer": _ratio(
            q.total("speechpipe_feedback_errors_total", **v), q.total("speechpipe_feedback_words_total", **v)
        ),
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


class DashboardFeed:
    """Turns successive ``/metrics`` expositions into the dashboard's figures.

    Args:
        recent_s: the span of the ``recent`` figures.
        human_s: the span of each variant's ``human_wer_recent`` (human references come a few a
            minute at best: a minute would mostly hold none).
    """

    def __init__(self, recent_s: float = 60.0, human_s: float = 300.0) -> None:
        self.recent_s, self.human_s = recent_s, human_s
        self._past: deque[tuple[float, Samples]] = deque()

    def _before(self, now: float, span: float) -> tuple[float, Samples]:
        """The latest exposition at least ``span`` old (the oldest kept when none is)."""
        found = self._past[0]
        for then, samples in self._past:
            if then > now - span:
                break
            found = (then, samples)
        return found

    def update(self, now: float, text: str, extra: Mapping[str, object] | None = None) -> dict:
        """The figures at ``now`` from the exposition ``text`` (``extra`` is merged in as is)."""
        samples = parse(text)
        self._past.append((now, samples))
        longest = max(self.recent_s, self.human_s)
        while len(self._past) > 1 and self._past[1][0] <= now - longest:
            self._past.popleft()
        then, before = self._before(now, self.recent_s)
        q, recent = Query(samples), Query(minus(samples, before) if then < now else samples)
        human_then, human_before = self._before(now, self.human_s)
        human = Query(minus(samples, human_before) if human_then < now else samples)
        service = service_figures(q, recent)
        recent_s = min(self.recent_s, now - then) if then < now else 0.0
        service["accepted_recent"] = recent.total("speechpipe_input_streams_total")
        service["refused_recent"] = recent.total("speechpipe_streams_rejected_total")
        names = sorted({dict(labels).get(VARIANT) for (_, labels) in samples} - {None, ""})
        variants = {}
        for name in names:
            v = variant_figures(q, recent, name)
            v["human_wer_recent"] = _ratio(
                human.total("speechpipe_feedback_errors_total", **{VARIANT: name}),
                human.total("speechpipe_feedback_words_total", **{VARIANT: name}),
            )
            variants[name] = v
        return {
            "time": now,
            "recent_s": recent_s,
            "human_s": min(self.human_s, now - human_then) if human_then < now else 0.0,
            "service": service,
            "variants": variants,
            **(extra or {}),
        }
