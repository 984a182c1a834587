"""A canary's window of figures per variant, and the gates that compare the candidate with the primary.

Which finals count where: a failed or lost final counts in the error rate only (it has no text, no
latency and no log-probability); the empty and guard-drop rates are over the finals that came back.
The latency p95 is the nearest-rank percentile: the smallest latency with at least 95 % of the
latencies at or below it (an observed value, never an interpolation between two).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

from speechpipe.pipeline.deploy.settings import GateSettings

#: slack on every comparison, so that 0.12 - 0.10 against a limit of 0.02 is not a failure.
_EPS = 1e-9

#: streams a side (ended in the window) the latency gate needs before it is judged. A final's
#: latency is mostly the load of the moment its stream ran in (every stream's jobs share the same
#: workers), so the finals of one stream are one draw of that load, not independent samples: a
#: candidate stream that happened to run while the machine was busy made every one of its finals
#: slow and rolled back a canary after that single stream ("1.72 > 1.5, candidate 2.89 s, primary
#: 1.68 s", issue 23). Three streams a side are three moments of load on each side.
LATENCY_MIN_STREAMS = 3


def minimum_evidence(gates: GateSettings) -> dict[str, str]:
    """What each gate needs on each side before it passes or fails (below it, ``passed`` is None),
    in words: the table docs/deployment.md gives. Above its minimum a gate still fails only on a
    difference surely past its limit (``gates.confidence``), so a minimum is the least evidence,
    never enough by itself to fail."""
    n = gates.min_finals
    return {
        "latency_p95_ratio": f"{n} latencies and {LATENCY_MIN_STREAMS} ended streams",
        "error_rate_delta": f"{n} finals",
        "empty_rate_delta": f"{n} answered finals",
        "logprob_delta": f"{n} non-empty finals with a log-probability",
        "guard_drop_delta": f"{n} answered finals",
        "wer_delta": f"{gates.min_feedback_words} reference words of feedback",
        "estimated_wer_delta": f"{n} answered finals with an estimate (a baseline with a calibration)",
        "agreement_min": f"{n} agreement scores (candidate side only)",
    }


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile of ``values`` (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(count: int, of: int) -> float | None:
    return count / of if of else None


@dataclass
class WindowStats:
    """What one variant produced in the current window (one canary step)."""

    finals: int = 0  # every final, failed or lost ones included
    errors: int = 0
    empties: int = 0
    guard_drops: int = 0
    latencies: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    feedback_errors: int = 0
    feedback_words: int = 0
    agreements: list[float] = field(default_factory=list)
    streams_ended: int = 0
    #: each answered final's expected word errors and reference words, estimated without a
    #: reference (pipeline/monitoring/quality.py; empty without a calibration)
    est_errors: list[float] = field(default_factory=list)
    est_words: list[float] = field(default_factory=list)

    def add_final(
        self,
        *,
        latency_s: float | None = None,
        error: bool = False,
        empty: bool = False,
        avg_logprob: float | None = None,
        guard_dropped: bool = False,
        est_errors: float | None = None,
        est_words: float | None = None,
    ) -> None:
        """One final: ``error`` when it failed or was lost (then the other figures are ignored)."""
        self.finals += 1
        if error:
            self.errors += 1
            return
        self.empties += bool(empty)
        self.guard_drops += bool(guard_dropped)
        if latency_s is not None:
            self.latencies.append(float(latency_s))
        # an empty final's log-probability is that of silence, not of words: it would skew the mean
        if avg_logprob is not None and not empty:
            self.logprobs.append(float(avg_logprob))
        if est_errors is not None and est_words is not None:
            self.est_errors.append(float(est_errors))
            self.est_words.append(float(est_words))

    def add_feedback(self, errors: int, words: int) -> None:
        """A human reference scored: ``errors`` word errors over ``words`` reference words."""
        self.feedback_errors += int(errors)
        self.feedback_words += int(words)

    def add_agreement(self, score: float) -> None:
        """1 - WER of the candidate against the primary on one stretch of the same audio."""
        self.agreements.append(float(score))

    def merge(self, other: WindowStats) -> None:
        """Add ``other``'s figures to these."""
        for name in ("finals", "errors", "empties", "guard_drops", "feedback_errors", "feedback_words"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.streams_ended += other.streams_ended
        self.latencies += other.latencies
        self.logprobs += other.logprobs
        self.agreements += other.agreements
        self.est_errors += other.est_errors
        self.est_words += other.est_words

    @property
    def answered(self) -> int:
        """Finals that came back (not failed or lost)."""
        return self.finals - self.errors

    def error_rate(self) -> float | None:
        return _share(self.errors, self.finals)

    def empty_rate(self) -> float | None:
        return _share(self.empties, self.answered)

    def guard_drop_rate(self) -> float | None:
        return _share(self.guard_drops, self.answered)

    def mean_logprob(self) -> float | None:
        return _mean(self.logprobs)

    def wer(self) -> float | None:
        return _share(self.feedback_errors, self.feedback_words)

    def mean_agreement(self) -> float | None:
        return _mean(self.agreements)

    def estimated_wer(self) -> float | None:
        """The WER estimated without references: expected errors over expected reference words."""
        words = sum(self.est_words)
        return sum(self.est_errors) / words if words > 0 else None

    def estimated_wer_var(self) -> float:
        """The sampling variance of :meth:`estimated_wer` (the ratio's delta method over finals)."""
        words, rate = sum(self.est_words), self.estimated_wer()
        if rate is None or len(self.est_words) < 2:
            return 0.0
        return sum((e - rate * w) ** 2 for e, w in zip(self.est_errors, self.est_words)) / words**2

    def figures(self) -> dict:
        """The window's figures by gate, for the deploy state (None where there is no data)."""
        return {
            "finals": self.finals,
            "streams_ended": self.streams_ended,
            "latency_p95_s": p95(self.latencies),
            "error_rate": self.error_rate(),
            "empty_rate": self.empty_rate(),
            "mean_logprob": self.mean_logprob(),
            "guard_drop_rate": self.guard_drop_rate(),
            "feedback_words": self.feedback_words,
            "wer": self.wer(),
            "estimated_wer": self.estimated_wer(),
            "agreement": self.mean_agreement(),
        }


@dataclass(frozen=True)
class GateResult:
    """One gate over one window.

    Attributes:
        name: the gate's key in ``[deploy.gates]``.
        passed: True / False, or None when either side lacked the data (the gate was not judged).
        candidate / primary: each side's figure (a p95 in seconds, a rate, a mean, a WER); the
            primary's is None for the agreement gate, which is one figure of the pair.
        threshold: the limit from the settings.
        detail: the figures and the comparison, in words.
        value: what was compared with the threshold (the ratio, the difference, the agreement).
        held: the figure is past the limit but not surely so (see ``GateSettings.confidence``):
            ``passed`` is None and the step waits for more data.
    """

    name: str
    passed: bool | None
    candidate: float | None
    primary: float | None
    threshold: float
    detail: str
    value: float | None = None
    held: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def failure(self) -> str:
        """``gate latency_p95_ratio failed: 3 > 1.5 (candidate 4.5, primary 1.5)``: a rollback's reason."""
        if self.name == "agreement_min":
            return f"gate {self.name} failed: {_fig(self.value)} < {self.threshold:g}"
        figures = f"candidate {_fig(self.candidate)}, primary {_fig(self.primary)}"
        return f"gate {self.name} failed: {_fig(self.value)} > {self.threshold:g} ({figures})"

    @classmethod
    def from_dict(cls, doc: dict) -> GateResult:
        return cls(
            **{k: doc.get(k) for k in ("name", "passed", "candidate", "primary", "threshold", "detail", "value")},
            held=bool(doc.get("held", False)),
        )


def _fig(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _delta_gate(
    name: str,
    enough: bool,
    cand: float | None,
    prim: float | None,
    limit: float,
    what: str,
    worse: str,
    se: float = 0.0,
    confidence: float = 0.0,
) -> GateResult:
    """A gate on ``cand - prim`` (``worse`` = "higher") or ``prim - cand`` ("lower") at most ``limit``.

    ``se`` is the standard error of that difference: past the limit, the gate fails only when
    ``(delta - limit) / se`` clears the one-sided ``confidence`` quantile, and holds otherwise."""
    if not enough or cand is None or prim is None:
        return GateResult(name, None, cand, prim, limit, f"not enough data for {what}")
    delta = cand - prim if worse == "higher" else prim - cand
    figures = f"{what} {cand:.4g} vs {prim:.4g}: {worse} by {delta:.4g}"
    if delta <= limit + _EPS:
        return GateResult(name, True, cand, prim, limit, f"{figures} <= {limit:g}", delta)
    if confidence > 0 and se > 0:
        z = (delta - limit) / se
        needed = NormalDist().inv_cdf(confidence)
        if z < needed:
            detail = f"{figures} > {limit:g}, not yet sure (z {z:.2f} < {needed:.2f}): holding for more data"
            return GateResult(name, None, cand, prim, limit, detail, delta, held=True)
        return GateResult(name, False, cand, prim, limit, f"{figures} > {limit:g} (z {z:.2f})", delta)
    return GateResult(name, False, cand, prim, limit, f"{figures} > {limit:g}", delta)


def _se_rates(c: float | None, nc: int, p: float | None, np_: int) -> float:
    """Standard error of the difference of two rates over ``nc`` and ``np_`` trials (normal
    approximation). Each rate is kept half a trial away from 0 and 1, so that a rate of 0 or 1
    over a few trials is not taken for a certainty; a WER above 1 counts as 1."""
    if c is None or p is None or not nc or not np_:
        return 0.0

    def var(rate: float, n: int) -> float:
        rate = min(max(rate, 0.5 / n), 1 - 0.5 / n)
        return rate * (1 - rate) / n

    return math.sqrt(var(c, nc) + var(p, np_))


def _se_means(a: list[float], b: list[float]) -> float:
    """Standard error of the difference of two means (Welch)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def _latency_gate(cand: WindowStats, prim: WindowStats, g: GateSettings) -> GateResult:
    """The p95 ratio gate. Past the limit it fails only when the candidate's latencies are surely
    slower: with ``T`` = limit x the primary's p95, a candidate whose p95 were at most ``T`` would
    have at most 5 % of its latencies above ``T``; it fails when the share above ``T`` rejects that
    at ``confidence`` (binomial tail) *and* rejects the primary's own share above ``T`` (Fisher's
    exact test), and holds otherwise. The second test is there because ``T`` is itself a sample:
    the primary's p95 from two finals is no more certain than the candidate's, and two slow
    candidate finals against two fast primary ones (p = 1/6) are no proof. A p95 of ten finals is
    their slowest. It needs ``LATENCY_MIN_STREAMS`` ended streams a side (see there)."""
    name, limit = "latency_p95_ratio", g.latency_p95_ratio
    enough = len(cand.latencies) >= g.min_finals and len(prim.latencies) >= g.min_finals
    streams = min(cand.streams_ended, prim.streams_ended)
    c, p = p95(cand.latencies), p95(prim.latencies)
    if not enough or c is None or p is None:
        return GateResult(name, None, c, p, limit, "not enough data for the final-latency p95")
    if streams < LATENCY_MIN_STREAMS:
        detail = (
            f"not enough streams for the final-latency p95: {cand.streams_ended} candidate and "
            f"{prim.streams_ended} primary streams ended, {LATENCY_MIN_STREAMS} a side needed"
        )
        return GateResult(name, None, c, p, limit, detail)
    ratio = c / p if p > 0 else None
    figures = f"p95 {c:.3f} s vs {p:.3f} s"
    if c <= g.latency_p95_floor_s + _EPS:
        return GateResult(name, True, c, p, limit, f"{figures}: under the floor of {g.latency_p95_floor_s:g} s", ratio)
    if ratio is not None and ratio <= limit + _EPS:
        return GateResult(name, True, c, p, limit, f"{figures}: ratio {ratio:.2f} <= {limit:g}", ratio)
    ratio_text = f"ratio {ratio:.2f}" if ratio is not None else "the primary's p95 is 0"
    if g.confidence > 0:
        bound = max(limit * p, g.latency_p95_floor_s)
        n = len(cand.latencies)
        k = sum(1 for x in cand.latencies if x > bound)
        n_prim = len(prim.latencies)
        k_prim = sum(1 for x in prim.latencies if x > bound)
        tail = sum(math.comb(n, i) * 0.05**i * 0.95 ** (n - i) for i in range(k, n + 1))
        tail = max(tail, _fisher_greater(k, n, k_prim, n_prim))
        if tail >= 1 - g.confidence:
            detail = (
                f"{figures}: {ratio_text} > {limit:g}, not yet sure ({k} of {n} finals over {bound:.2f} s, "
                f"primary {k_prim} of {n_prim}, p = {tail:.2f}): holding for more data"
            )
            return GateResult(name, None, c, p, limit, detail, ratio, held=True)
        return GateResult(
            name,
            False,
            c,
            p,
            limit,
            f"{figures}: {ratio_text} > {limit:g} ({k} of {n} over {bound:.2f} s, primary {k_prim} of {n_prim})",
            ratio,
        )
    return GateResult(name, False, c, p, limit, f"{figures}: {ratio_text} > {limit:g}", ratio)


def _fisher_greater(k: int, n: int, k_other: int, n_other: int) -> float:
    """One-sided p-value of Fisher's exact test that a share of ``k`` in ``n`` is greater than
    ``k_other`` in ``n_other``: the hypergeometric chance of ``k`` or more of all the ``k +
    k_other`` successes falling among the first ``n`` draws."""
    hits, total = k + k_other, n + n_other
    ways = math.comb(total, n)
    return sum(math.comb(hits, i) * math.comb(total - hits, n - i) for i in range(k, min(hits, n) + 1)) / ways


def evaluate_gates(candidate: WindowStats, primary: WindowStats, gates: GateSettings) -> list[GateResult]:
    """Every gate of ``gates``, the candidate's window against the primary's.

    A gate needs ``min_finals`` of its figures on both sides (the WER gate ``min_feedback_words``
    reference words on both sides, the agreement gate ``min_finals`` scores, the latency gate also
    ``LATENCY_MIN_STREAMS`` ended streams; :func:`minimum_evidence`); without them its ``passed``
    is None. The agreement gate is left out while ``agreement_min`` is 0 (off), the estimated-WER
    gate while ``estimated_wer_delta`` is 0 or no final has an estimate (no calibration).
    """
    n = gates.min_finals
    finals = candidate.finals >= n and primary.finals >= n
    answered = candidate.answered >= n and primary.answered >= n
    logprobs = len(candidate.logprobs) >= n and len(primary.logprobs) >= n
    feedback = (
        candidate.feedback_words >= gates.min_feedback_words and primary.feedback_words >= gates.min_feedback_words
    )
    results = [
        _latency_gate(candidate, primary, gates),
        _delta_gate(
            "error_rate_delta",
            finals,
            candidate.error_rate(),
            primary.error_rate(),
            gates.error_rate_delta,
            "share of failed/lost finals",
            "higher",
            _se_rates(candidate.error_rate(), candidate.finals, primary.error_rate(), primary.finals),
            gates.confidence,
        ),
        _delta_gate(
            "empty_rate_delta",
            answered,
            candidate.empty_rate(),
            primary.empty_rate(),
            gates.empty_rate_delta,
            "share of empty finals",
            "higher",
            _se_rates(candidate.empty_rate(), candidate.answered, primary.empty_rate(), primary.answered),
            gates.confidence,
        ),
        _delta_gate(
            "logprob_delta",
            logprobs,
            candidate.mean_logprob(),
            primary.mean_logprob(),
            gates.logprob_delta,
            "mean avg_logprob",
            "lower",
            _se_means(candidate.logprobs, primary.logprobs),
            gates.confidence,
        ),
        _delta_gate(
            "guard_drop_delta",
            answered,
            candidate.guard_drop_rate(),
            primary.guard_drop_rate(),
            gates.guard_drop_delta,
            "share of finals with a guard drop",
            "higher",
            _se_rates(candidate.guard_drop_rate(), candidate.answered, primary.guard_drop_rate(), primary.answered),
            gates.confidence,
        ),
        _delta_gate(
            "wer_delta",
            feedback,
            candidate.wer(),
            primary.wer(),
            gates.wer_delta,
            "WER on human feedback",
            "higher",
            _se_rates(candidate.wer(), candidate.feedback_words, primary.wer(), primary.feedback_words),
            gates.confidence,
        ),
    ]
    if gates.estimated_wer_delta > 0 and (candidate.est_words or primary.est_words):
        est = len(candidate.est_words) >= n and len(primary.est_words) >= n
        results.append(
            _delta_gate(
                "estimated_wer_delta",
                est,
                candidate.estimated_wer(),
                primary.estimated_wer(),
                gates.estimated_wer_delta,
                "WER estimated without references",
                "higher",
                math.sqrt(candidate.estimated_wer_var() + primary.estimated_wer_var()),
                gates.confidence,
            )
        )
    if gates.agreement_min > 0:
        score, limit = candidate.mean_agreement(), gates.agreement_min
        if len(candidate.agreements) < n or score is None:
            results.append(GateResult("agreement_min", None, score, None, limit, "not enough agreement scores"))
        else:
            ok = score >= limit - _EPS
            detail = f"mean agreement with the primary {score:.3f} {'>=' if ok else '<'} {limit:g}"
            results.append(GateResult("agreement_min", ok, score, None, limit, detail, score))
    return results
