"""Frame-level scoring of VAD segments against human speech/non-speech labels.

Labels use the corpus format: a ``<id>.segments.txt`` file with one ``start_s end_s`` pair per
line; everything in the labelled span that is not listed is non-speech.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: scoring resolution in seconds.
FRAME_S = 0.01

Interval = tuple[float, float]


@dataclass
class FrameScore:
    """Frame-level agreement of predicted speech with labelled speech."""

    precision: float
    recall: float
    f1: float
    true_positive_s: float
    false_positive_s: float
    false_negative_s: float
    labelled_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def read_segments(path: str | Path) -> list[Interval]:
    """Read a ``start_s end_s`` per line labels file (blank lines and ``#`` comments ignored)."""
    out: list[Interval] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'start_s end_s', got {line!r}")
        start, end = float(parts[0]), float(parts[1])
        if end < start:
            raise ValueError(f"{path}:{n}: end before start")
        out.append((start, end))
    return out


def to_frames(intervals: list[Interval], duration_s: float, frame_s: float = FRAME_S) -> np.ndarray:
    """Boolean mask of ``frame_s`` frames over ``[0, duration_s)``; a frame is speech when its centre
    lies inside an interval."""
    n = round(duration_s / frame_s)
    centres = (np.arange(n) + 0.5) * frame_s
    mask = np.zeros(n, dtype=bool)
    for start, end in intervals:
        mask |= (centres >= start) & (centres < end)
    return mask


def frame_score(predicted: list[Interval], labelled: list[Interval], duration_s: float) -> FrameScore:
    """Precision, recall and F1 of ``predicted`` speech against ``labelled`` speech."""
    p = to_frames(predicted, duration_s)
    r = to_frames(labelled, duration_s)
    return _score(p, r)


def pooled_score(pairs: list[tuple[list[Interval], list[Interval], float]]) -> FrameScore:
    """One score over many files: frames of all files pooled (not a mean of per-file F1)."""
    ps, rs = [], []
    for predicted, labelled, duration in pairs:
        ps.append(to_frames(predicted, duration))
        rs.append(to_frames(labelled, duration))
    return _score(np.concatenate(ps) if ps else np.zeros(0, bool), np.concatenate(rs) if rs else np.zeros(0, bool))


def _score(p: np.ndarray, r: np.ndarray) -> FrameScore:
    tp = int(np.sum(p & r))
    fp = int(np.sum(p & ~r))
    fn = int(np.sum(~p & r))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return FrameScore(
        precision=precision,
        recall=recall,
        f1=f1,
        true_positive_s=tp * FRAME_S,
        false_positive_s=fp * FRAME_S,
        false_negative_s=fn * FRAME_S,
        labelled_s=int(r.sum()) * FRAME_S,
    )
