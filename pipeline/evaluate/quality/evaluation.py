"""Evaluation figures of pipeline variants: per file, per variant, and between two variants
(:mod:`speechpipe.pipeline.evaluate.quality.comparison`).

Pure computations over what a run produced (:class:`FileRun`) and what is known about the file
(:class:`FileTruth`); :mod:`speechpipe.pipeline.evaluate` collects both by running the real
pipeline, and :mod:`speechpipe.pipeline.evaluate.report.page` draws the result. The JSON written from these
dicts is documented in docs/evaluation.md.

With a calibration of the estimated WER (:mod:`speechpipe.pipeline.monitoring.quality`, the live
drift monitor's estimator, from a baseline profile), each file also gets its expected word errors
and reference words from its segments' features alone, and each variant the estimated WER of all
its scored files' segments beside its true WER (:func:`estimate_variant`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from speechpipe.pipeline.evaluate.quality.attribution import CATEGORIES, Segments, attribute
from speechpipe.pipeline.evaluate.quality.vad_metrics import Interval, frame_score, pooled_score
from speechpipe.pipeline.evaluate.quality.wer import WerResult, normalized_words, score, score_corpus
from speechpipe.pipeline.evaluate.quality.word_timing import (
    BOUNDARY_TOLERANCE_S,
    RawWord,
    TimedWord,
    speech_regions,
    timed_tokens,
)
from speechpipe.pipeline.monitoring.quality import LEVEL, Calibration, Estimate, estimate, expected
from speechpipe.stages.vad import END_MAX_LENGTH

#: an onset or offset counts as clipped when the VAD misses more than this much of it (seconds).
CLIP_MIN_S = 0.05
#: a segment boundary moved by more than this between two variants counts as changed (seconds).
BOUNDARY_CHANGE_S = 0.01


@dataclass
class SegmentInfo:
    """A VAD segment as the evaluation sees it."""

    index: int
    start: float
    end: float
    end_reason: str
    speech_ratio: float
    text: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        d["speech_ratio"] = round(self.speech_ratio, 4)
        return d


@dataclass
class FileRun:
    """What one variant of the pipeline produced on one file."""

    file: str
    duration: float
    text: str
    segments: list[SegmentInfo]
    words: list[RawWord]
    discarded: int = 0
    speech_frames: int = 0
    total_frames: int = 0
    asr_wall_s: float = 0.0
    asr_calls: int = 0
    hallucination_drops: int = 0
    vad_config_id: str = ""
    #: per-segment features (:mod:`speechpipe.stages.features`) of each segment with a final, in
    #: stream order: what the estimated WER is computed from
    features: list[dict[str, float]] = field(default_factory=list)

    @property
    def asr_audio_s(self) -> float:
        return sum(s.duration for s in self.segments)


@dataclass
class FileTruth:
    """What is known about a file: its reference transcript, its human VAD labels, and the
    timed reference words (when a reference exists)."""

    file: str
    duration: float
    reference: str | None = None
    labels: list[Interval] | None = None
    ref_words: list[TimedWord] | None = None

    def speech(self) -> list[Interval] | None:
        """Reference speech: the labels when present, else regions of the timed reference words."""
        if self.labels is not None:
            return self.labels
        if self.ref_words:
            return speech_regions(self.ref_words)
        if self.reference is not None and not normalized_words(self.reference):
            return []
        return None


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def _no_clipping() -> dict:
    return {
        "regions": 0,
        "missed": 0,
        "onset_clipped": 0,
        "onset_clip_s": 0.0,
        "offset_clipped": 0,
        "offset_clip_s": 0.0,
    }


def clipping(speech: Sequence[Interval], segments: Sequence[SegmentInfo]) -> dict:
    """Onset and offset clipping of the reference speech regions by the segments.

    For each region that some segment touches, the onset clip is the time from the region's start
    to the first instant a segment covers, the offset clip the time from the last covered instant
    to the region's end; a clip above :data:`CLIP_MIN_S` counts. Regions no segment touches are
    ``missed``.
    """
    out = _no_clipping()
    for a, b in speech:
        if b <= a:
            continue
        out["regions"] += 1
        covered = [(max(a, s.start), min(b, s.end)) for s in segments if s.end > a and s.start < b]
        if not covered:
            out["missed"] += 1
            continue
        first = min(c[0] for c in covered)
        last = max(c[1] for c in covered)
        if first - a > CLIP_MIN_S:
            out["onset_clipped"] += 1
            out["onset_clip_s"] += first - a
        if b - last > CLIP_MIN_S:
            out["offset_clipped"] += 1
            out["offset_clip_s"] += b - last
    out["onset_clip_s"] = round(out["onset_clip_s"], 3)
    out["offset_clip_s"] = round(out["offset_clip_s"], 3)
    return out


def hypothesis_words(run: FileRun) -> list[TimedWord]:
    """The normalized words of the run's text, timed, with their segment."""
    return timed_tokens(run.words, normalized_words(run.text))


def evaluate_file(
    run: FileRun, truth: FileTruth, tolerance: float = BOUNDARY_TOLERANCE_S, calibration: Calibration | None = None
) -> dict:
    """All per-file figures of one variant on one file (a row of ``per_file`` in eval.json); with
    a ``calibration``, its expected errors and words too (``estimated``, :func:`expect_file`)."""
    segs = run.segments
    minutes = run.duration / 60 if run.duration else 0.0
    vad: dict = {
        "segments": len(segs),
        "segments_per_min": _r(len(segs) / minutes if minutes else 0.0, 3),
        "mean_segment_s": _r(sum(s.duration for s in segs) / len(segs), 3) if segs else 0.0,
        "forced_splits": sum(s.end_reason == END_MAX_LENGTH for s in segs),
        "discarded": run.discarded,
        "speech_ratio": _r(run.speech_frames / run.total_frames if run.total_frames else 0.0),
        "coverage": _r(run.asr_audio_s / run.duration if run.duration else 0.0),
        "labelled": truth.labels is not None,
    }
    predicted = [(s.start, s.end) for s in segs]
    if truth.labels is not None:
        fs = frame_score(predicted, truth.labels, run.duration)
        vad.update(precision=_r(fs.precision), recall=_r(fs.recall), f1=_r(fs.f1))
    speech = truth.speech()
    if speech is not None:
        vad["clipping"] = clipping(speech, segs)

    row: dict = {
        "file": run.file,
        "duration": round(run.duration, 3),
        "vad_config_id": run.vad_config_id,
        "text": run.text,
        "vad": vad,
        "asr": {
            "words": len(normalized_words(run.text)),
            "empty_segments": sum(not s.text.strip() for s in segs),
            "hallucination_drops": run.hallucination_drops,
        },
        "compute": {
            "asr_audio_s": round(run.asr_audio_s, 3),
            "asr_wall_s": round(run.asr_wall_s, 3),
            "asr_calls": run.asr_calls,
            "asr_s_per_audio_s": _r(run.asr_wall_s / run.duration if run.duration else 0.0),
        },
        "segments": [s.to_dict() for s in segs],
        "wer": None,
        "errors": None,
        "error_list": [],
    }
    if calibration is not None:
        row["estimated"] = expect_file(run, calibration).to_dict()
    hyp = hypothesis_words(run)
    if truth.reference is not None:
        wer = score(truth.reference, run.text)
        row["wer"] = wer.to_dict()
        row["asr"]["empty_output"] = wer.ref_words > 0 and not normalized_words(run.text)
        if truth.ref_words is not None:
            att = attribute(
                truth.reference,
                run.text,
                truth.ref_words,
                hyp,
                Segments([(s.index, s.start, s.end) for s in segs], run.duration),
                tolerance=tolerance,
                speech=speech,
            )
            row["errors"] = att.counts
            row["error_list"] = [e.to_dict() for e in att.errors]
            row["asr"]["hallucinated_words"] = att.hallucinations
    elif truth.labels is not None:
        # No transcript: every word emitted on labelled non-speech is a hallucination.
        row["asr"]["hallucinated_words"] = sum(
            not any(w.start < b + tolerance and w.end > a - tolerance for a, b in truth.labels) for w in hyp
        )
        row["asr"]["hallucinations"] = [
            w.to_dict()
            for w in hyp
            if not any(w.start < b + tolerance and w.end > a - tolerance for a, b in truth.labels)
        ]
    return row


@dataclass
class VariantInput:
    """Everything needed to summarise a variant: its rows and the truths and runs behind them."""

    name: str
    rows: list[dict]
    runs: list[FileRun]
    truths: list[FileTruth]
    config: dict = field(default_factory=dict)
    params: dict | None = None
    failed: list[dict] = field(default_factory=list)
    #: the estimated WER's calibration (None: no ``estimated`` figures)
    calibration: Calibration | None = None


def summarize_variant(v: VariantInput) -> dict:
    """Variant-level figures: pooled over files (errors and reference words summed before
    dividing; VAD frames pooled over the labelled files); with a calibration, the estimated WER
    beside the true one (``estimated``, :func:`estimate_variant`)."""
    rows, runs, truths = v.rows, v.runs, v.truths
    audio_s = sum(r.duration for r in runs)
    pairs = [(t.reference, r.text) for r, t in zip(runs, truths) if t.reference is not None]
    wer: WerResult | None = score_corpus(pairs) if pairs else None
    errors = dict.fromkeys(CATEGORIES, 0)
    attributed = 0
    for row in rows:
        if row["errors"]:
            attributed += 1
            for k in CATEGORIES:
                errors[k] += row["errors"][k]
    ref_words = wer.ref_words if wer else 0
    labelled = [(r, t) for r, t in zip(runs, truths) if t.labels is not None]
    if labelled:
        fs = pooled_score([([(s.start, s.end) for s in r.segments], t.labels, r.duration) for r, t in labelled])
        vad_score = {
            "precision": _r(fs.precision),
            "recall": _r(fs.recall),
            "f1": _r(fs.f1),
            "labelled_files": len(labelled),
            "labelled_speech_s": round(fs.labelled_s, 2),
        }
    else:
        vad_score = {"precision": None, "recall": None, "f1": None, "labelled_files": 0, "labelled_speech_s": 0.0}
    n_segs = sum(len(r.segments) for r in runs)
    seg_s = sum(r.asr_audio_s for r in runs)
    clip = _no_clipping()
    for row in rows:
        for k, val in row["vad"].get("clipping", {}).items():
            clip[k] += val
    clip["onset_clip_s"] = round(clip["onset_clip_s"], 3)
    clip["offset_clip_s"] = round(clip["offset_clip_s"], 3)
    asr_wall = sum(r.asr_wall_s for r in runs)
    total_frames = sum(r.total_frames for r in runs)
    return {
        "name": v.name,
        "config": v.config,
        "params": v.params,
        "vad_config_id": runs[0].vad_config_id if runs else "",
        "files": len(runs),
        "failed": v.failed,
        "audio_s": round(audio_s, 3),
        "wer": _r(wer.wer) if wer else None,
        "cer": _r(wer.cer) if wer else None,
        "substitutions": wer.substitutions if wer else 0,
        "deletions": wer.deletions if wer else 0,
        "insertions": wer.insertions if wer else 0,
        "ref_words": ref_words,
        "hyp_words": wer.hyp_words if wer else 0,
        "scored_files": len(pairs),
        "attributed_files": attributed,
        "errors": errors,
        "errors_wer": {k: _r(n / ref_words if ref_words else 0.0) for k, n in errors.items()},
        **(
            {"estimated": estimate_variant(runs, truths, wer, v.calibration).to_dict()}
            if v.calibration is not None
            else {}
        ),
        "empty_outputs": sum(bool(row["asr"].get("empty_output")) for row in rows),
        "empty_segments": sum(row["asr"]["empty_segments"] for row in rows),
        "hallucinated_words": sum(row["asr"].get("hallucinated_words", 0) for row in rows),
        "hallucination_drops": sum(r.hallucination_drops for r in runs),
        "vad": {
            **vad_score,
            "speech_ratio": _r(sum(r.speech_frames for r in runs) / total_frames if total_frames else 0.0),
            "coverage": _r(seg_s / audio_s if audio_s else 0.0),
            "segments": n_segs,
            "segments_per_min": _r(n_segs / (audio_s / 60) if audio_s else 0.0, 3),
            "mean_segment_s": _r(seg_s / n_segs if n_segs else 0.0, 3),
            "forced_splits": sum(row["vad"]["forced_splits"] for row in rows),
            "discarded": sum(r.discarded for r in runs),
            "clipping": clip,
        },
        "asr_audio_s": round(seg_s, 3),
        "asr_wall_s": round(asr_wall, 3),
        "asr_calls": sum(r.asr_calls for r in runs),
        "asr_s_per_audio_s": _r(asr_wall / audio_s if audio_s else 0.0),
        "per_file": rows,
    }


# ------------------------------------------------------------------------ the estimated WER


@dataclass(frozen=True)
class FileExpectation:
    """One file's expected word errors and reference words, from its segments' features alone
    (summed over the segments: the estimator is additive)."""

    segments: int
    errors: float
    words: float

    @property
    def wer(self) -> float | None:
        return self.errors / self.words if self.words > 0 else None

    def to_dict(self) -> dict:
        return {
            "segments": self.segments,
            "expected_errors": _r(self.errors, 3),
            "expected_words": _r(self.words, 3),
            "estimated_wer": _r(self.wer),
        }


def expect_file(run: FileRun, calibration: Calibration) -> FileExpectation:
    """The expected errors and reference words of ``run``'s segments under ``calibration``."""
    pairs = [expected(f, calibration) for f in run.features]
    return FileExpectation(len(pairs), sum(e for e, _ in pairs), sum(w for _, w in pairs))


@dataclass(frozen=True)
class VariantEstimate:
    """A variant's estimated WER over a dataset (None: no segment, or no word expected) beside its
    true WER over the same files (None: no file has a reference)."""

    estimate: Estimate | None
    calibration: Calibration
    files: int
    true_wer: float | None

    @property
    def covered(self) -> bool | None:
        """Whether the interval holds the true WER."""
        if self.estimate is None or self.true_wer is None:
            return None
        return self.estimate.low <= self.true_wer <= self.estimate.high

    @property
    def abs_error(self) -> float | None:
        if self.estimate is None or self.true_wer is None:
            return None
        return abs(self.estimate.estimated_wer - self.true_wer)

    def to_dict(self) -> dict:
        est = self.estimate
        return {
            "estimated_wer": _r(est.estimated_wer) if est else None,
            "low": _r(est.low) if est else None,
            "high": _r(est.high) if est else None,
            "level": LEVEL,
            "segments": est.segments if est else 0,
            "words": _r(est.words, 1) if est else 0.0,
            "files": self.files,
            "calibration": {"version": self.calibration.version, "source": self.calibration.source},
            "true_wer": _r(self.true_wer),
            "covered": self.covered,
            "abs_error": _r(self.abs_error),
        }


def estimate_variant(
    runs: Sequence[FileRun], truths: Sequence[FileTruth], wer: WerResult | None, calibration: Calibration
) -> VariantEstimate:
    """The estimated WER (:func:`~speechpipe.pipeline.monitoring.quality.estimate`, one window of
    every segment) over the files the true WER ``wer`` scored (those with a reference; every file
    when none has one), so that the two speak of the same audio."""
    scored = [r for r, t in zip(runs, truths) if t.reference is not None] if wer is not None else list(runs)
    window = [f for r in scored for f in r.features]
    return VariantEstimate(estimate(window, calibration), calibration, len(scored), wer.wer if wer else None)


# --------------------------------------------------------------------------------- comparing


def sweep_rows(variants: Sequence[dict]) -> list[dict]:
    """One row per swept combination: its parameters, WER, errors and compute."""
    return [
        {
            "variant": v["name"],
            "params": v["params"],
            "wer": v["wer"],
            "errors": v["errors"],
            "vad_f1": v["vad"]["f1"],
            "asr_audio_s": v["asr_audio_s"],
            "asr_wall_s": v["asr_wall_s"],
            "asr_s_per_audio_s": v["asr_s_per_audio_s"],
            "segments": v["vad"]["segments"],
        }
        for v in variants
        if v["params"] is not None
    ]
