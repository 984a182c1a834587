"""Spans and metrics for every stage of one stream, made from the stream's events.

The span tree (a ``stream`` span; ``vad.segment`` and ``asr.transcribe`` spans under it, or under
one ``utterance`` trace per segment in the live layout, linked both ways) and every attribute are
in docs/telemetry.md. Span times are wall-clock times of what happened; positions in the audio
are attributes. A ``vad.segment`` span is kept open until its transcript is known so that it can
carry the outcome, then ended at the time it closed. State is bounded (only segments open or
waiting for their transcript are held), so a stream can run for hours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from speechpipe.pipeline.hooks import (
    AsrCompleted,
    AsrDequeued,
    AsrQueued,
    AudioFed,
    Event,
    FinalLost,
    FinalTranscript,
    SegmentCaptioned,
    StreamEnded,
    StreamStarted,
    VadOutput,
)
from speechpipe.stages.pcm import SAMPLE_RATE, LevelMeter, level_stats
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment, SpeechStarted
from speechpipe.telemetry import names as n
from speechpipe.telemetry.asr_figures import asr_figures, kind_label, outcome_attributes, span_attributes


class Instrumentation(Protocol):
    """What a stream's telemetry uses of its process's instruments (implemented by
    :class:`speechpipe.telemetry.instruments.Instrumentation`, which creates the stream's
    :class:`StreamTelemetry`; named here, not imported, so the two modules do not depend on
    each other)."""

    tracer: trace.Tracer
    labels: Any  # speechpipe.telemetry.instruments.Labels
    trace_text: bool
    instruments: Mapping[str, Any]

    def base_attributes(self, vad_config_id: str | None = None, mode: str | None = None) -> dict[str, str]: ...


@dataclass
class _Segment:
    """A closed segment whose final transcript has not been reported yet."""

    span: Span
    close_ns: int
    ended: bool = False


class StreamTelemetry:
    """The observer that turns one stream's events into spans and metric points.

    Created by :meth:`Instrumentation.stream_observer`; one per session. Every span it opens is
    ended at :class:`StreamEnded` at the latest, which the session reports on ``close()`` or
    ``abandon()``. Thread-safe: a scheduler reports queue events from its worker thread.
    """

    def __init__(
        self,
        instrumentation: Instrumentation,
        *,
        mode: str,
        layout: str,
        file: str | None,
        attributes: Mapping[str, Any] | None,
        parent: Context | None,
    ) -> None:
        self.inst = instrumentation
        self.mode = mode
        self.layout = layout
        self.file = file
        self._extra = dict(attributes or {})
        self._parent = parent
        self._lock = threading.Lock()
        self._stream_span: Span | None = None
        self._stream_ctx: Context | None = None
        self._attrs: dict[str, str] = {}  # base metric attributes of this stream
        self._span_attrs: dict[str, Any] = {}  # attributes every span of this stream carries
        self._kind_attrs: dict[tuple, dict[str, str]] = {}
        self._started_ns: dict[int, int] = {}
        self._utterances: dict[int, tuple[Span, Context]] = {}
        self._segments: dict[int, _Segment] = {}
        self._level = LevelMeter()
        self._frames_in = 0
        self._sample_rate = 1
        self._last_asr_end_ns = 0
        self.segments = 0
        self.discarded = 0
        self.words = 0
        self.stream_id = ""

    def on_event(self, event: Event) -> None:
        match event:
            case StreamStarted():
                self._stream_started(event)
            case AudioFed():
                self._audio_fed(event)
            case VadOutput(event=SpeechStarted() as ev):
                self._speech_started(ev, time.time_ns())
            case VadOutput(event=SpeechSegment() as ev):
                self._segment_closed(ev, time.time_ns())
            case VadOutput(event=SpeechDiscarded() as ev):
                self._discarded(ev, time.time_ns())
            case AsrQueued():
                self._metric(n.ASR_QUEUE_DEPTH).add(1, self._asr_attrs(kind_label(event.job)))
            case AsrDequeued():
                self._metric(n.ASR_QUEUE_DEPTH).add(-1, self._asr_attrs(kind_label(event.job)))
            case AsrCompleted():
                self._asr_completed(event)
            case FinalTranscript():
                self._final(event)
            case FinalLost():
                self._lost(event)
            case SegmentCaptioned():
                self._captioned(event)
            case StreamEnded():
                self._stream_ended(event)

    # -- helpers ------------------------------------------------------------------------------

    def _metric(self, name: str):
        return self.inst.instruments[name]

    def _asr_attrs(self, kind: str, model: str | None = None, device: str | None = None) -> dict[str, str]:
        """Metric attributes of ASR work: the stream's, the job kind, and (when given) model and device."""
        key = (kind, model, device)
        attrs = self._kind_attrs.get(key)
        if attrs is None:
            attrs = {**self._attrs, n.ASR_KIND: kind}
            if model is not None:
                attrs[n.ASR_MODEL] = model
                attrs[n.ASR_DEVICE] = device or ""
            self._kind_attrs[key] = attrs
        return attrs

    def _parent_ctx(self, index: int | None) -> Context:
        if index is not None and index in self._utterances:
            return self._utterances[index][1]
        return self._stream_ctx if self._stream_ctx is not None else Context()

    # -- events -------------------------------------------------------------------------------

    def _stream_started(self, ev: StreamStarted) -> None:
        now = time.time_ns()
        inst = self.inst
        self.stream_id = ev.stream_id
        self._sample_rate = ev.sample_rate
        self._attrs = inst.base_attributes(ev.vad_config_id, self.mode)
        self._span_attrs = {
            n.STREAM_ID: ev.stream_id,
            n.PIPELINE_VARIANT: inst.labels.variant,
            n.VARIANT_ID: inst.labels.variant_id,
            n.DEPLOY_ROLE: inst.labels.role,
            n.VAD_CONFIG_ID: ev.vad_config_id,
            n.AUTOMATION_LEVEL: inst.labels.automation,
        }
        attrs: dict[str, Any] = {
            **self._span_attrs,
            n.AUDIO_SAMPLE_RATE: ev.sample_rate,
            n.AUDIO_CHANNELS: ev.channels,
            n.ASR_MODEL: inst.labels.asr_model,
            n.PIPELINE_MODE: self.mode,
            n.STREAM_TRACE_LAYOUT: self.layout,
        }
        if self.file is not None:
            attrs[n.FILE] = self.file
        attrs.update(self._extra)
        with self._lock:
            span = inst.tracer.start_span(
                n.SPAN_STREAM,
                context=self._parent if self._parent is not None else Context(),
                kind=SpanKind.SERVER if self.mode == n.LIVE else SpanKind.INTERNAL,
                attributes=attrs,
                start_time=now,
            )
            self._stream_span = span
            self._stream_ctx = trace.set_span_in_context(span, Context())
        self._metric(n.STREAMS_ACTIVE).add(1, self._attrs)
        self._metric(n.INPUT_STREAMS).add(
            1, {**self._attrs, n.AUDIO_SAMPLE_RATE: ev.sample_rate, n.AUDIO_CHANNELS: ev.channels}
        )

    def _audio_fed(self, ev: AudioFed) -> None:
        frames = ev.samples.shape[0] if ev.samples.ndim else 0
        if frames == 0:
            return
        with self._lock:
            self._frames_in += frames
            self._level.add(ev.samples)
        self._metric(n.VAD_DURATION).record(ev.vad_ns / 1e9, self._attrs)
        self._metric(n.VAD_AUDIO).add(frames / ev.sample_rate, self._attrs)

    def _speech_started(self, event: SpeechStarted, now: int) -> None:
        with self._lock:
            self._started_ns[event.index] = now
            if self.layout != "utterance" or self._stream_span is None:
                return
            span = self.inst.tracer.start_span(
                n.SPAN_UTTERANCE,
                context=Context(),  # a new trace per utterance keeps long streams readable
                links=[Link(self._stream_span.get_span_context())],
                attributes={
                    **self._span_attrs,
                    n.SEGMENT_INDEX: event.index,
                    n.SEGMENT_START_S: round(event.start_s, 3),
                    n.PIPELINE_MODE: self.mode,
                },
                start_time=now,
            )
            self._utterances[event.index] = (span, trace.set_span_in_context(span, Context()))

    def _segment_closed(self, seg: SpeechSegment, now: int) -> None:
        level = level_stats(seg.audio)
        decision = max(0, seg.decided_sample - seg.end_sample) / SAMPLE_RATE if seg.decided_sample else 0.0
        attrs: dict[str, Any] = {
            **self._span_attrs,
            n.SEGMENT_INDEX: seg.index,
            n.SEGMENT_START_S: round(seg.start_s, 3),
            n.SEGMENT_END_S: round(seg.end_s, 3),
            n.SEGMENT_DURATION_S: round(seg.duration_s, 3),
            n.VAD_END_REASON: seg.end_reason,
            n.VAD_SPEECH_RATIO: round(seg.speech_ratio, 4),
            n.VAD_DECISION_DELAY_S: round(decision, 3),
            n.AUDIO_RMS_DBFS: round(level.rms_dbfs, 2),
            n.AUDIO_PEAK_DBFS: round(level.peak_dbfs, 2),
            n.AUDIO_CLIPPED_FRACTION: level.clipped_fraction,
        }
        with self._lock:
            start = self._started_ns.pop(seg.index, now)
            if self.mode == n.OFFLINE:
                # The offline driver runs ASR inline between two feeds: the VAD was not working on
                # this segment while an ASR call ran, so its span starts after the last one.
                start = min(max(start, self._last_asr_end_ns), now)
            span = self.inst.tracer.start_span(
                n.SPAN_VAD_SEGMENT, context=self._parent_ctx(seg.index), attributes=attrs, start_time=start
            )
            self._segments[seg.index] = _Segment(span, now)
            self.segments += 1
        reason = {**self._attrs, n.VAD_END_REASON: seg.end_reason}
        self._metric(n.SEGMENT_DURATION).record(seg.duration_s, reason)
        self._metric(n.VAD_DECISION_DELAY).record(decision, reason)
        self._record_level(level, "segment")

    def _record_level(self, level, scope: str) -> None:
        attrs = {**self._attrs, n.AUDIO_SCOPE: scope}
        self._metric(n.INPUT_RMS).record(max(0.0, -level.rms_dbfs), attrs)
        self._metric(n.INPUT_PEAK).record(max(0.0, -level.peak_dbfs), attrs)
        self._metric(n.INPUT_CLIPPED).record(level.clipped_fraction, attrs)

    def _discarded(self, event: SpeechDiscarded, now: int) -> None:
        with self._lock:
            self._started_ns.pop(event.index, None)
            self.discarded += 1
            details = {
                n.SEGMENT_INDEX: event.index,
                n.SEGMENT_START_S: round(event.start_sample / SAMPLE_RATE, 3),
                n.SEGMENT_END_S: round(event.end_sample / SAMPLE_RATE, 3),
                n.VAD_SPEECH_MS: round(event.speech_ms, 1),
            }
            if self._stream_span is not None:
                self._stream_span.add_event(n.EVENT_VAD_DISCARDED, details, timestamp=now)
            ut = self._utterances.pop(event.index, None)
            if ut is not None:
                ut[0].set_attribute(n.UTTERANCE_DISCARDED, True)
                ut[0].end(end_time=now)
        self._metric(n.VAD_DISCARDED).add(1, self._attrs)

    def _asr_completed(self, ev: AsrCompleted) -> None:
        job, transcripts = ev.job, ev.transcripts
        f = asr_figures(job, transcripts, ev.run, self.inst.labels.asr_model, time.time_ns())
        attrs = {**self._span_attrs, **span_attributes(job, transcripts, f, self.inst.trace_text)}
        first_index = job.pieces[0].index if job.pieces else None
        with self._lock:
            states = [self._segments.get(s.index) for s in job.segments]
            links = [
                Link(st.span.get_span_context(), {n.SEGMENT_INDEX: s.index})
                for s, st in zip(job.segments, states)
                if st is not None
            ]
            span = self.inst.tracer.start_span(
                n.SPAN_ASR_TRANSCRIBE,
                context=self._parent_ctx(first_index),
                links=links,
                attributes=attrs,
                start_time=f.started_ns,
            )
            span.end(end_time=f.ended_ns)
            ctx = span.get_span_context()
            for s, t, st in zip(job.segments, transcripts, states):
                if st is None or st.ended:
                    continue
                st.span.set_attributes(outcome_attributes(t, self.inst.trace_text))
                st.span.add_link(ctx, {n.ASR_JOB_ID: job.job_id})
                st.span.end(end_time=st.close_ns)
                st.ended = True
            self._last_asr_end_ns = max(self._last_asr_end_ns, f.ended_ns)
        metric_attrs = self._asr_attrs(f.kind, f.model, f.device)
        self._metric(n.ASR_QUEUE_WAIT).record(f.queue_wait_s, self._asr_attrs(f.kind))
        self._metric(n.ASR_DURATION).record(f.compute_s, metric_attrs)
        self._metric(n.ASR_PASSES).add(f.passes, metric_attrs)
        if f.speech_s:
            self._metric(n.ASR_RTF_METRIC).record(f.rtf, metric_attrs)
        if f.dropped:
            self._metric(n.OUTPUT_HALLUCINATION_DROPS).add(f.dropped, self._asr_attrs(f.kind))

    def _final(self, ev: FinalTranscript) -> None:
        now = time.time_ns()
        segment, transcript = ev.segment, ev.transcript
        with self._lock:
            st = self._segments.pop(segment.index, None)
            if st is not None and not st.ended:
                st.span.end(end_time=st.close_ns)
            ut = self._utterances.pop(segment.index, None)
            words = len(transcript.words)
            self.words += words
            if ut is not None:
                ut[0].set_attributes({n.ASR_WORDS: words, n.ASR_EMPTY: not transcript.text})
                ut[0].end(end_time=now)
        attrs = self._attrs
        self._metric(n.OUTPUT_SEGMENTS).add(1, {**attrs, n.ASR_EMPTY: not transcript.text})
        if words:
            self._metric(n.OUTPUT_WORDS).add(words, attrs)
        self._metric(n.OUTPUT_AVG_LOGPROB).record(max(0.0, -transcript.avg_logprob), attrs)
        self._metric(n.OUTPUT_NO_SPEECH_PROB).record(transcript.no_speech_prob, attrs)
        if transcript.text and segment.duration_s > 0:
            self._metric(n.OUTPUT_WORDS_PER_SECOND).record(words / segment.duration_s, attrs)
        self._metric(n.FINAL_LATENCY).record(ev.latency_s, attrs)

    def _captioned(self, ev: SegmentCaptioned) -> None:
        attrs = self._attrs
        if ev.first_partial_s is not None:
            self._metric(n.PARTIAL_FIRST_LATENCY).record(ev.first_partial_s, attrs)
        if ev.partials:
            self._metric(n.PARTIAL_ERASURE).record(ev.erased_chars / max(1, ev.final_chars), attrs)
        self._metric(n.PARTIAL_ERASED).add(ev.erased_chars, {**attrs, n.CAPTION_TEXT: "shown"})
        self._metric(n.PARTIAL_ERASED).add(ev.stable_erased_chars, {**attrs, n.CAPTION_TEXT: "stable"})
        self._metric(n.PARTIAL_FINAL_CHARS).add(ev.final_chars, attrs)
        if not ev.kept:
            self._metric(n.PARTIAL_COMMITS_BROKEN).add(1, attrs)
        if ev.redecoded:
            self._metric(n.PARTIAL_REDECODED).add(1, attrs)

    def _lost(self, ev: FinalLost) -> None:
        now = time.time_ns()
        with self._lock:
            st = self._segments.pop(ev.segment.index, None)
            lost = {n.SEGMENT_LOST: ev.reason, n.SEGMENT_ABANDONED: True}
            if st is not None and not st.ended:
                st.span.set_attributes(lost)
                st.span.end(end_time=st.close_ns)
            ut = self._utterances.pop(ev.segment.index, None)
            if ut is not None:
                ut[0].set_attributes(lost)
                ut[0].end(end_time=now)
            if self._stream_span is not None:
                attrs = {n.SEGMENT_INDEX: ev.segment.index, n.SEGMENT_LOST: ev.reason}
                self._stream_span.add_event(n.EVENT_FINAL_LOST, attrs, timestamp=now)
        self._metric(n.FINALS_LOST).add(1, {**self._attrs, n.SEGMENT_LOST: ev.reason})

    def _stream_ended(self, ev: StreamEnded) -> None:
        now = time.time_ns()
        with self._lock:
            for st in self._segments.values():
                if not st.ended:
                    st.span.set_attribute(n.SEGMENT_ABANDONED, True)
                    st.span.end(end_time=st.close_ns)
                    st.ended = True
            self._segments.clear()
            for span, _ctx in self._utterances.values():
                span.set_attribute(n.SEGMENT_ABANDONED, True)
                span.end(end_time=now)
            self._utterances.clear()
            self._started_ns.clear()
            span = self._stream_span
            self._stream_span = None
            level, samples_in = self._level.stats(), self._level.samples
        speech_ratio = ev.speech_frames / ev.total_frames if ev.total_frames else 0.0
        if span is not None:
            span.set_attributes(
                {
                    n.STREAM_AUDIO_S: round(self._frames_in / self._sample_rate, 3),
                    n.STREAM_SEGMENTS: self.segments,
                    n.STREAM_DISCARDED: self.discarded,
                    n.STREAM_WORDS: self.words,
                    n.VAD_SPEECH_RATIO: round(speech_ratio, 4),
                    n.AUDIO_RMS_DBFS: round(level.rms_dbfs, 2),
                    n.AUDIO_PEAK_DBFS: round(level.peak_dbfs, 2),
                    n.AUDIO_CLIPPED_FRACTION: level.clipped_fraction,
                    n.AUDIO_SANITIZED_SAMPLES: ev.sanitized_samples,
                    n.STREAM_ABANDONED: not ev.finished or ev.error is not None,
                }
            )
            if ev.error is not None:
                span.record_exception(ev.error, timestamp=now)
                span.set_status(Status(StatusCode.ERROR, f"{type(ev.error).__name__}: {ev.error}"))
            span.end(end_time=now)
        attrs = self._attrs
        self._metric(n.STREAMS_ACTIVE).add(-1, attrs)
        if ev.sanitized_samples:
            self._metric(n.INPUT_SANITIZED).add(ev.sanitized_samples, attrs)
        if ev.total_frames:
            self._metric(n.STREAM_SPEECH_RATIO).record(speech_ratio, attrs)
        if self.segments == 0:
            reason = "no_audio" if samples_in == 0 else "no_speech"
            self._metric(n.INPUT_EMPTY).add(1, {**attrs, n.INPUT_REASON: reason})
        if samples_in:
            self._record_level(level, "stream")
