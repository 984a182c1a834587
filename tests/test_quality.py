"""The estimated WER's arithmetic (pipeline/monitoring/quality.py), on segment features written
out: the terms of a segment, a calibration that recovers the weights files were made with, a
deletion the calibration never saw taken at its prior, and an interval that holds the estimate
and narrows as the window grows. Its accuracy on real speech is benchmarks/quality.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechpipe.pipeline.monitoring.quality import (
    DELETIONS,
    PRIOR_DELETION,
    SPEECH_RATE_WPS,
    TERMS,
    Calibration,
    Sample,
    calibrate,
    estimate,
    expected,
    load_calibration,
    segment_terms,
)


def seg(words: float, prob: float, duration: float = 4.0, speech: float = 1.0, **extra) -> dict:
    return {
        "duration_s": duration,
        "speech_ratio": speech,
        "words_per_s": words / duration,
        "word_probability": prob,
        "avg_logprob": -0.3,
        **extra,
    }


def test_a_segments_terms_count_unsure_missing_and_deleted_words():
    x, y = segment_terms(seg(8, 0.75, duration=4.0, speech=0.75))  # 3 s of speech should hold 7.5 words
    t = dict(zip(TERMS, x, strict=True))
    assert t["segment"] == 1 and t["unsure_words"] == pytest.approx(2.0) and t["logprob_words"] == pytest.approx(2.4)
    assert t["missing_words"] == 0 and t["empty_words"] == 0 and y[0] == pytest.approx(8)
    x, _ = segment_terms(seg(2, 0.9, duration=4.0))  # 10 words' worth of speech, 2 came out
    assert dict(zip(TERMS, x, strict=True))["missing_words"] == pytest.approx(SPEECH_RATE_WPS * 4 - 2)
    x, y = segment_terms(seg(0, 0.0, duration=2.0, empty=1.0))
    assert dict(zip(TERMS, x, strict=True))["empty_words"] == pytest.approx(5.0) and list(y[1:]) == [0, 5.0, 0]


def test_calibration_recovers_the_weights_and_an_unseen_deletion_takes_its_prior():
    rng = np.random.default_rng(0)
    files = []
    for _ in range(40):
        segments = [seg(float(rng.integers(4, 14)), float(rng.uniform(0.6, 0.98))) for _ in range(3)]
        unsure = sum(dict(zip(TERMS, segment_terms(s)[0], strict=True))["unsure_words"] for s in segments)
        words = sum(s["words_per_s"] * s["duration_s"] for s in segments)
        files.append(Sample.of(segments, round(0.8 * unsure), round(1.05 * words)))
    cal = calibrate(files, "test")
    weights = dict(zip(TERMS, cal.errors, strict=True))
    assert weights["unsure_words"] == pytest.approx(0.8, abs=0.1) and cal.words[0] == pytest.approx(1.05, abs=0.02)
    assert weights["empty_words"] == weights["guard_words"] == PRIOR_DELETION  # never seen: the prior
    # a candidate whose finals are all empty is estimated at a WER of 1 on that speech
    est = estimate([seg(0, 0.0, empty=1.0)] * 10, cal)
    assert est.estimated_wer == pytest.approx(1.0) and est.low <= 1.0 <= est.high
    errors, words = expected(seg(0, 0.0, duration=2.0, empty=1.0), cal)
    assert errors == pytest.approx(words) == pytest.approx(5.0)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert calibrate(files[:2], "too few") is None and len(cal.version) == 8
    assert calibrate(files, "test").version == cal.version and calibrate(files[:-1], "test").version != cal.version


def test_the_interval_holds_the_estimate_and_narrows_with_more_segments(tmp_path):
    rng = np.random.default_rng(1)
    files = [
        Sample.of([seg(8.0, p) for p in rng.uniform(0.5, 0.99, 3)], int(rng.integers(0, 6)), 24) for _ in range(30)
    ]
    cal = calibrate(files, "test")
    small = estimate([seg(8.0, p) for p in rng.uniform(0.5, 0.99, 5)], cal)
    large = estimate([seg(8.0, p) for p in rng.uniform(0.5, 0.99, 80)], cal)
    for est in (small, large):
        assert 0 <= est.low <= est.estimated_wer <= est.high and est.calibration == cal.version
    assert large.high - large.low < small.high - small.low
    assert estimate([], cal) is None
    profile = tmp_path / "baseline.json"
    profile.write_text(json.dumps({"variants": {"default": {"quality": {"calibration": cal.to_dict()}}}}))
    assert load_calibration(profile, "other") == cal  # the only variant stands for any
    assert len(DELETIONS) == len(cal.words) - 1
