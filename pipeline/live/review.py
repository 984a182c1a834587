"""A live final at the stream's level of automation: the message the client gets and, when a
human is to review the segment, the :class:`~speechpipe.pipeline.live.actions.SubmitReview`
(see :mod:`speechpipe.pipeline.review.policy`)."""

from __future__ import annotations

from speechpipe.pipeline.live.actions import Action, LiveContext, Send, SubmitReview
from speechpipe.pipeline.review.policy import NONE, decide
from speechpipe.stages.asr import Transcript
from speechpipe.stages.vad import SpeechSegment


def confidence_of(transcript: Transcript) -> float | None:
    """The mean word probability of a transcript (None: no words)."""
    words = transcript.words
    return sum(w.probability for w in words) / len(words) if words else None


def final_actions(
    context: LiveContext, stream_id: str, seg: SpeechSegment, transcript: Transcript, message: dict
) -> list[Action]:
    """``message`` (the final) as the client gets it, and the segment's review if it has one."""
    message = message | {"variant": context.variant}
    if context.on_review is None:  # no review queue: today's behaviour
        return [Send(message | {"review": NONE})]
    confidence = confidence_of(transcript)
    d = decide(context.automation, confidence, stream_id, seg.index)
    if not d.show_text:  # neither the words nor Whisper's confidences of a hidden transcript
        message |= {"text": "", "words": [], "avg_logprob": None, "no_speech_prob": None, "compression_ratio": None}
    actions: list[Action] = [Send(message | {"review": d.review})]
    if d.queue:
        ai_text = transcript.text.strip() if context.automation.runs_model else None
        review = SubmitReview(
            seg.index,
            seg.start_s,
            seg.end_s,
            seg.audio,
            reason=d.reason,
            text=ai_text,
            draft=ai_text if d.draft else None,
            confidence=confidence if context.automation.runs_model else None,
        )
        actions.append(review)
    return actions
