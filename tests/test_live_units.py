"""The pieces under the live server, without sockets: protocol parsing, speculative segments, the
ASR scheduler's order of work, and the server's telemetry on a real SDK."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import SPEECH
from livehelp import ServerThread
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.client import stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.pipeline.observability import instrumentation_for
from speechpipe.pipeline.protocol import ProtocolError, Start, Stop
from speechpipe.pipeline.scheduler import AsrScheduler
from speechpipe.pipeline.session import StreamSession, same_audio
from speechpipe.stages.asr import AudioPiece
from speechpipe.stages.audio import load_audio
from speechpipe.stages.vad import END_SILENCE, SpeechSegment
from speechpipe.telemetry import names as n
from speechpipe.telemetry.snapshot import metrics_to_dict

JFK = SPEECH / "jfk_inaugural_ask-not.flac"


# -- protocol -------------------------------------------------------------------------------------


def test_start_defaults_and_fields():
    assert P.parse_client_text('{"type": "start"}') == Start(16000, "pcm_s16le", 1, "en", True)
    s = P.parse_client_text('{"type":"start","sample_rate":48000,"encoding":"pcm_f32le","channels":2,"partials":false}')
    assert s == Start(48000, "pcm_f32le", 2, "en", False) and s.bytes_per_frame == 8
    assert isinstance(P.parse_client_text('{"type": "stop"}'), Stop)


@pytest.mark.parametrize(
    "text, code",
    [
        ("", "bad_json"),
        ("{", "bad_json"),
        ('"start"', "bad_message"),
        ('{"type": "Start"}', "unknown_type"),
        ('{"type": "start", "sample_rate": true}', "unsupported_rate"),
        ('{"type": "start", "sample_rate": 200000}', "unsupported_rate"),
        ('{"type": "start", "channels": 1.5}', "unsupported_channels"),
        ('{"type": "start", "encoding": "PCM_S16LE"}', "unsupported_encoding"),
        ('{"type": "start", "partials": "yes"}', "bad_message"),
    ],
)
def test_bad_client_messages(text, code):
    with pytest.raises(ProtocolError) as info:
        P.parse_client_text(text)
    assert info.value.code == code and info.value.message
    assert info.value.close_code == P.ERROR_CLOSE_CODES[code]


def test_audio_must_be_whole_frames():
    P.check_audio(b"\x00" * 8, Start(channels=2))
    with pytest.raises(ProtocolError, match="whole number"):
        P.check_audio(b"\x00" * 6, Start(channels=2, encoding="pcm_f32le"))


# -- speculative segments --------------------------------------------------------------------------


def test_speculative_job_holds_exactly_the_audio_of_the_segment_that_closes():
    """During the hangover the session predicts the segment's audio; when the pause lasts, the
    prediction is sample for sample the closed segment (so its transcript can be the final)."""
    audio, _ = load_audio(JFK)
    session = StreamSession(pack_s=0)
    predictions: dict[tuple, np.ndarray] = {}
    segments: list[SpeechSegment] = []
    for i in range(0, audio.size, 320):
        segments += [e for e in session.feed(audio[i : i + 320]) if isinstance(e, SpeechSegment)]
        job = session.speculative_job()
        if job is not None:
            p = job.pieces[0]
            predictions[(p.index, p.start_sample, p.start_sample + p.audio.size)] = p.audio
    segments += [e for e in session.finish() if isinstance(e, SpeechSegment)]
    closed_by_silence = [s for s in segments if s.end_reason == END_SILENCE]
    assert closed_by_silence
    for seg in closed_by_silence:
        predicted = predictions[(seg.index, seg.start_sample, seg.end_sample)]
        assert np.array_equal(predicted, seg.audio)
        final = AsrJob("s", JobKind.FINAL, [AudioPiece(seg.index, seg.start_sample, seg.audio)], segments=[seg])
        spec = AsrJob("s", JobKind.SPECULATIVE, [AudioPiece(seg.index, seg.start_sample, predicted)])
        assert same_audio(spec, final)
    # Predictions made before speech resumed do not match any segment: they are never reused.
    assert len(predictions) >= len(closed_by_silence)


# -- scheduler ------------------------------------------------------------------------------------


def job(stream: str, kind: JobKind, audio: np.ndarray, index: int = 0) -> AsrJob:
    return AsrJob(stream, kind, [AudioPiece(index, 0, audio)])


def test_scheduler_order_fairness_and_staleness(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")  # 5.9 s
    piece = audio[: 4 * 16000]
    # Window of 10 s, 1 s between pieces: at most two 4 s pieces per call.
    small = type(engine)(replace(engine.config, window_s=10.0), model=engine.model)
    sched = AsrScheduler(
        small, pack_streams=True, stream_gap_s=1.0, partial_max_age_s=60.0, partial_window_s=10.0, tail_filler_s=0
    )
    left = []
    futures = {
        "A1": sched.submit_final(job("A", JobKind.FINAL, piece, 1), on_leave=lambda: left.append("A1")),
        "A2": sched.submit_final(job("A", JobKind.FINAL, piece, 2)),
        "A3": sched.submit_final(job("A", JobKind.FINAL, piece, 3)),
        "B1": sched.submit_final(job("B", JobKind.FINAL, piece, 1)),
        "Cp": sched.offer_partial(job("C", JobKind.PARTIAL, piece)),
        "Dp": sched.offer_partial(job("D", JobKind.PARTIAL, piece)),
        "As": sched.offer_partial(job("A", JobKind.SPECULATIVE, piece, 4)),
    }
    replaced = sched.offer_partial(job("D", JobKind.PARTIAL, piece))  # replaces D's queued partial
    assert futures["Dp"].result(0) is None  # dropped, not run
    assert sched.depth() == (4, 3)
    sched.start()
    results = {k: f.result(60) for k, f in futures.items() if k != "Dp"}
    replaced_result = replaced.result(60)
    sched.stop(10)
    started = {k: r[1].started_ns for k, r in results.items()}
    calls = sorted(set(started.values()))
    call_of = {k: calls.index(v) for k, v in started.items()}
    # Two streams with finals waiting: they share calls, one per stream per round.
    assert call_of["A1"] == call_of["B1"] == 0
    assert call_of["A2"] == call_of["A3"] == 1
    # Then the speculative job, then partials (never in a call with a final).
    assert call_of["As"] == 2
    assert call_of["Cp"] == 3 and replaced_result[1].started_ns == results["Cp"][1].started_ns
    assert left == ["A1"]
    assert all("Quilter" in r[0][0].text for r in results.values())
    st = sched.stats()
    assert (st.finals, st.speculative, st.partials, st.partials_dropped) == (4, 1, 2, 1)


def test_scheduler_keeps_streams_apart_by_default(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    sched = AsrScheduler(engine, partial_max_age_s=60.0)
    futures = [sched.submit_final(job(s, JobKind.FINAL, audio[: 2 * 16000], i)) for i in range(2) for s in "AB"]
    futures.append(sched.offer_partial(job("C", JobKind.PARTIAL, audio)))
    futures.append(sched.offer_partial(job("D", JobKind.PARTIAL, audio)))
    sched.start()
    runs = [f.result(60) for f in futures]
    sched.stop(10)
    calls: dict[int, set] = {}
    for (stream, _i), r in zip([(s, i) for i in range(2) for s in "AB"] + [("C", 0), ("D", 0)], runs):
        calls.setdefault(r[1].started_ns, set()).add(stream)
    assert all(len(streams) == 1 for streams in calls.values()), calls
    assert sched.stats().mixed_calls == 0 and sched.stats().max_batch == 2  # A's two finals, B's two


def test_scheduler_drops_stale_partials_never_finals(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    sched = AsrScheduler(engine, partial_max_age_s=0.0)
    stale = sched.offer_partial(job("A", JobKind.PARTIAL, audio))
    final = sched.submit_final(job("A", JobKind.FINAL, audio))
    time.sleep(0.01)
    sched.start()
    assert final.result(60)[0][0].text
    assert stale.result(60) is None
    sched.stop(10)
    assert sched.stats().partials_dropped == 1


# -- telemetry of the live server ------------------------------------------------------------------


def test_live_stream_telemetry_spans_and_metrics(engine):
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    inst = instrumentation_for(Config(), tracer_provider, meter_provider, mode="live", process_metrics=False)
    with ServerThread(engine) as srv:
        srv.server.stream_observers = lambda sid, attrs: [inst.stream_observer(mode="live")]
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
        return sum(p.get("value", p.get("count", 0)) for p in metrics[name]["points"])

    assert total(n.STREAMS_ACTIVE) == 0  # opened and closed
    assert total(n.ASR_QUEUE_DEPTH) == 0  # every queued job left the queue
    assert total(n.FINAL_LATENCY) == len(result.finals)
    tracer_provider.shutdown()
    meter_provider.shutdown()
