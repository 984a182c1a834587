"""The dashboard's pure parts: figures read from a Prometheus exposition like Prometheus reads
them, recent figures as increases, histograms on shared bins, and concept drift by feedback WER."""

from __future__ import annotations

import numpy as np
import pytest

from speechpipe.pipeline.dashboard.figures import DashboardFeed, Query, parse, quantile
from speechpipe.pipeline.dashboard.state import finite
from speechpipe.pipeline.dashboard.timeline import Timeline, timeline_point
from speechpipe.pipeline.monitoring.concept import CONFIDENCE, FEEDBACK, ConceptMonitor, learn_wer_threshold
from speechpipe.pipeline.monitoring.histograms import feature_histogram

BOUNDS = (0.5, 1.0, 2.0, 4.0)


def exposition(latencies: list[float], finals: dict[str, int], streams_open: int) -> str:
    """A text exposition in the shape the server's /metrics gives (histogram, counter, gauge)."""
    lines = ["# TYPE speechpipe_final_latency_seconds histogram"]
    for le in (*BOUNDS, float("inf")):
        count = sum(1 for x in latencies if x <= le)
        bound = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'speechpipe_final_latency_seconds_bucket{{pipeline_variant="a",le="{bound}"}} {count}')
    lines.append(f'speechpipe_final_latency_seconds_count{{pipeline_variant="a"}} {len(latencies)}')
    lines.append(f'speechpipe_final_latency_seconds_sum{{pipeline_variant="a"}} {sum(latencies)}')
    lines.append("# TYPE speechpipe_output_segments counter")
    for empty, n in finals.items():
        lines.append(f'speechpipe_output_segments_total{{pipeline_variant="a",asr_empty="{empty}"}} {n}')
    lines.append("# TYPE speechpipe_streams_active gauge")
    lines.append(f'speechpipe_streams_active{{pipeline_variant="a"}} {streams_open}')
    return "\n".join(lines) + "\n"


def test_quantiles_interpolate_within_buckets_like_histogram_quantile():
    lat = [0.2, 0.3, 0.7, 0.8, 0.9, 1.5, 1.7, 3.0, 3.5, 9.0]
    q = Query(parse(exposition(lat, {"false": 10}, 1)))
    buckets = q.buckets("speechpipe_final_latency_seconds")
    assert [c for _, c in buckets] == [2, 5, 7, 9, 10]
    # rank 5 of 10 is the top of the (0.5, 1.0] bucket; rank 9.5 lies in +Inf: the highest finite bound
    assert quantile(0.5, buckets) == pytest.approx(1.0)
    assert quantile(0.95, buckets) == pytest.approx(4.0)
    # rank 3 of 10: a third of the way through (0.5, 1.0], which holds ranks 3 to 5
    assert quantile(0.3, buckets) == pytest.approx(0.5 + 0.5 * (3 - 2) / 3)
    assert quantile(0.5, []) is None


def test_recent_figures_are_increases_over_the_recent_span():
    feed = DashboardFeed(recent_s=60.0)
    early = [0.3] * 20
    first = feed.update(1000.0, exposition(early, {"false": 20}, 2))
    assert first["service"]["latency"]["p50"] == first["service"]["latency_recent"]["p50"]
    later = early + [3.0] * 10
    second = feed.update(1030.0, exposition(later, {"false": 25, "true": 5}, 3))
    svc, var = second["service"], second["variants"]["a"]
    assert svc["latency"]["n"] == 30 and svc["latency_recent"]["n"] == 10
    assert svc["latency_recent"]["p50"] > 2.0 > svc["latency"]["p50"]
    assert var["empty_rate"] == pytest.approx(5 / 30) and var["empty_rate_recent"] == pytest.approx(5 / 10)
    assert second["recent_s"] == 30.0 and svc["accepted_recent"] == 0.0


def test_human_wer_is_read_over_its_own_longer_span():
    """Feedback comes a few times a minute: each variant's human WER is the increase of its
    feedback errors over words in the last ``human_s`` (300 s), not the recent minute's."""

    def page(errors: int, words: int) -> str:
        return (
            "# TYPE speechpipe_feedback_errors counter\n"
            f'speechpipe_feedback_errors_total{{pipeline_variant="a"}} {errors}\n'
            "# TYPE speechpipe_feedback_words counter\n"
            f'speechpipe_feedback_words_total{{pipeline_variant="a"}} {words}\n'
        )

    feed = DashboardFeed(recent_s=60.0, human_s=300.0)
    assert feed.update(0.0, page(50, 100))["variants"]["a"]["human_wer_recent"] == pytest.approx(0.5)
    feed.update(200.0, page(52, 200))
    at = feed.update(400.0, page(52, 200))  # nothing new in the last minute; 400 s ago is the first page
    assert at["variants"]["a"]["human_wer_recent"] == pytest.approx(2 / 100) and at["human_s"] == 300.0
    later = feed.update(550.0, page(62, 300))  # the span begins at the page of 200 s
    assert later["variants"]["a"]["human_wer_recent"] == pytest.approx(10 / 100)
    assert later["variants"]["a"]["feedback_wer"] == pytest.approx(62 / 300)


def test_the_timeline_keeps_points_apart_drops_old_ones_and_gives_columns():
    timeline = Timeline(span_s=10.0, every_s=2.0)
    state = {
        "time": 100.0,
        "service": {"streams_open": 2.0, "accepted_recent": 3.0, "refused_recent": 1.0, "lost": 0.0},
        "variants": {"a": {"latency_recent": {"p50": 0.4, "p95": 0.9}, "human_wer_recent": None, "streams_open": 2.0}},
        "deploy": {"variants": {"a": {"weight": 0.75}, "b": {"weight": 0.25}}},
        "drift": {"variants": {"a": {"quality": {"estimated_wer": 0.06, "low": 0.02, "high": 0.1}}}},
    }
    point = timeline_point(state)
    assert point["t"] == 100.0 and point["refused_last_min"] == 1.0
    assert point["latency_p95.a"] == 0.9 and point["estimated_wer.a"] == 0.06 and point["weight.b"] == 0.25
    assert point["latency_p95.b"] is None  # deployed, no figures yet
    assert timeline.add(point) and not timeline.add(point | {"t": 101.0})  # under every_s apart
    for t in (102.0, 104.0, 112.0):
        assert timeline.add(point | {"t": t, "streams_open": t})
    cols = timeline.columns()
    assert cols["t"] == [102.0, 104.0, 112.0]  # 100 is older than span_s
    assert cols["streams_open"] == [102.0, 104.0, 112.0] and next(iter(cols)) == "t"
    assert timeline.columns(since=104.0)["t"] == [112.0] and timeline.last["t"] == 112.0
    assert timeline.add({"t": 114.0, "weight.c": 1.0})
    assert timeline.columns()["weight.c"] == [None, None, 1.0]  # 102 went: older than 10 s


def test_histograms_share_bins_and_sum_to_one():
    rng = np.random.default_rng(1)
    h = feature_histogram("numeric", rng.normal(0, 1, 500).tolist(), rng.normal(2, 1, 60).tolist(), bins=10)
    assert len(h["labels"]) == len(h["baseline"]) == len(h["current"]) == 10
    assert sum(h["baseline"]) == pytest.approx(1.0, abs=1e-3) and sum(h["current"]) == pytest.approx(1.0, abs=1e-3)
    centre = np.array([float(x) for x in h["labels"]])
    assert np.dot(centre, h["current"]) > np.dot(centre, h["baseline"]) + 1.0
    cats = feature_histogram("categorical", [16000.0] * 9 + [8000.0], [8000.0] * 4, bins=10)
    assert cats["labels"] == ["8000", "16000"] and cats["current"] == [1.0, 0.0] and cats["baseline"] == [0.1, 0.9]
    assert finite({"a": [float("nan"), 1.0], "b": float("inf")}) == {"a": [None, 1.0], "b": None}


def test_concept_drift_compares_feedback_wer_with_the_baseline_wer():
    rng = np.random.default_rng(2)
    # baseline: 60 scored files of 8-30 words at about 5 % WER
    files = []
    for _ in range(60):
        w = int(rng.integers(8, 30))
        files.append([int(rng.binomial(w, 0.05)), w])
    baseline = {"errors": sum(e for e, _ in files), "words": sum(w for _, w in files), "files": files}
    assert learn_wer_threshold(files, 200) > baseline["errors"] / baseline["words"]
    same, worse = ConceptMonitor({"a": baseline}, 400, 100), ConceptMonitor({"a": baseline}, 400, 100)
    assert same.report("a", ["avg_logprob", "snr_db"]).source == CONFIDENCE
    assert same.report("a", ["avg_logprob", "snr_db"]).stand_ins == ("avg_logprob",)
    assert same.report("a", ["avg_logprob"]).alert and not same.report("a").alert
    for _ in range(40):
        w = int(rng.integers(8, 30))
        same.add("a", int(rng.binomial(w, 0.05)), w)
        worse.add("a", int(rng.binomial(w, 0.20)), w)
    calm, drifted = same.report("a"), worse.report("a")
    assert calm.source == drifted.source == FEEDBACK
    assert 390 <= calm.words < 430  # the window keeps about window_words
    assert not calm.alert and calm.wer < calm.threshold
    assert drifted.alert and drifted.wer > drifted.threshold > drifted.baseline_wer
    # a variant with no baseline WER is shown, never alarmed
    other = ConceptMonitor({}, 400, 100)
    other.add("b", 50, 100)
    assert other.report("b").wer == 0.5 and not other.report("b").alert and other.report("b").threshold is None


def test_a_snapshot_is_due_at_a_tick_only_when_the_time_series_wants_a_point():
    from speechpipe.pipeline.dashboard.state import DashboardState

    now = [1000.0]
    page = exposition([0.3], {"false": 1}, 1).encode()
    state = DashboardState(lambda: (page, "text/plain"), lambda: None, lambda: None, clock=lambda: now[0])
    assert state.point_due()  # no point yet
    state.snapshot()
    now[0] += 1.0
    assert not state.point_due()  # a point every 2 s: the next tick parses nothing
    now[0] += 1.0
    assert state.point_due()
    assert state.snapshot()["point"]["t"] == 1002.0 and state.history()["columns"]["t"] == [1000.0, 1002.0]
