"""Word and character error rates with ``jiwer``, on text normalized by
:func:`speechpipe.stages.textnorm.normalize`.

Rates follow the usual definitions: WER = (S + D + I) / N over words, CER the same over characters
of the normalized text (spaces between words count as characters). Over several files
(:func:`score_corpus`) the errors and reference lengths are summed before dividing, so long files
weigh more than short ones; it is not the mean of per-file rates.

An empty (normalized) reference has no length to divide by, so:

* empty reference, empty hypothesis: ``wer == cer == 0.0``;
* empty reference, non-empty hypothesis: ``wer`` is the number of inserted words (as if the
  reference had one word) and ``cer`` is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import jiwer

from speechpipe.stages.textnorm import normalize


@dataclass
class WerResult:
    """Error counts and rates of a hypothesis against a reference (or a corpus of pairs).

    ``ref_words``/``hyp_words`` count normalized words; ``hits + substitutions + deletions ==
    ref_words`` and ``hits + substitutions + insertions == hyp_words``.
    """

    wer: float
    cer: float | None
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    hyp_words: int

    @property
    def errors(self) -> int:
        """Word errors: substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    def to_dict(self) -> dict:
        """Plain dict of the fields, for JSON."""
        return asdict(self)


@dataclass
class AlignedOp:
    """One word position of an alignment.

    ``op`` is ``"equal"``, ``"substitute"``, ``"delete"`` (a reference word the hypothesis lacks) or
    ``"insert"`` (a hypothesis word with no reference word). Indexes point into
    :func:`normalized_words` of the reference and of the hypothesis; the side an op has no word on
    gets ``None`` for index and word.
    """

    op: str
    ref_index: int | None
    hyp_index: int | None
    ref_word: str | None
    hyp_word: str | None


def normalized_words(text: str) -> list[str]:
    """The words of ``text`` after normalization, as scored and aligned here."""
    return normalize(text).split()


def score_corpus(pairs: Iterable[tuple[str, str]]) -> WerResult:
    """Corpus-level WER/CER over ``(reference, hypothesis)`` pairs: total errors over total
    reference length. No pairs give a zero result."""
    refs: list[str] = []
    hyps: list[str] = []
    for reference, hypothesis in pairs:
        refs.append(normalize(reference))
        hyps.append(normalize(hypothesis))
    if not refs:
        return WerResult(0.0, 0.0, 0, 0, 0, 0, 0, 0)

    words = jiwer.process_words(refs, hyps)
    ref_words = words.hits + words.substitutions + words.deletions
    hyp_words = words.hits + words.substitutions + words.insertions
    word_errors = words.substitutions + words.deletions + words.insertions

    chars = jiwer.process_characters(refs, hyps)
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    # With an empty reference every error is an insertion (see the module docstring).
    if ref_chars:
        cer: float | None = char_errors / ref_chars
    else:
        cer = 0.0 if char_errors == 0 else None

    return WerResult(
        wer=word_errors / ref_words if ref_words else float(words.insertions),
        cer=cer,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        hits=words.hits,
        ref_words=ref_words,
        hyp_words=hyp_words,
    )


def score(reference: str, hypothesis: str) -> WerResult:
    """WER/CER of one hypothesis against its reference, both normalized first."""
    return score_corpus([(reference, hypothesis)])


def align(reference: str, hypothesis: str) -> list[AlignedOp]:
    """Word-level alignment of the normalized texts, in order: one :class:`AlignedOp` per
    reference word (equal, substitute or delete) plus one per inserted hypothesis word."""
    ref = normalized_words(reference)
    hyp = normalized_words(hypothesis)
    if not ref and not hyp:
        return []
    # Normalized text is single-spaced, so jiwer's default whitespace split gives back ref/hyp.
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    ops: list[AlignedOp] = []
    for chunk in out.alignments[0]:
        if chunk.type in ("equal", "substitute"):
            for r, h in zip(
                range(chunk.ref_start_idx, chunk.ref_end_idx),
                range(chunk.hyp_start_idx, chunk.hyp_end_idx),
                strict=True,
            ):
                ops.append(AlignedOp(chunk.type, r, h, ref[r], hyp[h]))
        elif chunk.type == "delete":
            for r in range(chunk.ref_start_idx, chunk.ref_end_idx):
                ops.append(AlignedOp("delete", r, None, ref[r], None))
        elif chunk.type == "insert":
            for h in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                ops.append(AlignedOp("insert", None, h, None, hyp[h]))
        else:  # pragma: no cover - jiwer's chunk types are the four above
            raise ValueError(f"unknown jiwer alignment chunk type {chunk.type!r}")
    return ops
