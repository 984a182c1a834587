"""The ``[deploy]`` table of the config file and its ``[deploy.gates]`` sub-table.

Kept free of imports from the rest of the pipeline: :mod:`speechpipe.pipeline.config` imports this
module, so importing anything of it back would be a cycle. Every error names its key as
``deploy.KEY`` or ``deploy.gates.KEY``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MODES = ("single", "shadow", "canary", "bluegreen")
STICKY = ("stream", "client")
#: the modes that deploy a second variant beside the primary.
PAIRED_MODES = ("shadow", "canary", "bluegreen")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GateSettings:
    """The checks a canary's candidate must pass against the primary, over the same window.

    A gate is evaluated only when both sides have enough data in the window; until then it neither
    passes nor fails (it does not block a step, and it cannot roll one back).

    Attributes:
        min_finals: finals each side needs in the window before the per-final gates count.
        min_feedback_words: reference words of human feedback each side needs for the WER gate.
        latency_p95_ratio: candidate final-latency p95 / primary p95 must be at most this.
        latency_p95_floor_s: the latency gate also passes when the candidate's p95 is at most this,
            so that a ratio of two tiny figures (0.09 s against 0.03 s) never fails it.
        error_rate_delta: candidate share of failed or lost finals minus the primary's, at most.
        empty_rate_delta: candidate share of finals with empty text minus the primary's, at most.
        logprob_delta: primary mean ``avg_logprob`` minus the candidate's, at most (the candidate
            may be this much less confident).
        guard_drop_delta: candidate share of finals where the hallucination guard dropped
            something, minus the primary's, at most.
        wer_delta: candidate WER on human feedback minus the primary's (absolute), at most.
        estimated_wer_delta: candidate WER estimated without references minus the primary's
            (absolute), at most: judged on every final, no feedback needed, when the server has a
            baseline with a calibration (``[monitoring] baseline``; docs/monitoring.md); 0 turns
            the gate off.
        confidence: how sure a gate must be before it fails or passes. The rates and means of a
            window are samples: a candidate fails a gate only when its figure is worse than the
            primary's by more than the limit with this one-sided confidence (a normal
            approximation of the difference), and passes only when its point estimate is within
            the limit; between the two the gate holds the step until more data comes in. 0
            judges the point estimates alone. With two 30 s streams a side, the same pipeline
            under another name showed a feedback WER of 10.7 % against 2.9 % (different audio on
            each side): a plain 3-point limit rolled it back.
        agreement_min: 0 turns the gate off; else the candidate's mean agreement with the primary,
            1 - WER(candidate vs primary) over canary streams the primary also transcribed in the
            background, must be at least this (needs ``min_finals`` scores).
    """

    min_finals: int = 5
    min_feedback_words: int = 20
    latency_p95_ratio: float = 1.5
    latency_p95_floor_s: float = 0.5
    error_rate_delta: float = 0.02
    empty_rate_delta: float = 0.10
    logprob_delta: float = 0.25
    guard_drop_delta: float = 0.10
    wer_delta: float = 0.03
    estimated_wer_delta: float = 0.05
    agreement_min: float = 0.0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for key in ("min_finals", "min_feedback_words"):
            value = getattr(self, key)
            if not _integer(value) or value < 1:
                raise ValueError(f"deploy.gates.{key} must be an integer >= 1, not {value!r}")
        for f in dataclasses.fields(self):
            if f.name.startswith("min_"):
                continue
            value = getattr(self, f.name)
            if not _number(value) or value < 0:
                raise ValueError(f"deploy.gates.{f.name} must be a number >= 0, not {value!r}")
            object.__setattr__(self, f.name, float(value))
        if self.latency_p95_ratio <= 0:
            raise ValueError(f"deploy.gates.latency_p95_ratio must be > 0, not {self.latency_p95_ratio!r}")
        if self.confidence >= 1:
            raise ValueError(f"deploy.gates.confidence must be in [0, 1), not {self.confidence!r}")
        if self.agreement_min > 1:
            raise ValueError(f"deploy.gates.agreement_min must be in [0, 1], not {self.agreement_min!r}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> GateSettings:
        """The ``[deploy.gates]`` table; an unknown key is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"deploy.gates.{unknown[0]} is not a known key; known: {', '.join(sorted(known))}")
        return cls(**dict(table))


@dataclass(frozen=True)
class DeploySettings:
    """How the live server deploys its variants (see :mod:`speechpipe.pipeline.deploy`).

    Attributes:
        mode: ``single`` (one variant), ``shadow`` (the candidate runs hidden beside the primary on
            every stream), ``canary`` (a growing share of streams goes to the candidate, gated by
            ``gates``) or ``bluegreen`` (all new streams go to the active one of two variants; an
            admin switches).
        primary: the variant serving users; "" is the pipeline's own variant, which the caller
            fills in (:meth:`resolved`) before :meth:`check`.
        candidate: the variant being deployed ("" in single mode); in bluegreen the standby.
        steps: the canary's candidate weights, strictly increasing in (0, 1], ending at 1.0.
        step_min_streams: candidate streams that must have ended in a step before it can advance.
        step_min_s: seconds a step lasts at least before it can advance.
        sticky: ``client``: a stream that gives a client key is routed by hashing the key, so one
            client stays on one side as the weight ramps; ``stream``: every stream on its own.
        state_file: SQLite file the deploy state is kept in across restarts; "" keeps it in memory.
        db: ``postgresql://...``: the state is shared by every replica given the same database
            (``speechpipe serve --db`` sets it with the review queue's); then ``state_file`` is
            not used. "" : one process, ``state_file``.
        gates: the canary's gates.
        golden: a folder of audio with ``.txt`` references (the test split of ``speechpipe review
            export``): before a candidate takes any traffic (a canary's first step, a shadow's
            first copy, a blue/green switch to it) it is evaluated against the primary there, off
            the serving path, and refused if worse (:mod:`~speechpipe.pipeline.deploy.golden`).
            "" : no golden gate.
        max_golden_wer_delta: how much higher (absolute) the candidate's golden-set WER may be
            than the primary's.
    """

    mode: str = "single"
    primary: str = ""
    candidate: str = ""
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    step_min_streams: int = 20
    step_min_s: float = 300.0
    sticky: str = "client"
    state_file: str = ""
    db: str = ""
    gates: GateSettings = field(default_factory=GateSettings)
    golden: str = ""
    max_golden_wer_delta: float = 0.02

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"deploy.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for key in ("primary", "candidate", "state_file", "db", "golden"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"deploy.{key} must be a string, not {getattr(self, key)!r}")  # noqa: TRY004 - a config error
        if self.sticky not in STICKY:
            raise ValueError(f"deploy.sticky must be one of {', '.join(STICKY)}, not {self.sticky!r}")
        if self.db and not self.db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError(
                f"deploy.db must be a postgresql:// URL (or empty: one process, state_file), not {self.db!r}"
            )
        self._check_steps()
        if not _integer(self.step_min_streams) or self.step_min_streams < 1:
            raise ValueError(f"deploy.step_min_streams must be an integer >= 1, not {self.step_min_streams!r}")
        if not _number(self.step_min_s) or self.step_min_s < 0:
            raise ValueError(f"deploy.step_min_s must be a number >= 0, not {self.step_min_s!r}")
        object.__setattr__(self, "step_min_s", float(self.step_min_s))
        if not _number(self.max_golden_wer_delta) or not 0 <= self.max_golden_wer_delta <= 1:
            raise ValueError(f"deploy.max_golden_wer_delta must lie in [0, 1], not {self.max_golden_wer_delta!r}")
        if self.golden and self.db:
            raise ValueError(
                "deploy.golden with a shared deploy.db (replicas) is not supported yet: gate the candidate on one "
                "server (speechpipe eval GOLDEN --variant ...) before the replicas roll it out"
            )
        if isinstance(self.gates, Mapping):
            object.__setattr__(self, "gates", GateSettings.from_mapping(self.gates))
        elif not isinstance(self.gates, GateSettings):
            raise ValueError(f"deploy.gates must be a table, not {self.gates!r}")  # noqa: TRY004 - a config error
        if self.mode in PAIRED_MODES and self.candidate and self.candidate == self.primary:
            raise ValueError(f"deploy.candidate must differ from deploy.primary (both {self.primary!r})")

    def _check_steps(self) -> None:
        if isinstance(self.steps, str | bytes) or not hasattr(self.steps, "__iter__"):
            raise ValueError(f"deploy.steps must be a list of numbers, not {self.steps!r}")
        steps = tuple(self.steps)
        if not steps or not all(_number(s) for s in steps):
            raise ValueError(f"deploy.steps must be a non-empty list of numbers, not {list(steps)!r}")
        steps = tuple(float(s) for s in steps)
        if any(not 0 < s <= 1 for s in steps):
            raise ValueError(f"deploy.steps must lie in (0, 1], not {list(steps)!r}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"deploy.steps must be strictly increasing, not {list(steps)!r}")
        if steps[-1] != 1.0:
            raise ValueError(f"deploy.steps must end at 1.0 (the candidate takes all streams), not {steps[-1]!r}")
        object.__setattr__(self, "steps", steps)

    def resolved(self, own_variant: str) -> DeploySettings:
        """These settings with an empty ``primary`` replaced by the pipeline's own variant."""
        return self if self.primary else dataclasses.replace(self, primary=own_variant)

    def check(self, variant_names: set[str]) -> None:
        """Check the variant names against the configured variants (after :meth:`resolved`).

        Raises:
            ValueError: naming ``deploy.primary`` / ``deploy.candidate`` and the missing variant.
        """
        names = ", ".join(sorted(variant_names)) or "none"
        if not self.primary:
            raise ValueError("deploy.primary is empty: resolve it to the pipeline's own variant before the check")
        if self.primary not in variant_names:
            raise ValueError(f"deploy.primary: no variant named {self.primary!r} (configured: {names})")
        if self.mode in PAIRED_MODES:
            if not self.candidate:
                raise ValueError(f"deploy.candidate must name a variant in mode {self.mode!r}")
            if self.candidate == self.primary:
                raise ValueError(f"deploy.candidate must differ from deploy.primary (both {self.primary!r})")
        if self.candidate and self.candidate not in variant_names:
            raise ValueError(f"deploy.candidate: no variant named {self.candidate!r} (configured: {names})")
