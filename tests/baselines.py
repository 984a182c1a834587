"""The measured accuracy figures the tests hold the pipeline to (tests/baselines.json, written by
``python benchmarks/baselines.py``), with the tolerances written beside them."""

from __future__ import annotations

import json
from pathlib import Path

_DOC = json.loads((Path(__file__).with_name("baselines.json")).read_text())
TOLERANCE = _DOC["tolerance"]


def measured(key: str):
    """The figure at dotted ``key`` (``"vad.webrtc.f1"``, ``"wer.resampled.8000"``)."""
    value = _DOC
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def floor(key: str) -> float:
    """The lowest score (F1, precision, recall, agreement) a test accepts: the measurement less
    the score tolerance."""
    return measured(key) - TOLERANCE["score"]


def share_floor(key: str, items: int) -> float:
    """The lowest share of ``items`` (words agreeing, segments matched) a test accepts: the
    measurement less one item or the score tolerance, whichever is lower. A share of a few dozen
    items moves by a whole item when another CPU decodes one word differently (JFK's 22 words:
    20 agreed on an AVX-512 machine, 19 on an AVX2-only AMD EPYC)."""
    value = measured(key)
    one_item_less = (round(value * items) - 1) / items
    return min(value - TOLERANCE["score"], one_item_less) - 5e-5  # shares are written rounded to 4 decimals


def wer_ceiling(key: str) -> float:
    """The highest WER a test accepts: the measurement plus one reference word or the WER
    tolerance, whichever is more."""
    entry = measured(key)
    words = entry["ref_words"]
    # The stored WER is rounded (0.0357 for 1 of 28): count its errors back, so that "one word
    # more" is exactly 2 of 28, not a hair under it.
    one_word_more = (round(entry["wer"] * words) + 1) / words
    return max(entry["wer"] + TOLERANCE["wer"], one_word_more) + 1e-9


def live_wer_ceiling(offline_wer: float) -> float:
    """The highest WER a live stream may have, given the offline WER of the same audio."""
    return offline_wer + TOLERANCE["live_wer"]
