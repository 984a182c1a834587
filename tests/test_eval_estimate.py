"""The estimated WER in ``speechpipe eval`` (``--calibration``), without the model: which
calibration each variant gets from a baseline profile, the figures computed from runs whose
segment features are written out, the summary table, and a bad profile refused before anything
runs. The end-to-end run on corpus audio is tests/test_evaluate.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.evaluate.cli import print_summary
from speechpipe.pipeline.evaluate.quality import evaluation as ev
from speechpipe.pipeline.evaluate.runner import EvalError, load_calibrations
from speechpipe.pipeline.monitoring.quality import Sample, calibrate, estimate, expected

ROOT_SAMPLES = "samples"


def seg(words: float, prob: float, duration: float = 4.0) -> dict:
    return {
        "duration_s": duration,
        "speech_ratio": 1.0,
        "words_per_s": words / duration,
        "word_probability": prob,
        "avg_logprob": -0.3,
        "empty": 0.0,
        "guard_drops": 0.0,
    }


@pytest.fixture(scope="module")
def cal():
    rng = np.random.default_rng(3)
    files = [
        Sample.of([seg(8.0, p) for p in rng.uniform(0.5, 0.99, 3)], int(rng.integers(0, 6)), 24) for _ in range(20)
    ]
    return calibrate(files, "baseline")


def profile(tmp_path, variants: dict) -> str:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"version": 1, "variants": variants}))
    return str(path)


def test_each_variant_gets_its_own_calibration_else_the_only_or_the_default_one(tmp_path, cal):
    other = calibrate([Sample.of([seg(6.0, 0.9)], 1, 7)] * 3, "other")
    spec = {"quality": {"calibration": cal.to_dict()}}
    two = profile(tmp_path, {"default": spec, "green": {"quality": {"calibration": other.to_dict()}}})
    found = load_calibrations(two, ["green", "default", "sweep-a"])
    assert found["green"] == other and found["default"] == cal and found["sweep-a"] == cal
    only = tmp_path / "only"
    only.mkdir()
    assert load_calibrations(profile(only, {"blue": spec}), ["x", "y"]) == {"x": cal, "y": cal}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not a baseline profile"),  # no such file
        ("{not json", "not a baseline profile"),
        ("[1, 2]", "not a baseline profile"),
        ('{"version": 1, "variants": {"default": {"segments": 3}}}', "no calibration of the estimated WER"),
        ('{"version": 1, "variants": {"default": {"quality": {"calibration": {"errors": []}}}}}', "not a baseline"),
    ],
)
def test_a_file_that_is_no_calibrated_profile_is_refused_with_its_name(tmp_path, content, message):
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EvalError, match=message) as err:
        load_calibrations(path, ["default"])
    assert str(path) in str(err.value)


def test_eval_with_a_bad_calibration_exits_with_an_error_before_running(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", ROOT_SAMPLES, "--calibration", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--calibration" in err and "missing.json" in err and "not a baseline profile" in err
    assert "Traceback" not in err and not (out / "eval.json").exists()


def run_of(name: str, features: list[dict], text: str = "a b c") -> ev.FileRun:
    segments = [ev.SegmentInfo(i, 4.0 * i, 4.0 * i + 4.0, "silence", 1.0, text) for i in range(len(features))]
    return ev.FileRun(name, 4.0 * len(features), text, segments, [], features=features)


def test_the_variant_estimate_covers_the_scored_files_and_each_file_has_its_expected_errors(cal):
    rng = np.random.default_rng(4)
    a = [seg(8.0, p) for p in rng.uniform(0.5, 0.99, 4)]
    b = [seg(6.0, p) for p in rng.uniform(0.5, 0.99, 3)]
    unscored = [seg(9.0, 0.3)] * 5  # a labelled clip without a reference: not in the true WER
    runs = [run_of("a", a), run_of("b", b), run_of("clip", unscored)]
    truths = [ev.FileTruth("a", 16.0, "a b d"), ev.FileTruth("b", 12.0, "a b c"), ev.FileTruth("clip", 20.0)]
    rows = [ev.evaluate_file(r, t, calibration=cal) for r, t in zip(runs, truths)]
    summary = ev.summarize_variant(ev.VariantInput("v", rows, runs, truths, calibration=cal))
    est = summary["estimated"]
    want = estimate(a + b, cal)
    assert (
        est["segments"] == 7 and est["files"] == 2 and est["true_wer"] == summary["wer"] == pytest.approx(1 / 6, 1e-3)
    )
    assert est["estimated_wer"] == pytest.approx(want.estimated_wer, abs=1e-4)
    assert (est["low"], est["high"]) == (pytest.approx(want.low, abs=1e-4), pytest.approx(want.high, abs=1e-4))
    assert est["covered"] == (want.low <= 1 / 6 <= want.high)
    assert est["abs_error"] == pytest.approx(abs(want.estimated_wer - 1 / 6), abs=2e-4)
    assert est["calibration"] == {"version": cal.version, "source": "baseline"}
    for row, run in zip(rows, runs):
        errors = sum(expected(f, cal)[0] for f in run.features)
        assert row["estimated"]["segments"] == len(run.features)
        assert row["estimated"]["expected_errors"] == pytest.approx(errors, abs=1e-3)
    # without a calibration: no estimate anywhere
    plain = [ev.evaluate_file(r, t) for r, t in zip(runs, truths)]
    assert all("estimated" not in r for r in plain)
    assert "estimated" not in ev.summarize_variant(ev.VariantInput("v", plain, runs, truths))
    # no reference at all: the estimate of every file, nothing to compare it with
    bare = [ev.FileTruth(t.file, t.duration) for t in truths]
    est = ev.summarize_variant(ev.VariantInput("v", rows, runs, bare, calibration=cal))["estimated"]
    assert est["segments"] == 12 and est["true_wer"] is None and est["covered"] is None and est["abs_error"] is None


def test_the_summary_table_shows_the_estimate_beside_the_wer(cal, capsys):
    runs = [run_of("a", [seg(8.0, 0.8)] * 3)]
    truths = [ev.FileTruth("a", 12.0, "a b d")]
    rows = [ev.evaluate_file(runs[0], truths[0], calibration=cal)]
    summary = ev.summarize_variant(ev.VariantInput("default", rows, runs, truths, calibration=cal))
    print_summary({"variants": {"default": summary}, "comparisons": []})
    header, line = capsys.readouterr().out.splitlines()
    assert "est. WER [90 %]" in header and header.index("WER") < header.index("est. WER [90 %]")
    est = summary["estimated"]
    assert f"{est['estimated_wer'] * 100:.2f}% [{est['low'] * 100:.1f}-{est['high'] * 100:.1f}]" in line
    del summary["estimated"]
    print_summary({"variants": {"default": summary}, "comparisons": []})
    assert "est. WER" not in capsys.readouterr().out
