"""Choosing the review threshold: the curve of share sent against share of errors caught, its pick,
and ``speechpipe review threshold`` on a store of real reviews (corpus utterances transcribed by
the real model, reviewed with their references)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, speech_files

from speechpipe.pipeline.live.review import confidence_of
from speechpipe.pipeline.review.store import AiText, NewItem, ReviewStore
from speechpipe.pipeline.review.threshold import curve, pick
from speechpipe.stages.asr import AudioPiece
from speechpipe.stages.audio import load_audio


def test_the_curve_sends_the_least_confident_first_and_counts_what_it_catches():
    rows = [
        {"confidence": 0.95, "errors": 0, "words": 10},
        {"confidence": 0.50, "errors": 6, "words": 10},
        {"confidence": 0.70, "errors": 3, "words": 10},
        {"confidence": 0.70, "errors": 0, "words": 10},  # ties go together
        {"confidence": 0.90, "errors": 1, "words": 10},
    ]
    points = curve(rows)
    assert [(p.threshold, p.sent, p.caught) for p in points] == [
        (0.0, 0.0, 0.0),
        (0.70, 0.2, 0.6),
        (0.90, 0.6, 0.9),
        (0.95, 0.8, 1.0),
        (1.0, 1.0, 1.0),
    ]
    assert points[0].wer_before == points[0].wer_after == 10 / 50
    assert points[2].wer_after == pytest.approx(1 / 50)
    assert pick(points, 0.8) == points[2] and pick(points, 0.6) == points[1] and pick([], 0.8) is None


@pytest.mark.corpus
def test_the_command_picks_a_threshold_from_real_reviews(engine, tmp_path):
    db = tmp_path / "reviews.db"
    store = ReviewStore(str(db), tmp_path / "audio")
    for k, path in enumerate(speech_files()[:16]):
        audio, _ = load_audio(path)
        [((t,), _)] = engine.run([[AudioPiece(0, 0, audio)]])
        conf = confidence_of(t)
        item = store.add(
            NewItem(
                "s",
                k,
                "default",
                "assist",
                "level",
                0.0,
                1.0,
                audio,
                t.text,
                conf,
                [AiText("default", "primary", t.text, conf)],
            ),
            1000.0 + k,
        )
        claim = store.claim("sim", 2000.0, 60).claim
        store.submit(item.id, path.with_suffix(".txt").read_text(), claim, "sim", 2001.0)
    store.close()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechpipe.pipeline.cli",
            "review",
            "threshold",
            "--db",
            str(db),
            "--target-errors",
            "0.8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("default: 16 reviewed segments, AI WER ") and "catches" in out
    caught = int(out.split("catches ")[1].split("%")[0])
    sent = int(out.split("by sending ")[1].split("%")[0])
    assert caught >= 80 and sent < 100  # the least confident segments hold most of the errors
