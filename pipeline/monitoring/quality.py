"""The word error rate of a variant estimated without references (issue 26): from what the pipeline
knows of each segment (its words and their probabilities, the decoder's log-probability, how much
of the segment was speech and how few words came out of it, an empty final, a guard drop), a
calibrated count of expected word errors and of reference words, summed over a window into an
estimated WER with an interval. Pure: data in, figures out.

The model is additive over segments, so that it can be fitted on whole files (a file's reference
is not split by segment) and applied to any window of segments:

* expected errors of a segment = ``w . terms(segment)`` (:data:`TERMS`, all >= 0, weights >= 0);
* expected reference words = ``r . [hypothesis words, speech seconds]``.

:func:`calibrate` fits both by non-negative least squares on files with a reference (the
baseline's, then human reviews and trusted feedback), and keeps the residual variance per
segment. :func:`estimate` gives the window's WER with a 90 % interval that holds both the
sampling error of the window's segments (a bootstrap) and the model's own (the residual variance).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import nnls

#: words a second of speech carries, for the deletions of a segment that says too little
SPEECH_RATE_WPS = 2.5
#: the terms of a segment's expected errors, in order
TERMS = (
    "segment",  # 1 per segment: errors at its edges (a word cut in two, a word joined)
    "unsure_words",  # hypothesis words x (1 - their mean probability)
    "logprob_words",  # hypothesis words x -avg_logprob
    "missing_words",  # words the speech should have held beyond those that came out
    "empty_speech_s",  # seconds of speech in a segment whose final is empty
    "guard_speech_s",  # seconds of speech in a segment where the guard dropped text
)
#: the interval's coverage (two-sided)
LEVEL = 0.90
_Z = 1.6448536269514722  # the normal quantile of (1 + LEVEL) / 2
BOOTSTRAP = 200


def segment_terms(features: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(error terms, [hypothesis words, speech seconds])`` of one segment from its features
    (those of :mod:`speechpipe.stages.features`, input and output)."""
    duration = float(features.get("duration_s", 0.0))
    words = float(features.get("words_per_s", 0.0)) * duration
    speech = duration * float(features.get("speech_ratio", 1.0))
    prob = float(features.get("word_probability", 0.0)) if words else 0.0
    logprob = float(features.get("avg_logprob", 0.0))
    empty = float(features.get("empty", 0.0))
    guard = float(features.get("guard_drops", 0.0))
    terms = [
        1.0,
        words * (1.0 - prob),
        words * max(0.0, -logprob) if words else 0.0,
        max(0.0, SPEECH_RATE_WPS * speech - words),
        speech * empty,
        speech * guard,
    ]
    return np.array(terms, dtype=float), np.array([words, speech], dtype=float)


@dataclass(frozen=True)
class Calibration:
    """The fitted model (see the module docstring). ``version``: a hash of the weights and of what
    they were fitted on, so two estimates say whether they came from the same calibration."""

    errors: tuple[float, ...]
    words: tuple[float, ...]
    sigma2: float  # residual variance of errors per segment
    sigma2_words: float  # residual variance of reference words per segment
    files: int
    segments: int
    source: str
    version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping) -> Calibration:
        return cls(
            tuple(float(x) for x in doc["errors"]),
            tuple(float(x) for x in doc["words"]),
            float(doc["sigma2"]),
            float(doc["sigma2_words"]),
            int(doc["files"]),
            int(doc["segments"]),
            str(doc.get("source", "")),
            str(doc.get("version", "")),
        )


@dataclass(frozen=True)
class Sample:
    """One file (or reviewed stretch) with a reference: its segments' summed terms, how many
    segments, and the truth."""

    terms: tuple[float, ...]
    words_terms: tuple[float, ...]
    segments: int
    errors: int
    words: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, segments: Sequence[Mapping[str, float]], errors: int, words: int) -> Sample:
        t = [segment_terms(s) for s in segments]
        x = np.sum([a for a, _ in t], axis=0) if t else np.zeros(len(TERMS))
        y = np.sum([b for _, b in t], axis=0) if t else np.zeros(2)
        return cls(tuple(float(v) for v in x), tuple(float(v) for v in y), len(segments), int(errors), int(words))


def calibrate(samples: Sequence[Sample], source: str) -> Calibration | None:
    """Fit the model on ``samples`` (None with fewer than 3 or no reference words)."""
    samples = [s for s in samples if s.segments and s.words]
    if len(samples) < 3:
        return None
    x = np.array([s.terms for s in samples])
    e = np.array([s.errors for s in samples], dtype=float)
    y = np.array([s.words_terms for s in samples])
    r = np.array([s.words for s in samples], dtype=float)
    n = np.array([s.segments for s in samples], dtype=float)
    # weighted by 1/sqrt(segments): a file's residual variance grows with its segments
    sw = 1.0 / np.sqrt(n)
    we, _ = nnls(x * sw[:, None], e * sw)
    wr, _ = nnls(y * sw[:, None], r * sw)
    dof = max(1, len(samples) - int(np.count_nonzero(we)))
    sigma2 = float(np.sum((e - x @ we) ** 2 / n) / dof)
    sigma2_words = float(np.sum((r - y @ wr) ** 2 / n) / max(1, len(samples) - 2))
    body = {"errors": we.round(6).tolist(), "words": wr.round(6).tolist(), "files": len(samples), "source": source}
    version = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return Calibration(
        tuple(float(v) for v in we),
        tuple(float(v) for v in wr),
        sigma2,
        sigma2_words,
        len(samples),
        int(n.sum()),
        source,
        version,
    )


@dataclass(frozen=True)
class Estimate:
    """A window's estimated WER and its interval (:data:`LEVEL`)."""

    estimated_wer: float
    low: float
    high: float
    segments: int
    words: float  # the estimated reference words
    calibration: str

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def estimate(window: Sequence[Mapping[str, float]], calibration: Calibration, seed: int = 0) -> Estimate | None:
    """The estimated WER of the segments of ``window`` (None for an empty window)."""
    if not window:
        return None
    t = [segment_terms(s) for s in window]
    x = np.array([a for a, _ in t])
    y = np.array([b for _, b in t])
    e_seg = x @ np.array(calibration.errors)
    r_seg = y @ np.array(calibration.words)
    errors, words = float(e_seg.sum()), float(r_seg.sum())
    if words <= 0:
        return None
    wer = errors / words
    n = len(window)
    # sampling error: the window's segments drawn again (a window is a sample of the traffic)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(BOOTSTRAP, n))
    draws = e_seg[idx].sum(axis=1) / np.maximum(r_seg[idx].sum(axis=1), 1e-9)
    var_sample = float(np.var(draws))
    # the model's own error: each segment's residual, independent (delta method on the ratio)
    var_model = (n * calibration.sigma2 + wer**2 * n * calibration.sigma2_words) / words**2
    half = _Z * math.sqrt(var_sample + var_model)
    return Estimate(wer, max(0.0, wer - half), wer + half, n, words, calibration.version)
