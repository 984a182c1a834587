"""Scoring: WER, reference word times, error attribution, VAD frame scores, evaluation figures
and the comparison of two variants."""

from speechpipe.pipeline.evaluate.quality.wer import WerResult, align, normalized_words, score, score_corpus

__all__ = ["WerResult", "align", "normalized_words", "score", "score_corpus"]
