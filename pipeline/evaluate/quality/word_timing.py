"""Reference word times: timed words, and the pure functions that place reference words in time.

**Reference word times.** References are plain text; to place a reference word in time we use two
passes over the *unsegmented* audio (see :mod:`speechpipe.pipeline.evaluate`, which runs them):

1. *transcript*: the ASR engine transcribes the whole file with word timestamps, and the normalized
   reference is aligned (jiwer, the same alignment as WER) to the normalized transcript. Reference
   words that match a transcript word take its time (*anchored*); the others are spread evenly
   between their anchored neighbours.
2. *forced*: the reference text itself is force-aligned to the audio with Whisper's cross-attention
   (:class:`speechpipe.stages.align.ForcedAligner`), window by window (windows of at most 30 s cut in
   the pauses that pass 1 found). Every reference word gets an acoustic time, including words the
   recognizer misses.

The forced times are used when available, the transcript times otherwise. Both come from Whisper's
attention, which tends to stretch a word across a neighbouring pause; :func:`snap_to_energy` then
trims leading and trailing silent 10 ms frames off each word. The agreement of the two passes is
reported by :func:`timing_agreement`; docs/evaluation.md gives measured figures.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher

import numpy as np

from speechpipe.pipeline.evaluate.quality.wer import align, normalized_words
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.textnorm import normalize

#: default distance from a segment edge within which an error counts as ``boundary`` (seconds);
#: chosen above the measured error of the reference word times at speech edges (docs/evaluation.md).
BOUNDARY_TOLERANCE_S = 0.25
#: reference words closer than this are merged into one region of reference speech.
SPEECH_MERGE_GAP_S = 0.3

Interval = tuple[float, float]


@dataclass
class RawWord:
    """A word as produced by a recognizer or aligner (any spelling), with its time and, for a
    hypothesis, the index of the VAD segment it was recognised in."""

    text: str
    start: float
    end: float
    segment: int | None = None


@dataclass
class TimedWord:
    """A *normalized* word (as scored by WER) with a time.

    ``source`` says where the time came from: ``"word"`` (one recognised/aligned word),
    ``"merged"`` (spread over several raw words, e.g. "twenty one" -> "21"), ``"interpolated"``
    (no acoustic evidence: placed between its neighbours), or for reference words ``"equal"`` /
    ``"substitute"`` (matched to a transcript word in the transcript pass) and ``"forced"``.
    """

    word: str
    start: float
    end: float
    segment: int | None = None
    source: str = "word"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        return d


@functools.lru_cache(maxsize=65536)
def _normalize_word(text: str) -> tuple[str, ...]:
    return tuple(normalize(text).split())


def timed_tokens(words: Sequence[RawWord], target: Sequence[str] | None = None) -> list[TimedWord]:
    """Give each normalized word of the joined text the time of the raw words it came from.

    ``target`` is the normalized word list to time (by default that of the joined text). Words are
    normalized one by one and matched to ``target`` (difflib); where whole-text normalization
    differs (numbers merge, "twenty one" -> "21"), the raw words' span is shared out evenly, and a
    target word with no raw counterpart is placed between its neighbours.
    """
    if target is None:
        target = normalized_words(" ".join(w.text.strip() for w in words))
    target = list(target)
    per: list[tuple[str, int]] = [(tok, i) for i, w in enumerate(words) for tok in _normalize_word(w.text.strip())]
    out: list[TimedWord | None] = [None] * len(target)
    sm = SequenceMatcher(None, [t for t, _ in per], target, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            for k in range(j2 - j1):
                w = words[per[i1 + k][1]]
                out[j1 + k] = TimedWord(target[j1 + k], w.start, w.end, w.segment, "word")
        elif tag == "replace":
            first, last = words[per[i1][1]], words[per[i2 - 1][1]]
            a, b = first.start, max(last.end, first.start)
            n = j2 - j1
            for k in range(n):
                out[j1 + k] = TimedWord(
                    target[j1 + k], a + (b - a) * k / n, a + (b - a) * (k + 1) / n, first.segment, "merged"
                )
    _fill_gaps(out, target)
    return out  # type: ignore[return-value]


def _fill_gaps(out: list[TimedWord | None], target: Sequence[str]) -> None:
    """Place untimed entries evenly between their timed neighbours."""
    i = 0
    n = len(out)
    while i < n:
        if out[i] is not None:
            i += 1
            continue
        j = i
        while j < n and out[j] is None:
            j += 1
        prev = out[i - 1] if i > 0 else None
        nxt = out[j] if j < n else None
        a = prev.end if prev else (nxt.start if nxt else 0.0)
        b = nxt.start if nxt else a
        b = max(a, b)
        seg = prev.segment if prev else (nxt.segment if nxt else None)
        k = j - i
        for m in range(k):
            out[i + m] = TimedWord(target[i + m], a + (b - a) * m / k, a + (b - a) * (m + 1) / k, seg, "interpolated")
        i = j


def transcript_times(reference: str, transcript: Sequence[TimedWord]) -> list[TimedWord]:
    """Reference words timed by aligning them to a timed transcript of the unsegmented audio.

    Matched words (equal or substituted) take the transcript word's time; the others are spread
    between their neighbours (``source="interpolated"``).
    """
    ref = normalized_words(reference)
    hyp_text = " ".join(t.word for t in transcript)
    out: list[TimedWord | None] = [None] * len(ref)
    for op in align(reference, hyp_text):
        if op.ref_index is not None and op.hyp_index is not None:
            h = transcript[op.hyp_index]
            out[op.ref_index] = TimedWord(
                ref[op.ref_index], h.start, h.end, None, op.op if op.op == "substitute" else "equal"
            )
    _fill_gaps(out, ref)
    return out  # type: ignore[return-value]


def plan_windows(
    times: Sequence[Interval], duration: float, window_s: float = 30.0, min_fill: float = 0.5
) -> list[tuple[float, float, int, int]]:
    """Cut ``[0, duration]`` into windows of at most ``window_s`` for forced alignment.

    ``times`` are approximate (start, end) times of the words in order. Each cut is placed in the
    middle of the widest pause between two consecutive words in the last ``(1 - min_fill)`` of the
    window. Returns ``(start_s, end_s, first_word, end_word)`` with words ``[first_word, end_word)``
    assigned to the window their middle falls in.
    """
    if duration <= window_s:
        return [(0.0, duration, 0, len(times))]
    windows: list[tuple[float, float, int, int]] = []
    start, first = 0.0, 0
    n = len(times)
    while True:
        limit = start + window_s
        if duration <= limit:
            windows.append((start, duration, first, n))
            return windows
        best_cut, best_gap, best_k = None, -1.0, first
        for k in range(first, n - 1):
            gap_a, gap_b = times[k][1], times[k + 1][0]
            mid = (gap_a + max(gap_a, gap_b)) / 2
            if mid <= start + window_s * min_fill:
                continue
            if times[k + 1][0] >= limit or mid >= limit:
                break
            if gap_b - gap_a > best_gap:
                best_cut, best_gap, best_k = mid, gap_b - gap_a, k + 1
        if best_cut is None:  # no pause in range (or no words): a hard cut at the limit
            best_cut = limit
            best_k = first
            while best_k < n and (times[best_k][0] + times[best_k][1]) / 2 < limit:
                best_k += 1
        windows.append((start, best_cut, first, best_k))
        start, first = best_cut, best_k


def snap_to_energy(
    words: Sequence[TimedWord], audio: np.ndarray, sample_rate: int = SAMPLE_RATE, min_s: float = 0.05
) -> list[TimedWord]:
    """Trim silent 10 ms frames off the start and end of each word.

    Frame levels are taken in dB relative to the file's loud level (95th percentile of frame RMS);
    the noise floor is the 10th percentile. A frame is silent when it lies in the lowest quarter of
    the range between floor and loud level (with a floor at -40 dB, below -30 dB). A word is never
    shrunk below ``min_s``, and when the floor is within 15 dB of the loud level (noisy audio)
    nothing moves.
    """
    hop = sample_rate // 100
    n = audio.size // hop
    if n == 0:
        return list(words)
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = float(np.percentile(rms, 95))
    if loud <= 0:
        return list(words)
    db = 20 * np.log10(np.maximum(rms, 1e-10) / loud)
    floor = float(np.percentile(db, 10))
    if floor > -15.0:
        return list(words)
    voiced = db > 0.75 * floor
    out = []
    for w in words:
        a, b = int(w.start * 100), int(np.ceil(w.end * 100))
        a, b = max(0, min(a, n)), max(0, min(b, n))
        new_a, new_b = a, b
        while new_a < b and not voiced[new_a]:
            new_a += 1
        while new_b > new_a and not voiced[new_b - 1]:
            new_b -= 1
        start, end = w.start, w.end
        if new_b > new_a and (new_b - new_a) / 100 >= min_s:
            start, end = max(w.start, new_a / 100), min(w.end, new_b / 100)
        out.append(TimedWord(w.word, start, end, w.segment, w.source))
    return out


def timing_agreement(a: Sequence[TimedWord], b: Sequence[TimedWord]) -> dict:
    """How far two timings of the same reference words differ, over the words both anchored
    acoustically (``a``'s ``"equal"`` words against any ``b`` word): median and 90th percentile of
    the start and end differences in seconds."""
    pairs = [(x, y) for x, y in zip(a, b) if x.source == "equal" and y.source != "interpolated"]
    if not pairs:
        return {"words": 0}
    ds = np.abs([x.start - y.start for x, y in pairs])
    de = np.abs([x.end - y.end for x, y in pairs])
    return {
        "words": len(pairs),
        "start_median_s": round(float(np.median(ds)), 3),
        "start_p90_s": round(float(np.percentile(ds, 90)), 3),
        "end_median_s": round(float(np.median(de)), 3),
        "end_p90_s": round(float(np.percentile(de, 90)), 3),
        "within_tolerance": round(float(np.mean((ds <= BOUNDARY_TOLERANCE_S) & (de <= BOUNDARY_TOLERANCE_S))), 4),
    }


def edge_errors(words: Sequence[TimedWord], labels: Sequence[Interval]) -> dict:
    """Word times against human speech labels, where the truth is known.

    For every labelled speech region holding words (by their middle): ``onset`` = first word
    start - region start, ``offset`` = last word end - region end (signed seconds). Also counts
    the words whose middle lies in labelled speech.
    """
    onsets, offsets = [], []
    mids = [(w.start + w.end) / 2 for w in words]
    for a, b in labels:
        inside = [w for w, m in zip(words, mids) if a <= m <= b]
        if inside:
            onsets.append(round(inside[0].start - a, 3))
            offsets.append(round(inside[-1].end - b, 3))
    in_speech = sum(any(a <= m <= b for a, b in labels) for m in mids)
    return {"onset": onsets, "offset": offsets, "words": len(words), "words_in_speech": in_speech}


def speech_regions(words: Sequence[TimedWord], merge_gap: float = SPEECH_MERGE_GAP_S) -> list[Interval]:
    """Regions of reference speech: word spans merged across pauses shorter than ``merge_gap``."""
    regions: list[list[float]] = []
    for w in sorted(words, key=lambda w: w.start):
        if regions and w.start - regions[-1][1] < merge_gap:
            regions[-1][1] = max(regions[-1][1], w.end)
        else:
            regions.append([w.start, w.end])
    return [(a, b) for a, b in regions]


# ------------------------------------------------------------------------------- attribution
