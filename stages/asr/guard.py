"""The hallucination guard: Whisper turns noise into words, and these rules drop such segments.

A Whisper segment is dropped when the model both suspects silence and is unsure of its words
(high ``no_speech_prob`` with low ``avg_logprob``: car horns, dog barks), when its words are very
unlikely (running water or clatter decoded at the fallback temperatures), or when its text is a
repetition loop (it compresses too well). Thresholds are in :class:`AsrConfig`.
"""

from __future__ import annotations

from speechpipe.stages.asr.config import AsrConfig


def is_hallucination(config: AsrConfig, no_speech_prob: float, avg_logprob: float, compression_ratio: float) -> bool:
    """The guard's verdict on one Whisper segment."""
    return (
        (no_speech_prob > config.no_speech_threshold and avg_logprob < config.no_speech_logprob)
        or avg_logprob < config.min_avg_logprob
        or compression_ratio > config.compression_ratio_threshold
    )
