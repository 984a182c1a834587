"""Telemetry on real audio through the real SDK: span trees, attributes, timing, metric points."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, SPEECH
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.observability import instrumentation_for
from speechpipe.pipeline.offline.driver import run_jobs
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.audio import AudioError, iter_file_blocks, load_audio, probe
from speechpipe.stages.vad import END_MAX_LENGTH, END_OF_STREAM, END_SILENCE, SpeechSegment, VadConfig, VadSegmenter
from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_specs import BASE_METRIC_ATTRIBUTES, METRICS_BY_NAME
from speechpipe.telemetry.snapshot import metrics_to_dict

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

LONG = CORPUS / "long" / "ted_bill-gates_next-epidemic_first-62s.mp3"  # 10 segments, 1 discarded, 2 Whisper calls
JFK = SPEECH / "jfk_inaugural_ask-not.flac"  # 11 s, two segments packed into one call
VARIANT = "telemetry-test"


class Traced:
    """A real SDK pipeline: spans into memory, metrics read on demand."""

    def __init__(self, config: Config, **kwargs) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.config = config
        self.inst = instrumentation_for(config, self.tracer_provider, self.meter_provider, **kwargs)

    def spans(self):
        return list(self.exporter.get_finished_spans())

    def by_name(self, name: str):
        return [s for s in self.spans() if s.name == name]

    def metrics(self) -> dict:
        return metrics_to_dict(self.reader.get_metrics_data())

    def points(self, name: str) -> list[dict]:
        return self.metrics().get(name, {"points": []})["points"]

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def config_with(vad: VadConfig | None = None, **telemetry) -> Config:
    # webrtcvad: the segment counts these tests expect are those it finds in these files.
    c = Config(vad=VadConfig(backend="webrtc"))
    c = replace(c, pipeline=replace(c.pipeline, variant=VARIANT))
    if vad is not None:
        c = replace(c, vad=vad)
    if telemetry:
        c = replace(c, telemetry=replace(c.telemetry, **telemetry))
    return c


def expected_segments(path: Path, vad: VadConfig) -> list[SpeechSegment]:
    audio, _ = load_audio(path)
    seg = VadSegmenter(vad)
    events = seg.feed(audio) + seg.flush()
    return [e for e in events if isinstance(e, SpeechSegment)]


@pytest.fixture(scope="module")
def long_run(engine):
    """The 62 s corpus file transcribed once with telemetry on."""
    t = Traced(config_with())
    result = transcribe_file(LONG, t.config, engine, observers=[t.inst.stream_observer(file=str(LONG))])
    yield t, result
    t.shutdown()


def link_targets(span) -> list[int]:
    return [link.context.span_id for link in span.links]


# -- span tree ----------------------------------------------------------------------------------


def test_span_tree_shape(long_run) -> None:
    t, result = long_run
    spans = t.spans()
    (stream,) = t.by_name(n.SPAN_STREAM)
    segs = t.by_name(n.SPAN_VAD_SEGMENT)
    asrs = t.by_name(n.SPAN_ASR_TRANSCRIBE)
    assert stream.parent is None
    assert {s.name for s in spans} == {n.SPAN_STREAM, n.SPAN_VAD_SEGMENT, n.SPAN_ASR_TRANSCRIBE}
    for s in segs + asrs:
        assert s.context.trace_id == stream.context.trace_id
        assert s.parent.span_id == stream.context.span_id
    expected = expected_segments(LONG, t.config.vad)
    assert len(segs) == len(expected) == result.extra["vad_segments"]
    assert sorted(s.attributes[n.SEGMENT_INDEX] for s in segs) == [e.index for e in expected]
    # The file holds more speech than one window: several jobs, segments packed into them.
    assert len(asrs) >= 2
    assert max(a.attributes[n.ASR_SEGMENTS] for a in asrs) > 1
    seg_by_id = {s.context.span_id: s for s in segs}
    asr_by_id = {a.context.span_id: a for a in asrs}
    covered: list[int] = []
    for a in asrs:
        targets = [seg_by_id[i] for i in link_targets(a)]
        indices = [s.attributes[n.SEGMENT_INDEX] for s in targets]
        assert indices == list(a.attributes[n.ASR_SEGMENT_INDICES])
        assert a.attributes[n.ASR_SEGMENTS] == len(indices)
        covered += indices
    assert sorted(covered) == [e.index for e in expected]  # each segment transcribed exactly once
    for s in segs:  # ... and findable from the segment: it links back to its asr.transcribe
        (back,) = link_targets(s)
        assert s.attributes[n.SEGMENT_INDEX] in asr_by_id[back].attributes[n.ASR_SEGMENT_INDICES]


def test_required_attributes(long_run) -> None:
    t, result = long_run
    (stream,) = t.by_name(n.SPAN_STREAM)
    info = probe(LONG)
    config_id = t.config.vad.config_id
    a = stream.attributes
    assert a[n.STREAM_ID] == str(LONG)
    assert a[n.FILE] == str(LONG)
    assert a[n.AUDIO_SAMPLE_RATE] == info.sample_rate
    assert a[n.PIPELINE_VARIANT] == VARIANT
    assert a[n.VAD_CONFIG_ID] == config_id
    assert a[n.ASR_MODEL] == "tiny.en"
    assert a[n.STREAM_DISCARDED] == 1
    assert a[n.STREAM_ABANDONED] is False
    assert a[n.STREAM_AUDIO_S] == pytest.approx(info.duration_s, abs=1e-3)
    assert stream.status.status_code is not StatusCode.ERROR

    expected = {e.index: e for e in expected_segments(LONG, t.config.vad)}
    words_of = {seg.index: len(seg.words) for seg in result.segments}  # segments that have text
    for s in t.by_name(n.SPAN_VAD_SEGMENT):
        a = s.attributes
        e = expected[a[n.SEGMENT_INDEX]]
        assert a[n.SEGMENT_START_S] == pytest.approx(e.start_s, abs=1e-3)
        assert a[n.SEGMENT_END_S] == pytest.approx(e.end_s, abs=1e-3)
        assert a[n.SEGMENT_DURATION_S] == pytest.approx(e.duration_s, abs=1e-3)
        assert a[n.VAD_END_REASON] == e.end_reason in (END_SILENCE, END_MAX_LENGTH, END_OF_STREAM)
        assert a[n.VAD_SPEECH_RATIO] == pytest.approx(e.speech_ratio, abs=1e-4)
        assert a[n.VAD_CONFIG_ID] == config_id
        assert a[n.PIPELINE_VARIANT] == VARIANT
        assert -120.0 <= a[n.AUDIO_RMS_DBFS] <= a[n.AUDIO_PEAK_DBFS] <= 0.0
        assert a[n.ASR_WORDS] == words_of.get(a[n.SEGMENT_INDEX], 0)
        assert a[n.ASR_EMPTY] is (a[n.SEGMENT_INDEX] not in words_of)
        assert n.ASR_TEXT not in a  # transcript text only with --trace-text

    words_out = sum(len(seg.words) for seg in result.segments)
    asrs = t.by_name(n.SPAN_ASR_TRANSCRIBE)
    assert sum(s.attributes[n.ASR_WORDS] for s in asrs) == words_out
    for s in asrs:
        a = s.attributes
        for key in (
            n.ASR_DEVICE,
            n.ASR_COMPUTE_TYPE,
            n.ASR_QUEUE_WAIT_S,
            n.ASR_AVG_LOGPROB,
            n.ASR_NO_SPEECH_PROB,
            n.ASR_DROPPED,
        ):
            assert key in a, key
        assert a[n.ASR_MODEL] == "tiny.en"
        assert a[n.ASR_DEVICE] in ("cpu", "cuda")
        assert a[n.ASR_KIND] == "final"
        assert a[n.VAD_CONFIG_ID] == config_id
        speech = sum(expected[i].duration_s for i in a[n.ASR_SEGMENT_INDICES])
        assert a[n.AUDIO_DURATION_S] == pytest.approx(speech, abs=2e-3)
        wall = (s.end_time - s.start_time) / 1e9
        assert 0.0 < a[n.ASR_COMPUTE_S] <= wall + 1e-3  # its share of the (possibly batched) call
        assert a[n.ASR_RTF] == pytest.approx(a[n.ASR_COMPUTE_S] / speech, rel=0.01, abs=1e-3)
        assert a[n.ASR_WINDOWS] >= 1 and 0 <= a[n.ASR_RETRIES] < a[n.ASR_WINDOWS]
        assert speech <= a[n.ASR_WINDOW_S] + 1e-3
        assert -2.0 < a[n.ASR_AVG_LOGPROB] <= 0.0 and 0.0 <= a[n.ASR_NO_SPEECH_PROB] <= 1.0
        assert n.ASR_TEXT not in a


def test_timing_consistency(long_run) -> None:
    t, _ = long_run
    (stream,) = t.by_name(n.SPAN_STREAM)
    duration = probe(LONG).duration_s
    asr_by_id = {a.context.span_id: a for a in t.by_name(n.SPAN_ASR_TRANSCRIBE)}
    for s in t.by_name(n.SPAN_VAD_SEGMENT):
        (asr_id,) = link_targets(s)
        asr = asr_by_id[asr_id]
        assert stream.start_time <= s.start_time <= s.end_time <= asr.end_time <= stream.end_time
        assert s.end_time <= asr.start_time  # offline, the call starts once its segments are closed
        assert 0.0 <= s.attributes[n.SEGMENT_START_S] < s.attributes[n.SEGMENT_END_S] <= duration + 1e-3
    jobs = sorted(asr_by_id.values(), key=lambda a: a.start_time)
    calls = sorted({(a.start_time, a.end_time) for a in jobs})  # batched jobs share one engine call
    for (_, end), (start, _) in itertools.pairwise(calls):
        assert end <= start  # inline engine calls never overlap
    for a in jobs:
        assert stream.start_time <= a.start_time < a.end_time <= stream.end_time
    for start, end in calls:
        shares = sum(a.attributes[n.ASR_COMPUTE_S] for a in jobs if (a.start_time, a.end_time) == (start, end))
        assert 0.5 * (end - start) / 1e9 < shares <= (end - start) / 1e9 + 1e-3  # shares of the call


# -- metrics ------------------------------------------------------------------------------------


def test_metric_points(long_run) -> None:
    t, result = long_run
    metrics = t.metrics()
    config_id = t.config.vad.config_id
    for name, m in metrics.items():
        spec = METRICS_BY_NAME[name]
        assert m["unit"] == spec.unit, name
        for p in m["points"]:
            assert set(p["attributes"]) == set(BASE_METRIC_ATTRIBUTES) | set(spec.attributes), name
            assert p["attributes"][n.PIPELINE_VARIANT] == VARIANT, name
            assert p["attributes"][n.VAD_CONFIG_ID] == config_id, name
            assert p["attributes"][n.PIPELINE_MODE] == "offline", name
    expected = expected_segments(LONG, t.config.vad)

    def only(name: str, **attrs) -> dict:
        pts = [p for p in metrics[name]["points"] if all(p["attributes"].get(k) == v for k, v in attrs.items())]
        assert len(pts) == 1, (name, attrs, metrics[name]["points"])
        return pts[0]

    seg_d = metrics[n.SEGMENT_DURATION]["points"]
    assert sum(p["count"] for p in seg_d) == len(expected)
    assert sum(p["sum"] for p in seg_d) == pytest.approx(sum(e.duration_s for e in expected), abs=1e-3)
    assert only(n.VAD_DISCARDED)["value"] == 1
    assert only(n.INPUT_STREAMS)["attributes"][n.AUDIO_SAMPLE_RATE] == probe(LONG).sample_rate
    assert only(n.STREAMS_ACTIVE)["value"] == 0
    assert only(n.VAD_AUDIO)["value"] == pytest.approx(probe(LONG).duration_s, abs=1e-3)
    assert only(n.VAD_DURATION)["count"] >= 12  # one point per 5 s block fed
    finals = metrics[n.OUTPUT_SEGMENTS]["points"]
    assert sum(p["value"] for p in finals) == len(expected)
    empty = sum(p["value"] for p in finals if p["attributes"][n.ASR_EMPTY])
    assert empty == len(expected) - len(result.segments)
    assert only(n.OUTPUT_WORDS)["value"] == sum(len(s.words) for s in result.segments)
    assert only(n.OUTPUT_WORDS_PER_SECOND)["count"] == len(result.segments)
    assert 1.0 < only(n.OUTPUT_WORDS_PER_SECOND)["mean"] < 5.0  # speech rate of a TED talk
    assert only(n.OUTPUT_AVG_LOGPROB)["count"] == len(expected)
    assert only(n.OUTPUT_NO_SPEECH_PROB)["count"] == len(expected)
    assert only(n.FINAL_LATENCY)["count"] == len(expected)
    calls = t.by_name(n.SPAN_ASR_TRANSCRIBE)
    assert only(n.ASR_DURATION, **{n.ASR_KIND: "final"})["count"] == len(calls)
    assert only(n.ASR_RTF_METRIC)["count"] == len(calls)
    assert only(n.ASR_QUEUE_WAIT)["count"] == len(calls)
    assert only(n.INPUT_RMS, **{n.AUDIO_SCOPE: "segment"})["count"] == len(expected)
    stream_rms = only(n.INPUT_RMS, **{n.AUDIO_SCOPE: "stream"})
    assert stream_rms["count"] == 1 and 10.0 < stream_rms["sum"] < 60.0  # a normal recording level
    assert only(n.INPUT_CLIPPED, **{n.AUDIO_SCOPE: "stream"})["count"] == 1
    ratio = only(n.STREAM_SPEECH_RATIO)
    assert ratio["count"] == 1 and 0.5 < ratio["sum"] < 1.0
    assert only(n.PROCESS_MEMORY_USAGE)["value"] > 50e6
    cpu = metrics[n.PROCESS_CPU_TIME]["points"]
    assert {p["attributes"][n.CPU_MODE] for p in cpu} == {"user", "system"}
    assert sum(p["value"] for p in cpu) > 0
    assert n.INPUT_EMPTY not in metrics  # the stream had speech


def test_trace_text_is_opt_in(engine) -> None:
    t = Traced(config_with(trace_text=True))
    result = transcribe_file(JFK, t.config, engine, observers=[t.inst.stream_observer(file=str(JFK))])
    segs = sorted(t.by_name(n.SPAN_VAD_SEGMENT), key=lambda s: s.attributes[n.SEGMENT_INDEX])
    assert " ".join(s.attributes[n.ASR_TEXT] for s in segs) == result.text
    (asr,) = t.by_name(n.SPAN_ASR_TRANSCRIBE)
    assert asr.attributes[n.ASR_TEXT] == result.text
    t.shutdown()


def test_vad_config_change_moves_every_id(engine) -> None:
    """A different VAD setting is visible on every span and every metric point of its run."""
    default_id = VadConfig().config_id
    vad = VadConfig(hangover_ms=300, pre_roll_ms=200)
    assert vad.config_id != default_id
    t = Traced(config_with(vad=vad))
    transcribe_file(JFK, t.config, engine, observers=[t.inst.stream_observer(file=str(JFK))])
    spans = t.spans()
    assert {s.name for s in spans} == {n.SPAN_STREAM, n.SPAN_VAD_SEGMENT, n.SPAN_ASR_TRANSCRIBE}
    assert {s.attributes[n.VAD_CONFIG_ID] for s in spans} == {vad.config_id}
    metrics = t.metrics()
    ids = {p["attributes"][n.VAD_CONFIG_ID] for m in metrics.values() for p in m["points"]}
    assert ids == {vad.config_id}
    assert len(metrics) > 15
    t.shutdown()


# -- live layout, scheduler hooks, abandoned streams ---------------------------------------------


def test_live_streams_get_a_trace_per_utterance(engine) -> None:
    t = Traced(config_with(), mode="live")
    observer = t.inst.stream_observer()
    audio, _ = load_audio(JFK)
    session = StreamSession(t.config.vad, pack_s=0.0, stream_id="live-1", observers=[observer])
    partials = 0
    chunk = 320  # 20 ms, as a microphone client sends
    for k in range(0, audio.size, chunk):
        session.feed(audio[k : k + chunk])
        if k % 48000 == 0 and partials < 2 and (job := session.partial_job()) is not None:
            session.complete(job, *run_jobs(engine, [job])[0])
            partials += 1
        for job in session.take_jobs():
            session.job_queued(job)
            session.job_dequeued(job)
            [(transcripts, run)] = run_jobs(engine, [job])
            session.complete(job, transcripts, replace(run, queue_wait_s=0.01))
    session.finish()
    for job in session.take_jobs():
        session.complete(job, *run_jobs(engine, [job])[0])
    session.close()

    (stream,) = t.by_name(n.SPAN_STREAM)
    utterances = t.by_name(n.SPAN_UTTERANCE)
    segs = t.by_name(n.SPAN_VAD_SEGMENT)
    asrs = t.by_name(n.SPAN_ASR_TRANSCRIBE)
    assert partials == 2
    assert stream.parent is None and stream.attributes[n.STREAM_TRACE_LAYOUT] == "utterance"
    assert len(utterances) == len(segs) == 2
    trace_ids = {u.context.trace_id for u in utterances}
    assert len(trace_ids) == 2 and stream.context.trace_id not in trace_ids
    by_id = {u.context.span_id: u for u in utterances}
    for u in utterances:
        assert u.parent is None
        assert [link.context.span_id for link in u.links] == [stream.context.span_id]
        assert stream.start_time <= u.start_time < u.end_time <= stream.end_time
    for s in segs + asrs:
        parent = by_id[s.parent.span_id]
        assert s.context.trace_id == parent.context.trace_id
        assert parent.start_time <= s.start_time
    kinds = [a.attributes[n.ASR_KIND] for a in asrs]
    assert kinds.count("partial") == 2 and kinds.count("final") == 2
    for a in asrs:
        if a.attributes[n.ASR_KIND] == "final":
            (seg,) = [s for s in segs if s.context.span_id in link_targets(a)]
            assert seg.parent.span_id == a.parent.span_id  # same utterance
            assert seg.end_time <= a.end_time
    depth = t.points(n.ASR_QUEUE_DEPTH)
    assert depth and all(p["value"] == 0 for p in depth)
    assert {p["attributes"][n.PIPELINE_MODE] for p in t.points(n.FINAL_LATENCY)} == {"live"}
    t.shutdown()


def test_abandoned_stream_ends_every_span() -> None:
    t = Traced(config_with(), mode="live")
    audio, _ = load_audio(JFK)
    session = StreamSession(t.config.vad, pack_s=0.0, observers=[t.inst.stream_observer()])
    session.feed(audio[: 16000 * 9])  # the first segment closes, the second is open
    assert session.take_jobs()  # taken, never completed: the client went away
    session.abandon(error=ConnectionResetError("client went away"))
    (stream,) = t.by_name(n.SPAN_STREAM)
    assert stream.attributes[n.STREAM_ABANDONED] is True
    assert stream.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in stream.events)
    (seg,) = t.by_name(n.SPAN_VAD_SEGMENT)
    assert seg.attributes[n.SEGMENT_ABANDONED] is True and seg.attributes[n.SEGMENT_LOST] == "abandoned"
    (lost,) = t.points(n.FINALS_LOST)
    assert lost["value"] == 1 and lost["attributes"][n.SEGMENT_LOST] == "abandoned"
    assert [e.attributes[n.SEGMENT_LOST] for e in stream.events if e.name == n.EVENT_FINAL_LOST] == ["abandoned"]
    assert len(t.by_name(n.SPAN_UTTERANCE)) == 2  # both ended: the closed one and the open one
    assert t.points(n.STREAMS_ACTIVE)[0]["value"] == 0
    t.shutdown()


def test_failed_file_closes_its_stream(engine, tmp_path: Path) -> None:
    """A file that breaks mid-decode ends its stream span with an error, not a dangling span."""
    src = SPEECH / "librispeech-test-clean_1089-134686-0000.flac"
    bad = tmp_path / "half.flac"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header survives: decoding fails half way
    t = Traced(config_with())
    with pytest.raises(AudioError):
        transcribe_file(bad, t.config, engine, observers=[t.inst.stream_observer(file=str(bad))])
    (stream,) = t.by_name(n.SPAN_STREAM)
    assert stream.status.status_code is StatusCode.ERROR
    assert "decoding failed" in stream.status.description
    assert t.points(n.STREAMS_ACTIVE)[0]["value"] == 0
    t.shutdown()


def test_silence_counts_as_empty_input(engine) -> None:
    t = Traced(config_with())
    session = StreamSession(t.config.vad, observers=[t.inst.stream_observer()])
    session.feed(np.zeros(16000, dtype=np.float32))
    session.finish()
    session.close()
    (p,) = t.points(n.INPUT_EMPTY)
    assert p["attributes"][n.INPUT_REASON] == "no_speech" and p["value"] == 1
    t.inst.stream_rejected("capacity")
    t.inst.input_error("undecodable")
    (r,) = t.points(n.STREAMS_REJECTED)
    assert r["attributes"][n.STREAM_REJECT_REASON] == "capacity"
    assert r["attributes"][n.VAD_CONFIG_ID] == t.config.vad.config_id
    assert t.points(n.INPUT_ERRORS)[0]["attributes"][n.INPUT_REASON] == "undecodable"
    t.shutdown()


def test_stereo_clipping_is_measured_on_input() -> None:
    """Levels of the stream are measured on the audio as received (all channels, native rate)."""
    t = Traced(config_with())
    info = probe(JFK)
    assert info.channels == 2
    block = next(iter(iter_file_blocks(JFK, 2.0)))
    loud = np.clip(block * 20.0, -1.0, 1.0)  # a real recording, overdriven
    session = StreamSession(
        t.config.vad, sample_rate=info.sample_rate, channels=2, observers=[t.inst.stream_observer()]
    )
    session.feed(loud)
    session.abandon()
    (stream,) = t.by_name(n.SPAN_STREAM)
    expected = np.count_nonzero(np.abs(loud) >= 0.999) / loud.size
    assert stream.attributes[n.AUDIO_CLIPPED_FRACTION] == pytest.approx(expected)
    assert expected > 0.01 and stream.attributes[n.AUDIO_PEAK_DBFS] == pytest.approx(0.0, abs=0.01)
    assert stream.attributes[n.AUDIO_CHANNELS] == 2
    t.shutdown()
