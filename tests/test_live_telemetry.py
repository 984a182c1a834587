"""The live server's telemetry on a real SDK: a corpus file streamed to a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from conftest import SPEECH
from livehelp import ObserversPart, ServerThread
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from speechpipe.pipeline.clients.client import stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.observability import instrumentation_for
from speechpipe.telemetry import names as n
from speechpipe.telemetry.snapshot import metrics_to_dict

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"


def test_live_stream_telemetry_spans_and_metrics(engine):
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    inst = instrumentation_for(Config(), tracer_provider, meter_provider, mode="live", process_metrics=False)
    with ServerThread(engine, parts=[ObserversPart(lambda _stream: [inst.stream_observer(mode="live")])]) as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
    assert result.finals and not result.errors
    spans = exporter.get_finished_spans()
    streams = [s for s in spans if s.name == n.SPAN_STREAM]
    assert len(streams) == 1 and streams[0].attributes[n.STREAM_ID] == result.ready["session"]
    segments = [s for s in spans if s.name == n.SPAN_VAD_SEGMENT]
    asr = [s for s in spans if s.name == n.SPAN_ASR_TRANSCRIBE]
    assert len(segments) == len(result.finals)
    assert {s.attributes[n.VAD_CONFIG_ID] for s in segments} == {result.ready["vad_config_id"]}
    assert len(asr) >= len(result.finals)
    metrics = metrics_to_dict(reader.get_metrics_data())

    def total(name):
        return sum(p.get("value", p.get("count", 0)) for p in metrics.get(name, {"points": []})["points"])

    assert total(n.STREAMS_ACTIVE) == 0  # opened and closed
    assert total(n.ASR_QUEUE_DEPTH) == 0  # every queued job left the queue
    assert total(n.FINAL_LATENCY) == len(result.finals)
    # what the partials cost their reader (issue 27): the denominator is the finals the client got
    assert total(n.PARTIAL_FINAL_CHARS) == sum(len(f["text"]) for f in result.finals)
    assert total(n.PARTIAL_FIRST_LATENCY) == len({p["segment"] for p in result.partials})
    erased = {p["attributes"][n.CAPTION_TEXT]: p["value"] for p in metrics[n.PARTIAL_ERASED]["points"]}
    assert erased["stable"] == 0 and erased["shown"] >= 0  # the finals kept what was committed
    tracer_provider.shutdown()
    meter_provider.shutdown()
