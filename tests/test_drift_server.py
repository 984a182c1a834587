"""Drift monitoring on a real server: a baseline built from wideband corpus streams, then live
streams of the same kind (no alert) and of 8 kHz telephone audio (the bandwidth alerts), seen on
``GET /admin/drift``, on ``/metrics`` and as a ``drift`` span."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import pytest
from conftest import ROOT, SPEECH
from livehelp import ServerThread, full_window
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from speechpipe.pipeline.clients.client import paced, stream_pcm
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.monitoring.baseline import build_profile, load_profile, save_profile
from speechpipe.pipeline.monitoring.collector import FeatureCollector
from speechpipe.pipeline.monitoring.quality import Sample
from speechpipe.pipeline.observability import start_telemetry
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.telemetry import names as n

sys.path.insert(0, str(ROOT / "benchmarks"))
from live_streams import FORMATS, StreamAudio, build_stream, noises, utterances
from test_drift import segment_features

pytestmark = pytest.mark.corpus
ADMIN = "admin-secret"


def get(srv, path):
    req = urllib.request.Request(srv.http + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def offline_profile(engine, tmp_path, files) -> str:
    """A baseline of the default pipeline on corpus files: input and output features, and the
    WER of each file against its reference (the concept-drift baseline)."""
    found: list[dict] = []
    groups: list[str] = []
    scored: list[list[int]] = []
    samples: list[Sample] = []
    for path in files:
        before = len(found)
        collector = FeatureCollector(lambda _s, _i, f: found.append(f))
        ref = " ".join(path.with_suffix(".txt").read_text().split())
        result = transcribe_file(path, Config(), engine, observers=[collector], reference=ref, packed=False)
        groups += [str(path)] * (len(found) - before)
        scored.append([result.wer.errors, result.wer.ref_words])
        samples.append(Sample.of(found[before:], result.wer.errors, result.wer.ref_words))
    out = tmp_path / "baseline.json"
    profile = build_profile(
        {"default": found}, 8, 4, groups={"default": groups}, wer={"default": scored}, quality={"default": samples}
    )
    save_profile(profile, out)
    return str(out)


def test_live_streams_drift_on_the_feature_that_changed(engine, tmp_path):
    utts, noise = utterances(), noises()
    streams = [build_stream(k, utts, 40.0, noise, -45.0, mixed_formats=False) for k in range(10)]
    per = [segment_features(s.audio) for s in streams[:8]]  # MIN_RECORDINGS: fewer are not judged
    profile = build_profile(
        {"default": [f for s in per for f in s]},
        8,
        5,
        groups={"default": [str(k) for k, s in enumerate(per) for _ in s]},
    )
    save_profile(profile, tmp_path / "baseline.json")
    cfg = Config().with_overrides(
        {
            "monitoring.baseline": str(tmp_path / "baseline.json"),
            "monitoring.window_segments": 8,
            "monitoring.min_segments": 5,
        }
    )
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrumentation.tracer = provider.get_tracer("test")
    srv = ServerThread(engine, config=cfg, admin_token=ADMIN, telemetry=telemetry)

    def send(s: StreamAudio):
        return asyncio.run(stream_pcm(srv.url, s.fmt.start, paced(s.frames(), 0.02, 0.0)))

    with srv:
        wide = send(streams[8])
        srv.tick()  # a tick judges the window
        calm = json.loads(get(srv, "/admin/drift"))
        phone = send(StreamAudio(streams[9].audio, "", FORMATS[1]))  # 8 kHz telephone audio, twice:
        phone = send(StreamAudio(streams[8].audio, "", FORMATS[1]))  # the window is all telephone then
        srv.tick()
        drifted = json.loads(get(srv, "/admin/drift"))
        page = get(srv, "/metrics")
    assert wide.finals and phone.finals
    features = calm["variants"]["default"]["features"]
    assert features and not any(f["alert"] for f in features.values()), features
    assert calm["variants"]["default"]["baseline"] == {
        "variant": "default",
        "recordings": 8,
        "segments": profile["variants"]["default"]["segments"],
        "judged": True,
        "reason": None,
    }
    after = drifted["variants"]["default"]["features"]
    assert after["bandwidth_hz"]["alert"], after
    assert after["bandwidth_hz"]["score"] > after["bandwidth_hz"]["threshold"]
    assert after["sample_rate"]["alert"] and after["bandwidth_hz"]["n"] == 8
    assert not after["rms_dbfs"]["alert"]
    line = next(
        x for x in page.splitlines() if x.startswith("speechpipe_drift_alert") and 'feature="bandwidth_hz"' in x
    )
    assert 'variant="default"' in line and 'stage="input"' in line and line.endswith(" 1.0")
    spans = [s for s in exporter.get_finished_spans() if s.name == n.SPAN_DRIFT]
    raised = {e.attributes["feature"] for s in spans for e in s.events if e.attributes["drift.raised"]}
    assert "bandwidth_hz" in raised


def test_feedback_wer_is_judged_against_the_baseline_wer(engine, tmp_path):
    """Concept drift: human references scored live, a rolling WER per variant against the WER the
    baseline measured on its own references; before enough feedback the confidence features stand in."""
    from test_deploy_server import JFK, REFERENCE, http, stream

    files = sorted(SPEECH.glob("librispeech-*.flac"))[:10]
    baseline = offline_profile(engine, tmp_path, files)
    base_wer = load_profile(baseline)["variants"]["default"]["wer"]
    # JFK sent at once: its finals meet in calls, where the full window keeps its words right
    # (livehelp.full_window); the right feedback must not alert
    cfg = full_window(
        Config().with_overrides(
            {
                "monitoring.baseline": baseline,
                "monitoring.window_segments": 8,
                "monitoring.min_segments": 2,
                "monitoring.concept_window_words": 40,
                "monitoring.concept_min_words": 20,
            }
        )
    )
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    other = " ".join(files[0].with_suffix(".txt").read_text().split())  # what someone else said

    def judged(srv) -> dict:
        srv.tick()  # a tick judges the windows
        return http(srv, "GET", "/admin/drift")[1]["variants"]["default"]

    with ServerThread(engine, config=cfg, admin_token=ADMIN, telemetry=telemetry) as srv:
        first = stream(srv)
        before = judged(srv)
        assert http(srv, "POST", "/v1/feedback", {"session": first.ready["session"], "text": REFERENCE})[0] == 200
        right = judged(srv)
        for _ in range(2):  # the window fills with references of other speech: the output looks wrong
            s = stream(srv)
            assert http(srv, "POST", "/v1/feedback", {"session": s.ready["session"], "text": other})[0] == 200
        wrong = judged(srv)
        page = get(srv, "/metrics")
        # feedback on one segment recalibrates too, with that segment alone
        body = {"session": s.ready["session"], "segment": s.finals[0]["segment"], "text": "and so my fellow americans"}
        assert http(srv, "POST", "/v1/feedback", body)[0] == 200
        one = judged(srv)
    assert JFK.exists() and before["concept"]["source"] == "confidence" and "wer" not in before["features"]
    c = right["concept"]
    assert c["source"] == "feedback" and not c["alert"] and c["words"] == len(REFERENCE.split())
    assert c["baseline_wer"] == pytest.approx(base_wer["errors"] / base_wer["words"])
    assert c["wer"] < c["threshold"] and right["features"]["wer"]["stage"] == "concept"
    assert wrong["concept"]["alert"] and wrong["features"]["wer"]["alert"]
    assert wrong["concept"]["wer"] > 0.5 > wrong["concept"]["threshold"]
    line = next(x for x in page.splitlines() if x.startswith("speechpipe_drift_alert") and 'feature="wer"' in x)
    assert 'stage="concept"' in line and line.endswith(" 1.0")
    # the WER estimated without references, from the window's own segments
    calibration = load_profile(baseline)["variants"]["default"]["quality"]["calibration"]
    assert before["quality"]["estimated_wer"] is None or before["quality"]["segments"] >= 2
    q = wrong["quality"]
    assert before["quality"]["calibration"] == {k: calibration[k] for k in ("version", "source", "files", "segments")}
    # each trusted feedback on a whole session joined the calibration: fitted again, a new version
    assert right["quality"]["calibration"]["source"] == "baseline + 1 feedback"
    assert q["calibration"]["source"] == "baseline + 3 feedback" and q["calibration"]["files"] == len(files) + 3
    assert len({before["quality"]["calibration"]["version"], q["calibration"]["version"]}) == 2
    assert one["quality"]["calibration"]["source"] == "baseline + 4 feedback"
    assert q["level"] == 0.9
    assert 0 <= q["low"] <= q["estimated_wer"] <= q["high"] and q["segments"] >= 2
    # over time: one point a judgement, the last the estimate now (the dashboard's chart)
    assert len(q["history"]) >= 2 and q["history"][-1][1:] == [round(q[k], 4) for k in ("estimated_wer", "low", "high")]
    shown = {
        name: float(x.rsplit(" ", 1)[1])
        for x in page.splitlines()
        for name in ("speechpipe_quality_estimated_wer", "speechpipe_quality_estimated_wer_low")
        if x.startswith(name + "{") and 'variant="default"' in x
    }
    assert set(shown) == {"speechpipe_quality_estimated_wer", "speechpipe_quality_estimated_wer_low"}
