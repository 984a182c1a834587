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

At ``partial`` an empty final (the model heard no words in a segment the VAD kept: no
confidence at all) is queued with its own reason, ``empty``, not ``low_confidence``: it says
something else (the VAD kept noise, or the model dropped speech). Items queued before that reason
existed keep ``low_confidence`` with no confidence; :func:`explain` reads them as empty finals.

Whatever the level too, a share of the audio the VAD rejected (``[review] vad_audit_share``) is
queued with the reason ``vad_audit`` and no AI text (:func:`vad_audited`): the reviewer says
whether there was speech in it, which measures the VAD's misses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from speechpipe.pipeline.review.settings import AutomationSettings

NONE, PENDING, PROVISIONAL = "none", "pending", "provisional"
#: why a final is reviewed: its level reviews every segment, its confidence is under
#: ``review_below``, it has no words at all, or it is in the audit sample.
LEVEL, LOW_CONFIDENCE, EMPTY, AUDIT = "level", "low_confidence", "empty", "audit"
#: the reason of an item that holds audio the VAD rejected: "is there speech here?"
VAD_AUDIT = "vad_audit"


@dataclass(frozen=True)
class Decision:
    """What to do with one final.

    Attributes:
        review: the final's ``review`` field.
        show_text: the client gets the AI's text in the final (else an empty final).
        queue: a human reviews the segment.
        reason: why it is reviewed: ``level``, ``low_confidence``, ``empty`` or ``audit``.
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
        return Decision(PENDING, show_text=False, queue=True, reason=LEVEL)
    if level == "assist":
        return Decision(PROVISIONAL, show_text=True, queue=True, reason=LEVEL, draft=True)
    if level == "partial":
        if confidence is None:
            return Decision(PENDING, show_text=True, queue=True, reason=EMPTY, draft=True)
        if confidence < settings.review_below:
            return Decision(PENDING, show_text=True, queue=True, reason=LOW_CONFIDENCE, draft=True)
        return Decision(NONE, show_text=True, queue=False)
    if audited(session, segment, settings.audit_share):
        return Decision(NONE, show_text=True, queue=True, reason=AUDIT)
    return Decision(NONE, show_text=True, queue=False)


@dataclass(frozen=True)
class Why:
    """Why an item is in the queue, for people: ``label`` short (the queue's column), ``text`` a
    sentence that says what happened."""

    label: str
    text: str


_LEVELS = {
    "human": "level human: a person transcribes every segment (no model runs)",
    "shadow": "level shadow: a person transcribes every segment; the AI runs hidden and is scored against them",
    "assist": "level assist: a person checks every segment, starting from the AI's text",
}


def explain(
    reason: str, level: str, confidence: float | None, review_below: float | None, draft: str | None = None
) -> Why:
    """What an item's ``reason`` means, with its figures: ``confidence`` the AI's (None: no words,
    or no model), ``review_below`` the threshold of the item's variant now (None: unknown),
    ``draft`` the AI text the reviewer starts from. Pure; unknown reasons are shown as they are."""
    if reason == EMPTY or (reason == LOW_CONFIDENCE and confidence is None):  # the latter: queued before ``empty``
        return Why("empty final", "empty final: the model heard no words in a segment the VAD kept")
    if reason == LOW_CONFIDENCE:
        if review_below is None:
            return Why("low confidence", f"low confidence: the AI's confidence {confidence:.2f} was under review_below")
        if confidence < review_below:
            return Why(
                "low confidence",
                f"low confidence: the AI's confidence {confidence:.2f} is under review_below {review_below:g}",
            )
        return Why(
            "low confidence",
            f"low confidence: the AI's confidence {confidence:.2f} was under review_below when it was queued "
            f"(it is {review_below:g} now)",
        )
    if reason == AUDIT:
        return Why("audit", "audit: a random sample of confident finals, reviewed to measure the AI without bias")
    if reason == VAD_AUDIT:
        return Why("VAD audit", "VAD audit: audio the VAD rejected as no speech; is there speech in it?")
    if reason == LEVEL:
        text = _LEVELS.get(level, f"level {level}: a person reviews every segment")
        if level == "assist" and draft == "":
            text += " (here the model heard no words)"
        return Why("every segment", text)
    return Why(reason, reason)
