"""The word error rate of a variant estimated without references (issue 26): from what the pipeline
knows of each segment (its words and their probabilities, the decoder's log-probability, how much
of the segment was speech and how few words came out of it, an empty final, a guard drop), a
calibrated count of expected word errors and of reference words, summed over a window into an
estimated WER with an interval. Pure: data in, figures out.

The model is additive over segments, so that it can be fitted on whole files (a file's reference
is not split by segment) and applied to any window of segments:

* expected errors of a segment = ``w . terms(segment)`` (:data:`TERMS`, all >= 0, weights >= 0);
* expected reference words = ``r x hypothesis words`` + the deletions the errors count (the
  :data:`DELETIONS` terms with their error weights: a word the speech should have held and that
  did not come out is a deletion and a reference word).

:func:`calibrate` fits both by non-negative least squares on files with a reference (the
baseline's, then human reviews and trusted feedback), and keeps the residual variance per
segment. A deletion term the files never show (a clean baseline has no empty final) takes the
prior :data:`PRIOR_DELETION`: an empty final on speech is then a WER of 1 for that speech, which
is what a candidate that returns nothing must be estimated at. :func:`estimate` gives the window's WER with a 90 % interval that holds both the
sampling error of the window's segments (a bootstrap) and the model's own (the residual variance).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

#: words a second of speech carries, for the deletions of a segment that says too little
SPEECH_RATE_WPS = 2.5
#: the terms of a segment's expected errors, in order
TERMS = (
    "segment",  # 1 per segment: errors at its edges (a word cut in two, a word joined)
    "unsure_words",  # hypothesis words x (1 - their mean probability)
    "logprob_words",  # hypothesis words x -avg_logprob
    "missing_words",  # words the speech should have held beyond those that came out (a final with text)
    "empty_words",  # words the speech of a segment whose final is empty should have held
    "guard_words",  # words the speech of a segment where the guard dropped text should have held
)
#: the terms whose weight is also their share of the reference words: a word that should have
#: come out and did not is a deletion, and a word of the reference
DELETIONS = ("missing_words", "empty_words", "guard_words")
#: a term the calibration files never show (no empty final in a clean baseline) gets this weight:
#: every word its speech should have held is taken for a deletion
PRIOR_DELETION = 1.0
#: the interval's coverage (two-sided)
LEVEL = 0.90
_Z = 1.6448536269514722  # the normal quantile of (1 + LEVEL) / 2
BOOTSTRAP = 200


def segment_terms(features: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(error terms, word terms)`` of one segment from its features (those of
    :mod:`speechpipe.stages.features`, input and output): the :data:`TERMS`, and the hypothesis
    words followed by the :data:`DELETIONS` terms."""
    duration = float(features.get("duration_s", 0.0))
    words = float(features.get("words_per_s", 0.0)) * duration
    speech = duration * float(features.get("speech_ratio", 1.0))
    prob = float(features.get("word_probability", 0.0)) if words else 0.0
    logprob = float(features.get("avg_logprob", 0.0))
    empty = float(features.get("empty", 0.0)) > 0
    guard = float(features.get("guard_drops", 0.0)) > 0 and not empty
    expected_words = SPEECH_RATE_WPS * speech
    missing = 0.0 if empty or guard else max(0.0, expected_words - words)
    terms = [
        1.0,
        words * (1.0 - prob),
        words * max(0.0, -logprob) if words else 0.0,
        missing,
        expected_words if empty else 0.0,
        max(0.0, expected_words - words) if guard else 0.0,
    ]
    return np.array(terms, dtype=float), np.array([words, *terms[3:]], dtype=float)


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
        y = np.sum([b for _, b in t], axis=0) if t else np.zeros(1 + len(DELETIONS))
        return cls(tuple(float(v) for v in x), tuple(float(v) for v in y), len(segments), int(errors), int(words))


def load_calibration(path: str | Path, variant: str) -> Calibration | None:
    """The calibration a baseline profile (``speechpipe baseline build``) keeps for ``variant``
    (or for its only variant); None when it has none. ValueError for a file that is not a profile."""
    try:
        doc = json.loads(Path(path).read_text())
        variants = doc["variants"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a baseline profile: {exc}") from None
    spec = variants.get(variant) or (next(iter(variants.values())) if len(variants) == 1 else None)
    found = (spec or {}).get("quality", {}).get("calibration")
    return Calibration.from_dict(found) if found else None


def expected(features: Mapping[str, float], calibration: Calibration) -> tuple[float, float]:
    """``(expected word errors, expected reference words)`` of one segment."""
    x, y = segment_terms(features)
    return float(x @ np.array(calibration.errors)), float(y @ np.array(calibration.words))


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
    seen = np.any(x > 0, axis=0)  # a term the files never show is not fitted: its prior stands
    we = np.zeros(len(TERMS))
    we[seen], _ = nnls(x[:, seen] * sw[:, None], e * sw)
    for k, name in enumerate(TERMS):
        if not seen[k] and name in DELETIONS:
            we[k] = PRIOR_DELETION
    # reference words: the hypothesis' words (fitted) and the deletions the errors counted (tied)
    tied = np.array([we[TERMS.index(d)] for d in DELETIONS])
    rest = r - y[:, 1:] @ tied
    (r_hyp,), _ = nnls(y[:, :1] * sw[:, None], rest * sw)
    wr = np.array([r_hyp, *tied])
    dof = max(1, len(samples) - int(np.count_nonzero(we[seen])))
    sigma2 = float(np.sum((e - x @ we) ** 2 / n) / dof)
    sigma2_words = float(np.sum((r - y @ wr) ** 2 / n) / max(1, len(samples) - 1))
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
