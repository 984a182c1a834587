"""Where did each word error come from: the VAD, a segment edge, or the recognizer?

Pure functions over timed words (:mod:`speechpipe.pipeline.evaluate.quality.word_timing`); nothing here loads
audio or a model.

**Attribution** (:func:`attribute`), for every error of the WER alignment of one file:

* ``vad_dropped``: a substituted or deleted reference word that no segment covers (at most
  :data:`SLIVER_S` of it inside segments): the VAD threw its audio away.
* ``boundary``: a reference word (substituted or deleted) within ``tolerance`` seconds of a segment
  edge, or spread over two segments; an inserted word within ``tolerance`` of an edge of the
  segment it was recognised in. Edges at the very start and end of the file are not cuts and do not
  count.
* ``asr``: everything else: the audio was inside a segment, away from its edges, and the
  recognizer still got it wrong.

Substitutions and deletions are placed at their reference word's time, insertions at the
hypothesis word's time. Adjacent errors (a run of alignment ops with no correct word between them)
are judged together, because the alignment's way of sharing one garbled stretch among words is
arbitrary ("stuff it" -> "stuffard" is a substitution plus a deletion, or a deletion plus a
substitution): if any error of the run is near an edge or dropped, the run's errors that are not
themselves dropped count as ``boundary``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from speechpipe.pipeline.evaluate.quality.wer import align
from speechpipe.pipeline.evaluate.quality.word_timing import BOUNDARY_TOLERANCE_S, Interval, TimedWord

VAD_DROPPED = "vad_dropped"
BOUNDARY = "boundary"
ASR = "asr"
CATEGORIES = (VAD_DROPPED, BOUNDARY, ASR)

#: a reference word with at most this much audio inside segments counts as not covered.
SLIVER_S = 0.02
#: edges of a segment this close to the start or end of the file are not cuts.
EDGE_EPS_S = 0.01


@dataclass
class WordError:
    """One word error of a file, classified.

    ``start``/``end`` is where the error is placed (reference word for substitutions and
    deletions, hypothesis word for insertions); ``segment`` is the VAD segment it lies in (or was
    recognised in), ``None`` when no segment covers it. ``hallucination`` marks an inserted word
    emitted on non-speech.
    """

    op: str
    category: str
    ref_index: int | None
    hyp_index: int | None
    ref_word: str | None
    hyp_word: str | None
    start: float
    end: float
    segment: int | None
    hallucination: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        return d


@dataclass
class Attribution:
    """All errors of one file and their counts per category."""

    errors: list[WordError] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(CATEGORIES, 0)
        for e in self.errors:
            c[e.category] += 1
        return c

    @property
    def hallucinations(self) -> int:
        return sum(e.hallucination for e in self.errors)


@dataclass
class Segments:
    """The VAD segments of one file as intervals, with the cut points between speech and dropped
    audio."""

    intervals: list[tuple[int, float, float]]  # (index, start_s, end_s), in stream order
    duration: float

    def cuts(self) -> list[float]:
        out = []
        for _i, a, b in self.intervals:
            if a > EDGE_EPS_S:
                out.append(a)
            if b < self.duration - EDGE_EPS_S:
                out.append(b)
        return out

    def overlaps(self, start: float, end: float) -> list[tuple[int, float]]:
        """Segments overlapping ``[start, end]`` and the seconds of overlap (a point counts when
        inside)."""
        res = []
        for i, a, b in self.intervals:
            if end <= start:
                if a <= start < b:
                    res.append((i, 0.0))
            else:
                ov = min(b, end) - max(a, start)
                if ov > 0:
                    res.append((i, ov))
        return res

    def edges_of(self, index: int) -> list[float]:
        for i, a, b in self.intervals:
            if i == index:
                return [t for t in (a, b) if EDGE_EPS_S < t < self.duration - EDGE_EPS_S]
        return []


def _distance(points: Sequence[float], start: float, end: float) -> float:
    best = float("inf")
    for p in points:
        d = 0.0 if start <= p <= end else min(abs(p - start), abs(p - end))
        best = min(best, d)
    return best


def _inside(regions: Sequence[Interval], start: float, end: float, pad: float) -> bool:
    return any(start < b + pad and end > a - pad for a, b in regions)


def attribute(
    reference: str,
    hypothesis: str,
    ref_words: Sequence[TimedWord],
    hyp_words: Sequence[TimedWord],
    segments: Segments,
    *,
    tolerance: float = BOUNDARY_TOLERANCE_S,
    speech: Sequence[Interval] | None = None,
) -> Attribution:
    """Classify every word error of ``hypothesis`` against ``reference`` (see the module docstring).

    ``ref_words``/``hyp_words`` time the normalized words of each text (same length and order as
    :func:`~speechpipe.pipeline.evaluate.quality.wer.normalized_words`); ``speech`` is the reference speech (labels
    or :func:`speech_regions`) used to flag inserted words on non-speech as hallucinations.
    """
    cuts = segments.cuts()
    result = Attribution()
    runs: list[list] = [[]]
    for op in align(reference, hypothesis):
        if op.op == "equal":
            runs.append([])
        else:
            runs[-1].append(op)
    for run in filter(None, runs):
        placed = []
        near = dropped_any = False
        for op in run:
            if op.op == "insert":
                h = hyp_words[op.hyp_index]
                edges = segments.edges_of(h.segment) if h.segment is not None else cuts
                near |= _distance(edges, h.start, h.end) <= tolerance
                halluc = speech is not None and not _inside(speech, h.start, h.end, tolerance)
                placed.append((op, h.start, h.end, h.segment, False, halluc))
                continue
            r = ref_words[op.ref_index]
            ov = segments.overlaps(r.start, r.end)
            covered = sum(s for _, s in ov)
            dropped = not (r.end <= r.start and ov) and covered <= SLIVER_S
            seg = None if dropped else max(ov, key=lambda t: t[1])[0]
            if dropped:
                dropped_any = True
            else:
                near |= len(ov) > 1 or _distance(cuts, r.start, r.end) <= tolerance
            placed.append((op, r.start, r.end, seg, dropped, False))
        # One run of adjacent errors is the recognizer's answer to one stretch of audio; how the
        # alignment shares it out among the words is arbitrary, so the run is judged as a whole.
        for op, start, end, seg, dropped, halluc in placed:
            cat = VAD_DROPPED if dropped else (BOUNDARY if near or dropped_any else ASR)
            result.errors.append(
                WordError(op.op, cat, op.ref_index, op.hyp_index, op.ref_word, op.hyp_word, start, end, seg, halluc)
            )
    return result
