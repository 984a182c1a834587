"""Each stage's share of the errors, from the reviews (pure).

A review item's clip holds its segment and a margin of audio before and after it; the reviewer
types the segment's words, and apart from them the words heard in the margins (docs/review.md):

* **ASR errors**: the word errors of the AI's transcript of the segment against the reviewer's
  words of the segment (the project's WER: :func:`speechpipe.pipeline.evaluate.quality.score`).
* **VAD cuts**: words heard in the margins, outside the segment the VAD cut: speech the ASR never
  got (a margin holds only audio the VAD rejected: it stops at the neighbouring segments,
  :mod:`speechpipe.pipeline.live.audit`).
* **VAD misses**: words heard in a ``vad_audit`` item, audio the VAD rejected as no speech.

:func:`stage_columns` scores one review into the columns the store keeps per item;
:func:`by_stage` sums them per variant into ``GET /v1/review/stats``'s ``by_stage``.
"""

from __future__ import annotations

from speechpipe.pipeline.evaluate.quality import normalized_words, score
from speechpipe.pipeline.review.policy import VAD_AUDIT


def stage_columns(reason: str, text: str, before: str, after: str, ai_text: str | None) -> dict:
    """The stage columns of one review: ``text`` is what the reviewer heard in the segment (all
    of it for a ``vad_audit`` item), ``before``/``after`` in the margins, ``ai_text`` the item's
    variant's transcript (None: no model ran)."""
    if reason == VAD_AUDIT:
        return {"vad_miss_words": len(normalized_words(text))}
    columns = {
        "text_before": before,
        "text_after": after,
        "vad_cut_words": len(normalized_words(before)) + len(normalized_words(after)),
    }
    if ai_text is not None:
        s = score(text, ai_text)
        columns |= {"asr_errors": s.errors, "asr_words": s.ref_words}
    return columns


def _per_100(words: int, units: int) -> float | None:
    return round(100.0 * words / units, 3) if units else None


def by_stage(rows: list[dict]) -> dict[str, dict]:
    """Per variant, from the summed rows ``{"variant", "segments", "asr_segments", "asr_errors",
    "asr_words", "vad_cuts", "vad_cut_segments", "vad_audits", "vad_misses", "vad_miss_items"}``
    (reviews scored by stage only): the counts, the ASR's WER, and per 100 the words each stage
    lost: ``cuts`` per 100 reviewed segments, ``asr_errors`` per 100 of those the AI transcribed
    (``asr_segments``: none at level ``human``), ``misses`` per 100 audited stretches of rejected
    audio (about one per pause between segments)."""
    out: dict[str, dict] = {}
    for r in rows:
        n = {k: int(r[k] or 0) for k in r if k != "variant"}
        out[r["variant"]] = {
            "segments": n["segments"],
            "asr_segments": n["asr_segments"],
            "asr_errors": n["asr_errors"],
            "ref_words": n["asr_words"],
            "asr_wer": n["asr_errors"] / n["asr_words"] if n["asr_words"] else None,
            "vad_cuts": n["vad_cuts"],
            "vad_cut_segments": n["vad_cut_segments"],
            "vad_audits": n["vad_audits"],
            "vad_misses": n["vad_misses"],
            "vad_miss_items": n["vad_miss_items"],
            "per_100_segments": {
                "asr_errors": _per_100(n["asr_errors"], n["asr_segments"]),
                "cuts": _per_100(n["vad_cuts"], n["segments"]),
                "misses": _per_100(n["vad_misses"], n["vad_audits"]),
            },
        }
    return out
