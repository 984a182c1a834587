"""What happens to one final at each level of automation: what the client gets, and whether a
human reviews it. Pure.

============  =============================  =====================  =============================
level         the client's final             review                 the reviewer starts from
============  =============================  =====================  =============================
``human``     no text, ``review: pending``   every segment          nothing (the AI did not run)
``shadow``    no text, ``review: pending``   every segment          nothing (the AI runs hidden,
                                                                    scored against the human)
``assist``    the AI's, ``provisional``      every segment          the AI's text
``partial``   the AI's; ``pending`` when     below ``review_below`` the AI's text
              below ``review_below``
``full``      the AI's, ``review: none``     an audit sample        nothing (an unbiased measure)
============  =============================  =====================  =============================

Whatever the level, the human's transcript reaches the client as a ``revision`` when it is
still connected, and ``GET /v1/sessions/{id}`` later.

Whatever the level too, a share of the audio the VAD rejected (``[review] vad_audit_share``) is
queued with the reason ``vad_audit`` and no AI text (:func:`vad_audited`): the reviewer says
whether there was speech in it, which measures the VAD's misses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from speechpipe.pipeline.review.settings import AutomationSettings

NONE, PENDING, PROVISIONAL = "none", "pending", "provisional"
#: the reason of an item that holds audio the VAD rejected: "is there speech here?"
VAD_AUDIT = "vad_audit"


@dataclass(frozen=True)
class Decision:
    """What to do with one final.

    Attributes:
        review: the final's ``review`` field.
        show_text: the client gets the AI's text in the final (else an empty final).
        queue: a human reviews the segment.
        reason: why it is reviewed: ``level``, ``low_confidence`` or ``audit``.
        draft: the reviewer starts from the AI's text (else from scratch).
    """

    review: str
    show_text: bool
    queue: bool
    reason: str = ""
    draft: bool = False


def audited(session: str, segment: int, share: float) -> bool:
    """Whether a segment is in the audit sample: a hash of session and segment below ``share``."""
    digest = hashlib.sha256(f"audit:{session}:{segment}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def vad_audited(session: str, start_sample: int, share: float) -> bool:
    """Whether a stretch of rejected audio starting at ``start_sample`` (16 kHz stream samples) is
    in the VAD's audit sample: a hash of session and position below ``share``."""
    digest = hashlib.sha256(f"vad_audit:{session}:{start_sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def audit_key(start_sample: int) -> int:
    """The ``segment`` that keys a VAD audit item in its session: negative, so it never meets a
    segment's index, and unique per stretch (minus one minus its start in hundredths of a second;
    audited stretches start at least ``vad_audit_min_s`` apart)."""
    return -1 - start_sample // 160


def decide(settings: AutomationSettings, confidence: float | None, session: str, segment: int) -> Decision:
    """The fate of one final; ``confidence`` is its mean word probability (None: no words)."""
    level = settings.level
    if level in ("human", "shadow"):
        return Decision(PENDING, show_text=False, queue=True, reason="level")
    if level == "assist":
        return Decision(PROVISIONAL, show_text=True, queue=True, reason="level", draft=True)
    if level == "partial":
        if confidence is None or confidence < settings.review_below:
            return Decision(PENDING, show_text=True, queue=True, reason="low_confidence", draft=True)
        return Decision(NONE, show_text=True, queue=False)
    if audited(session, segment, settings.audit_share):
        return Decision(NONE, show_text=True, queue=True, reason="audit")
    return Decision(NONE, show_text=True, queue=False)
