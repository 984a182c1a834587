"""Telemetry leaving the process: OTLP over HTTP and gRPC to real receivers on 127.0.0.1, the OTLP
JSON lines file, Prometheus, the CLI and config wiring, and what happens with no collector."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, SPEECH
from opentelemetry import trace
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, attributes

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.config import Config, ConfigError, load_config
from speechpipe.pipeline.observability import start_telemetry
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.audio import load_audio
from speechpipe.stages.vad import VadConfig
from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_specs import METRICS_BY_NAME
from speechpipe.telemetry.plan import TelemetryError, resolve_plan
from speechpipe.telemetry.settings import TelemetryConfig
from speechpipe.telemetry.spantree import format_trees, read_spans

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"


def config(**telemetry) -> Config:
    c = Config(vad=VadConfig(backend="webrtc"))  # two segments in JFK, the span counts below
    return replace(c, pipeline=replace(c.pipeline, variant="export-test"), telemetry=replace(c.telemetry, **telemetry))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_received(rx, cfg: Config) -> None:
    """What a collector got: the span tree of one file and speechpipe metrics, with their labels."""
    got = rx.spans()
    assert got, "no spans received"
    resources = {r["service.name"] for r, _ in got}
    assert resources == {"speechpipe-test"}
    spans = [s for _, s in got]
    names = sorted(s.name for s in spans)
    assert names == [n.SPAN_ASR_TRANSCRIBE, n.SPAN_STREAM, n.SPAN_VAD_SEGMENT, n.SPAN_VAD_SEGMENT]
    (stream,) = [s for s in spans if s.name == n.SPAN_STREAM]
    assert stream.parent_span_id == b""
    for s in spans:
        a = attributes(s.attributes)
        assert a[n.VAD_CONFIG_ID] == cfg.vad.config_id
        assert a[n.PIPELINE_VARIANT] == "export-test"
        assert s.trace_id == stream.trace_id
        if s is not stream:
            assert s.parent_span_id == stream.span_id
    (asr,) = [s for s in spans if s.name == n.SPAN_ASR_TRANSCRIBE]
    segs = {s.span_id for s in spans if s.name == n.SPAN_VAD_SEGMENT}
    assert {link.span_id for link in asr.links} == segs
    assert attributes(stream.attributes)[n.FILE] == str(JFK)

    metrics = {m.name: m for _, m in rx.metrics()}
    for name in (n.SEGMENT_DURATION, n.ASR_DURATION, n.OUTPUT_SEGMENTS, n.STREAMS_ACTIVE, n.PROCESS_MEMORY_USAGE):
        assert name in metrics, name
    hist = metrics[n.SEGMENT_DURATION].histogram
    assert sum(p.count for p in hist.data_points) == 2
    for p in hist.data_points:
        a = attributes(p.attributes)
        assert a[n.VAD_CONFIG_ID] == cfg.vad.config_id and a[n.PIPELINE_VARIANT] == "export-test"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_otlp_export_reaches_a_real_receiver(engine, protocol: str) -> None:
    receiver = OtlpHttpReceiver if protocol == "http" else OtlpGrpcReceiver
    with receiver() as rx:
        cfg = config(otlp_endpoint=rx.endpoint, otlp_protocol=protocol, service_name="speechpipe-test")
        tel = start_telemetry(cfg, environ={}, announce=False)
        assert tel.plan.protocol == ("grpc" if protocol == "grpc" else "http/protobuf")
        transcribe_file(JFK, cfg, engine, observers=[tel.stream_observer(file=str(JFK))])
        tel.shutdown()
        assert tel.problems() == []
        check_received(rx, cfg)
        if protocol == "http":
            assert rx.content_types == {"application/x-protobuf"}


def test_cli_writes_trace_file_exports_and_summarises(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    trace_file = tmp_path / "traces" / "run.jsonl"
    with OtlpHttpReceiver() as rx:
        code = main(
            [
                "transcribe",
                str(JFK),
                "-o",
                str(out),
                "-q",
                "--threads",
                "2",
                "--trace-file",
                str(trace_file),
                "--otlp-endpoint",
                rx.endpoint,
                "--otlp-protocol",
                "http",
                "--service-name",
                "speechpipe-cli",
                "--trace-text",
                "--set",
                "vad.hangover_ms=400",
                "--vad-backend",
                "webrtc",
            ]
        )
        assert code == 0
        received = rx.spans()
    err = capsys.readouterr().err
    assert f"traces -> OTLP http/protobuf {rx.endpoint}/v1/traces" in err
    assert f"traces -> {trace_file}" in err
    vad_id = load_config(None, {"vad.hangover_ms": 400, "vad.backend": "webrtc"}).vad.config_id

    # The file: one OTLP/JSON object per line, as Jaeger UI's "JSON File" upload reads it.
    lines = trace_file.read_text().splitlines()
    spans = []
    for line in lines:
        doc = json.loads(line)
        assert set(doc) == {"resourceSpans"}
        for rs in doc["resourceSpans"]:
            res = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            assert res["service.name"] == {"stringValue": "speechpipe-cli"}
            for ss in rs["scopeSpans"]:
                spans += ss["spans"]
    assert len(spans) == len(received) == 4
    for s in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", s["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", s["spanId"])
        assert isinstance(s["kind"], int)
        assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
    by_name = {s["name"]: s for s in spans}
    stream = by_name[n.SPAN_STREAM]
    assert "parentSpanId" not in stream or not stream["parentSpanId"]
    assert by_name[n.SPAN_ASR_TRANSCRIBE]["parentSpanId"] == stream["spanId"]
    flat = read_spans(trace_file)
    assert {s["attributes"][n.VAD_CONFIG_ID] for s in flat} == {vad_id}
    text = {s["attributes"].get(n.ASR_TEXT) for s in flat if s["name"] == n.SPAN_ASR_TRANSCRIBE}
    assert text == {json.loads((out / f"{JFK.name}.json").read_text())["text"]}
    tree = format_trees(flat)
    assert tree.splitlines()[1].strip().startswith("stream")
    assert "asr.transcribe[job" in tree and "links->vad.segment#0,vad.segment#1" in tree

    # summary.json carries the run's final metric figures.
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    seg = m[n.SEGMENT_DURATION]
    assert seg["kind"] == "histogram" and seg["unit"] == "s"
    assert sum(p["count"] for p in seg["points"]) == 2
    assert all(p["attributes"][n.VAD_CONFIG_ID] == vad_id for p in seg["points"])
    assert m[n.OUTPUT_WORDS]["points"][0]["value"] == len(summary_words(out))
    assert m[n.INPUT_STREAMS]["points"][0]["value"] == 1


def summary_words(out: Path) -> list:
    data = json.loads((out / f"{JFK.name}.json").read_text())
    return [w for seg in data["segments"] for w in seg["words"]]


def test_cli_counts_unusable_inputs(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "in" / "empty.wav"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    code = main(["transcribe", str(empty.parent), "-o", str(tmp_path / "out"), "-q"])
    assert code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (p,) = summary["metrics"][n.INPUT_ERRORS]["points"]
    assert p["attributes"][n.INPUT_REASON] == "empty" and p["value"] == 1
    assert "telemetry:" not in capsys.readouterr().err  # nothing exported, nothing said


def test_missing_collector_costs_one_warning_and_no_wait(caplog) -> None:
    """An endpoint nobody listens on: the run neither hangs nor floods the log."""
    port = free_port()
    cfg = config(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_protocol="grpc")
    caplog.set_level(logging.DEBUG)
    tel = start_telemetry(cfg, environ={}, announce=False)
    audio, _ = load_audio(JFK)
    for _ in range(3):  # spans and metrics to export, no ASR needed
        session = StreamSession(cfg.vad, observers=[tel.stream_observer()])
        session.feed(audio)
        session.abandon()
    t0 = time.monotonic()
    tel.shutdown(timeout_s=5.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0  # the bounded shutdown, not the exporter's 10 s of retries
    problems = tel.problems()
    assert len(problems) == 2  # one line for spans, one for metrics
    assert all(f"127.0.0.1:{port}" in line and "not delivered" in line for line in problems)
    assert "spans not delivered" in problems[0] and "metric export" in problems[1]
    noisy = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter") and r.levelno >= logging.WARNING]
    assert noisy == []
    ours = [r for r in caplog.records if r.name == "speechpipe.telemetry" and r.levelno >= logging.WARNING]
    assert len(ours) <= 2


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_collector_without_metrics_like_jaeger(engine, protocol: str, caplog) -> None:
    """Jaeger takes OTLP traces but not metrics: spans arrive, metrics are refused once, quietly."""
    receiver = OtlpHttpReceiver if protocol == "http" else OtlpGrpcReceiver
    caplog.set_level(logging.INFO)
    with receiver(metrics=False) as rx:
        cfg = config(
            otlp_endpoint=rx.endpoint, otlp_protocol=protocol, service_name="speechpipe-test", metrics_interval_s=0.2
        )
        tel = start_telemetry(cfg, environ={}, announce=False)
        transcribe_file(JFK, cfg, engine, observers=[tel.stream_observer(file=str(JFK))])
        deadline = time.monotonic() + 10
        while not tel.health["metrics"].rejected:  # a periodic metric export was tried and refused
            assert time.monotonic() < deadline, "no metric export was tried"
            time.sleep(0.02)
        tel.shutdown()
        assert len(rx.spans()) == 4 and rx.metric_requests == []
    assert tel.problems() == []
    assert tel.health["metrics"].rejected and tel.health["metrics"].failures == 1
    ours = [r.getMessage() for r in caplog.records if r.name == "speechpipe.telemetry"]
    assert len(ours) == 1 and "does not accept metrics" in ours[0]
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]


def test_no_settings_exports_nothing() -> None:
    plan = resolve_plan(TelemetryConfig(), environ={})
    assert not plan.exports_traces and plan.otlp_metrics is None and plan.prometheus is None
    assert plan.describe() == [] and plan.service_name == "speechpipe"
    tel = start_telemetry(Config(), environ={}, announce=False)
    assert isinstance(tel.tracer_provider, trace.NoOpTracerProvider)
    assert tel.health == {}
    session = StreamSession(Config().vad, observers=[tel.stream_observer()])
    session.feed(load_audio(JFK)[0][:16000])
    session.abandon()
    assert tel.metrics_snapshot()[n.INPUT_STREAMS]["points"][0]["value"] == 1
    tel.shutdown()
    assert tel.problems() == []


def test_standard_environment_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SERVICE_NAME": "asr-prod"}
    plan = resolve_plan(TelemetryConfig(), env)
    assert (plan.protocol, plan.otlp_traces, plan.otlp_metrics) == (
        "grpc",
        "http://collector:4317",
        "http://collector:4317",
    )
    assert plan.service_name == "asr-prod"

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_METRIC_EXPORT_INTERVAL": "2500"}
    plan = resolve_plan(TelemetryConfig(), env)
    assert plan.protocol == "http/protobuf"
    assert plan.otlp_traces == "http://collector:4318/v1/traces"
    assert plan.otlp_metrics == "http://collector:4318/v1/metrics"
    assert plan.metrics_interval_s == 2.5

    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://x.example/custom/path",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    plan = resolve_plan(TelemetryConfig(), env)
    assert plan.otlp_traces == "https://x.example/custom/path" and plan.otlp_metrics is None

    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "otlp,prometheus",
    }
    plan = resolve_plan(TelemetryConfig(), env)
    assert plan.otlp_traces is None and plan.otlp_metrics == "http://c:4318/v1/metrics"
    assert plan.prometheus == ("127.0.0.1", 9464)

    plan = resolve_plan(TelemetryConfig(), {"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert plan.otlp_traces == "http://localhost:4318/v1/traces" and plan.console_traces

    # The config (and so the flags) beats the environment.
    cfg = TelemetryConfig(otlp_endpoint="localhost:4317", service_name="mine", traces=False)
    plan = resolve_plan(cfg, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318", "OTEL_SERVICE_NAME": "env"})
    assert plan.otlp_traces is None and plan.otlp_metrics == "http://localhost:4317" and plan.protocol == "grpc"
    assert plan.service_name == "mine"

    assert not resolve_plan(TelemetryConfig(otlp_endpoint="http://c:4317"), {"OTEL_SDK_DISABLED": "true"}).otlp_traces
    with pytest.raises(TelemetryError, match="http/json"):
        resolve_plan(
            TelemetryConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


def test_prometheus_endpoint_serves_the_metrics() -> None:
    cfg = config(prometheus_port=0)
    with start_telemetry(cfg, environ={}, announce=False) as tel:
        assert tel.prometheus_url and tel.prometheus_url.startswith("http://127.0.0.1:")
        session = StreamSession(cfg.vad, observers=[tel.stream_observer()])
        session.feed(load_audio(JFK)[0])
        session.abandon()
        page = urllib.request.urlopen(tel.prometheus_url, timeout=5).read().decode()
        assert "speechpipe_input_streams" in page and "speechpipe_input_streams" in tel.prometheus_text().decode()
    line = next(ln for ln in page.splitlines() if ln.startswith("speechpipe_vad_segment_duration_seconds_count"))
    assert f'vad_config_id="{cfg.vad.config_id}"' in line and 'pipeline_variant="export-test"' in line
    assert "process_memory_usage_bytes" in page


def test_telemetry_table_in_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[telemetry]\notlp_endpoint = "http://localhost:4317"\notlp_protocol = "http"\ntrace_text = true\n'
        "prometheus_port = 9464\n"
    )
    cfg = load_config(path)
    assert cfg.telemetry.otlp_protocol == "http/protobuf" and cfg.telemetry.trace_text
    assert cfg.telemetry.prometheus_port == 9464
    path.write_text('[telemetry]\notlp_endpiont = "x"\n')
    with pytest.raises(ConfigError, match="otlp_endpiont"):
        load_config(path)
    path.write_text('[telemetry]\ntrace_layout = "per-minute"\n')
    with pytest.raises(ConfigError, match="trace_layout"):
        load_config(path)


def test_docs_table_lists_every_metric() -> None:
    """docs/telemetry.md's metrics table is the contract dashboards rely on: it must match the code."""
    doc = (ROOT / "docs" / "telemetry.md").read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\|\s*`([a-z_.]+)`\s*\|\s*([a-z_]+)\s*\|\s*`([^`]*)`\s*\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    assert {name: (spec.kind, spec.unit) for name, spec in METRICS_BY_NAME.items()} == rows
