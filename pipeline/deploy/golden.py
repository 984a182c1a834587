"""The golden-set gate: before a candidate takes any traffic (a canary's first step, a shadow's
first copy, a blue/green switch to it), it is evaluated against the primary on a golden set (a
folder of audio with ``.txt`` references: typically the test split of ``speechpipe review
export``, what production already taught us) with ``speechpipe eval``'s own scoring; a candidate
whose WER there is worse than the primary's by more than ``deploy.max_golden_wer_delta`` is
refused, with both figures.

:class:`GoldenVerdict` and :func:`verdict_of` are pure (an ``eval.json`` document in, the verdict
and its :class:`~speechpipe.pipeline.deploy.gates.GateResult` out). :func:`run_golden` runs the
evaluation (slow: every golden file through both variants) and never raises: an evaluation that
cannot run is a verdict that fails closed, saying why. The deployment runs it in a thread of its
own, off the serving path (:class:`~speechpipe.pipeline.deploy.deployment.Deployment`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from speechpipe.pipeline.deploy.gates import GateResult

if TYPE_CHECKING:  # the config imports the deploy settings, whose package holds this module
    from speechpipe.pipeline.config import Config

log = logging.getLogger("speechpipe.deploy")

#: the gate's name in the deploy history (its ``gates``) and on the dashboard.
GATE = "golden_wer_delta"
#: the Whisper window of the golden evaluation: each segment decoded alone, as live.
LIVE_WINDOW_S = 1.0


@dataclass(frozen=True)
class GoldenVerdict:
    """The candidate against the primary on the golden set.

    Attributes:
        primary / candidate: the variants' names; ``*_id`` their config ids (a verdict holds for
            those configurations only).
        primary_wer / candidate_wer: each one's WER over the golden set (None: not measured).
        limit: ``deploy.max_golden_wer_delta``.
        files / words: the golden set's scored files and reference words.
        error: why the evaluation could not run (then the gate fails closed).
    """

    primary: str
    primary_id: str
    candidate: str
    candidate_id: str
    primary_wer: float | None
    candidate_wer: float | None
    limit: float
    files: int = 0
    words: int = 0
    error: str | None = None

    @property
    def delta(self) -> float | None:
        if self.primary_wer is None or self.candidate_wer is None:
            return None
        return self.candidate_wer - self.primary_wer

    @property
    def passed(self) -> bool:
        return self.error is None and self.delta is not None and self.delta <= self.limit + 1e-9

    def describe(self) -> str:
        """``golden set (40 files, 812 words): harmful WER 21.3 % against default 6.2 % (+15.1
        points > 2.0)``: what a refusal or an admission says."""
        if self.error is not None:
            return f"golden set: the evaluation of {self.candidate!r} failed: {self.error}"
        if self.delta is None:
            return f"golden set ({self.files} files): no WER could be measured (no reference words)"
        verdict = ">" if not self.passed else "<="
        return (
            f"golden set ({self.files} files, {self.words} words): {self.candidate} WER {100 * self.candidate_wer:.1f} % "
            f"against {self.primary} {100 * self.primary_wer:.1f} % ({100 * self.delta:+.1f} points {verdict} "
            f"{100 * self.limit:.1f})"
        )

    def gate(self) -> GateResult:
        """The verdict as a gate of the deploy history (the dashboard's gate table shows it)."""
        return GateResult(
            GATE, self.passed, self.candidate_wer, self.primary_wer, self.limit, self.describe(), self.delta
        )

    def to_dict(self) -> dict:
        """The fields, and ``passed`` and ``delta`` as :attr:`passed` and :attr:`delta` judge them
        (so a reader of the deploy state, the dashboard, never judges again)."""
        return dataclasses.asdict(self) | {"passed": self.passed, "delta": self.delta}

    @classmethod
    def from_dict(cls, doc: dict) -> GoldenVerdict:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in fields})


def verdict_of(doc: dict, primary: Config, candidate: Config, limit: float) -> GoldenVerdict:
    """The verdict of an ``eval.json`` document that scored the two variants (``primary`` and
    ``candidate``: their configs, ``pipeline.variant`` their names)."""
    p, c = primary.pipeline.variant, candidate.pipeline.variant
    variants = doc.get("variants") or {}
    missing = [name for name in (p, c) if name not in variants]
    if missing:
        return GoldenVerdict(
            p, primary.variant_id, c, candidate.variant_id, None, None, limit, error=f"{missing} not scored"
        )
    return GoldenVerdict(
        p,
        primary.variant_id,
        c,
        candidate.variant_id,
        variants[p].get("wer"),
        variants[c].get("wer"),
        limit,
        files=int(variants[p].get("scored_files") or 0),
        words=int(variants[p].get("ref_words") or 0),
    )


def run_golden(
    golden: str | Path,
    primary: Config,
    candidate: Config,
    limit: float,
    *,
    engine_factory: Callable | None = None,
    threads: int = 1,
) -> GoldenVerdict:
    """Evaluate ``candidate`` against ``primary`` on the golden folder (``speechpipe eval``'s
    scoring, no report). Each variant's model is loaded for the evaluation with ``threads`` CPU
    threads (the serving engines are left to the streams), unless ``engine_factory`` is given.
    Never raises: a failure is a verdict with ``error``.

    Both variants decode each segment alone (``asr.window_s`` = :data:`LIVE_WINDOW_S`), as the
    live streams they will serve do: offline packing puts neighbouring segments in one Whisper
    window, where a VAD that cuts words at segment edges is forgiven (issue 10's harmful VAD: +0.8
    points packed, against several times that alone; docs/evaluation.md)."""
    from speechpipe.pipeline.evaluate.runner import EvalOptions, evaluate
    from speechpipe.pipeline.variants import Variant
    from speechpipe.stages.asr import AsrEngine, load_checked

    def own_engine(cfg):
        cfg = dataclasses.replace(cfg, threads=threads)
        return AsrEngine(cfg, model=load_checked(cfg))

    names = (primary.pipeline.variant, candidate.pipeline.variant)
    live = {"asr.window_s": LIVE_WINDOW_S}
    try:
        if not Path(golden).is_dir():
            raise FileNotFoundError(f"deploy.golden: no folder {str(golden)!r}")
        with tempfile.TemporaryDirectory(prefix="speechpipe-golden-") as out:
            result = evaluate(
                [golden],
                [Variant(names[0], primary.with_overrides(live)), Variant(names[1], candidate.with_overrides(live))],
                out,
                options=EvalOptions(report=False, baseline=names[0], label_check=False),
                engine_factory=engine_factory or own_engine,
                log=lambda msg: log.info("golden set: %s", msg),
            )
            return verdict_of(result.doc, primary, candidate, limit)
    except Exception as exc:  # the gate fails closed, saying why; serving goes on
        log.exception("golden set: the evaluation of %s against %s failed", names[1], names[0])
        return GoldenVerdict(
            names[0], primary.variant_id, names[1], candidate.variant_id, None, None, limit, error=repr(exc)
        )
