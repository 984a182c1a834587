"""The ``[automation]`` and ``[review]`` tables (pure; the pipeline's config imports them)."""

from __future__ import annotations

from dataclasses import dataclass

#: from no AI at all to no human at all (docs/review.md).
LEVELS = ("human", "shadow", "assist", "partial", "full")
#: the level at which no model runs: a human transcribes every segment.
HUMAN = LEVELS[0]
#: the longest review margin and the longest piece of rejected audio audited (seconds).
MAX_MARGIN_S = 10.0
MAX_AUDIT_S = 60.0


def model_runs_at(level: str) -> bool:
    """Whether the model transcribes at all at ``level`` (every level but ``human``): what decides
    whether a stream gets ASR jobs, a shadow and drift watching, and whether a review scores it."""
    return level != HUMAN


@dataclass(frozen=True)
class AutomationSettings:
    """How much of the transcription the AI does on its own (``[automation]``).

    Attributes:
        level: ``human`` (the AI does not transcribe; every segment goes to a reviewer and the
            client gets the human transcript), ``shadow`` (every segment goes to a reviewer and
            the client gets the human transcript; the AI runs hidden and is scored against the
            humans), ``assist`` (the client gets the AI's transcript marked provisional, the
            reviewer starts from it, the reviewed text follows), ``partial`` (finals whose
            confidence is at least ``review_below`` go out as they are, the others are marked
            pending and reviewed) or ``full`` (no review but an audit sample).
        review_below: ``partial``: a final whose mean word probability is below this goes to
            review (an empty final always does).
        audit_share: ``full``: the share of segments sent to review anyway, so that accuracy keeps
            being measured (chosen by a hash of session and segment: reproducible).
    """

    level: str = "full"
    review_below: float = 0.8
    audit_share: float = 0.01

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"automation.level must be one of {', '.join(LEVELS)}, not {self.level!r}")
        if not 0.0 <= self.review_below <= 1.0 or not 0.0 <= self.audit_share <= 1.0:
            raise ValueError("automation.review_below and automation.audit_share must lie in [0, 1]")

    @property
    def runs_model(self) -> bool:
        """Whether the model transcribes at all at this level (:func:`model_runs_at`)."""
        return model_runs_at(self.level)


@dataclass(frozen=True)
class ReviewSettings:
    """Where reviews are kept and for how long (``[review]``).

    Attributes:
        db: a SQLite file (created on first use) or a database URL (``postgresql://...`` where
            several replicas share the queue); "" : no review queue (only ``full`` without audit).
        data_dir: where the segments' audio is kept as FLAC ("" : ``review-audio`` beside a
            SQLite file, else in the working directory).
        keep_days: the audio of a segment is deleted this long after it was queued (an item
            still waiting then expires).
        claim_s: how long a reviewer holds a claimed item before it returns to the queue.
        release_hold_s: an item a reviewer skipped or gave back is not claimed again by that
            reviewer for this long while anything else waits (after it, or with nothing else
            waiting, it may come back, and the claim says so: ``back_to_you``).
        spool: the local SQLite file where a segment sent to review waits until the store has it
            ("" : ``spool.db`` in the data directory). It must be on this machine's own disk,
            one per server (docs/review.md, "What is durable").
        margin_s: the audio kept before and after a segment sent to review (less at the start and
            end of a stream), so that the reviewer hears the words the VAD cut off.
        vad_audit_share: the share of the audio the VAD rejected that goes to review anyway ("is
            there speech here?"), chosen by a hash of session and position: the VAD's misses are
            measured as the audits measure the ASR. 0: none.
        vad_audit_min_s / vad_audit_max_s: a rejected stretch shorter than the first is not
            audited (the short gaps between segments); a longer one than the second is audited in
            pieces of at most that length.
    """

    db: str = ""
    data_dir: str = ""
    spool: str = ""
    keep_days: float = 30.0
    claim_s: float = 300.0
    release_hold_s: float = 300.0
    margin_s: float = 1.0
    vad_audit_share: float = 0.0
    vad_audit_min_s: float = 0.5
    vad_audit_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.keep_days <= 0 or self.claim_s <= 0:
            raise ValueError("review.keep_days and review.claim_s must be positive")
        if self.release_hold_s < 0:
            raise ValueError("review.release_hold_s must be 0 or more seconds")
        if not 0.0 <= self.margin_s <= MAX_MARGIN_S:
            raise ValueError(f"review.margin_s must lie in [0, {MAX_MARGIN_S:g}] s")
        if not 0.0 <= self.vad_audit_share <= 1.0:
            raise ValueError("review.vad_audit_share must lie in [0, 1]")
        if not 0.0 < self.vad_audit_min_s <= self.vad_audit_max_s <= MAX_AUDIT_S:
            raise ValueError(
                f"review.vad_audit_min_s and vad_audit_max_s must satisfy 0 < min <= max <= {MAX_AUDIT_S:g} s"
            )
