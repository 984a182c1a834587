"""Spans and metrics for every stage, produced from a :class:`StreamSession`'s hooks.

:class:`Instrumentation` is created once per process (or per test) from a tracer provider and a
meter provider that are handed in, never taken from the OpenTelemetry globals. It owns the
instruments and hands out one :class:`StreamTelemetry` per stream: the
:class:`~speechpipe.pipeline.session.SessionHooks` object given to that stream's session.

Span tree (see ``docs/telemetry.md`` for the full attribute list)::

    stream                      root of the stream's trace (layout "stream", offline default)
    ├── vad.segment             one per closed speech segment
    ├── asr.transcribe          one per ASR job (a packed window); links -> the vad.segment spans in it
    └── ...

    stream                      layout "utterance" (live default): a trace of its own, one span
    utterance                   root of a new trace per utterance, linked -> stream
    ├── asr.transcribe          partial transcripts while the segment is open (asr.kind=partial)
    ├── vad.segment
    └── asr.transcribe          the final (asr.kind=final); links both ways with vad.segment

``asr.transcribe`` is a sibling of the ``vad.segment`` spans it covers, because offline one job
(one Whisper window) transcribes several segments packed together and a span has one parent. The relation is
carried by span links in both directions: the ``asr.transcribe`` span links to each segment it
transcribed, and each ``vad.segment`` links to the ``asr.transcribe`` span that transcribed it
(Jaeger shows both as references).

Times: span start and end are wall-clock times of what happened: a ``vad.segment`` runs from the
moment the VAD reported its start to the moment it closed it (offline, where the driver runs ASR
inline between feeds, from the end of the last ASR call if that is later), an ``asr.transcribe``
from the start to the end of the engine call that ran the job (jobs decoded together in one batched
call share its span times; ``asr.compute_s`` is the job's own share, ``asr.queue_wait_s`` its
wait). Positions in the audio are attributes (``segment.start_s``...). A ``vad.segment`` is kept open until its transcript is known
so that it can carry the outcome (``asr.words``, ``asr.empty``...), then ended at the time it closed.

State is bounded: only segments that are open or waiting for their transcript are held, so a
stream can run for hours.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from speechpipe.pipeline.session import PARTIAL, AsrJob, AsrRun, SessionHooks, StreamSession
from speechpipe.stages.asr import Transcript
from speechpipe.stages.audio import CLIP_LEVEL, SILENCE_DBFS, level_stats
from speechpipe.stages.vad import SAMPLE_RATE, SpeechDiscarded, SpeechSegment, SpeechStarted
from speechpipe.telemetry import names as n

if TYPE_CHECKING:
    from speechpipe.pipeline.config import Config

OFFLINE = "offline"
LIVE = "live"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("speechpipe")
    except Exception:  # noqa: BLE001  # running from a source tree that is not installed
        return "0"


def _dbfs(level: float) -> float:
    return max(SILENCE_DBFS, 20.0 * float(np.log10(level))) if level > 0 else SILENCE_DBFS


def classify_input_error(message: str) -> str:
    """A short ``input.reason`` for a file the offline runner could not use."""
    m = message.lower()
    for key, reason in (
        ("no such file", "missing"),
        ("file not found", "missing"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("not decodable", "undecodable"),
        ("decoding failed", "undecodable"),
        ("sample rate", "unsupported_rate"),
        ("cannot read", "unreadable"),
    ):
        if key in m:
            return reason
    return "other"


class Instrumentation:
    """The instruments of one process, and a factory of per-stream hooks.

    Args:
        tracer_provider: where spans go (an SDK ``TracerProvider``, or a no-op one).
        meter_provider: where metrics go.
        variant: ``pipeline.variant`` of this process's streams.
        vad_config_id: default ``vad.config_id`` (each stream reports its own session's id; this
            one labels process-level metrics such as CPU and rejected streams).
        asr_model: ``asr.model`` on stream spans.
        mode: ``"offline"`` or ``"live"``: default for :meth:`stream_hooks`, label of process metrics.
        trace_text: put transcript text on spans (personal data: off unless the user opts in).
        trace_layout: ``"stream"``, ``"utterance"`` or ``"auto"`` (stream offline, utterance live).
        process_metrics: observe this process's CPU and memory (psutil).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider,
        *,
        variant: str = "default",
        vad_config_id: str = "",
        asr_model: str = "",
        mode: str = OFFLINE,
        trace_text: bool = False,
        trace_layout: str = "auto",
        process_metrics: bool = True,
    ) -> None:
        version = _version()
        self.tracer = tracer_provider.get_tracer(n.SCOPE, version)
        self.meter = meter_provider.get_meter(n.SCOPE, version)
        self.variant = variant
        self.vad_config_id = vad_config_id
        self.asr_model = asr_model
        self.mode = mode
        self.trace_text = trace_text
        self.trace_layout = trace_layout
        self.instruments: dict[str, Any] = {}
        for spec in n.METRICS:
            if spec.kind == n.COUNTER:
                self.instruments[spec.name] = self.meter.create_counter(spec.name, spec.unit, spec.description)
            elif spec.kind == n.UP_DOWN_COUNTER:
                self.instruments[spec.name] = self.meter.create_up_down_counter(spec.name, spec.unit, spec.description)
            elif spec.kind == n.HISTOGRAM:
                self.instruments[spec.name] = self.meter.create_histogram(
                    spec.name, spec.unit, spec.description, explicit_bucket_boundaries_advisory=spec.buckets
                )
        if process_metrics:
            self._register_process_metrics()

    @classmethod
    def from_config(
        cls, config: Config, tracer_provider: trace.TracerProvider, meter_provider, *, mode: str = OFFLINE, **kwargs
    ) -> Instrumentation:
        """Instrumentation labelled with ``config``'s variant, VAD config id, model and telemetry settings."""
        kwargs.setdefault("trace_text", config.telemetry.trace_text)
        kwargs.setdefault("trace_layout", config.telemetry.trace_layout)
        return cls(
            tracer_provider,
            meter_provider,
            variant=config.pipeline.variant,
            vad_config_id=config.vad.config_id,
            asr_model=config.asr.model,
            mode=mode,
            **kwargs,
        )

    # -- per stream ---------------------------------------------------------------------------

    def stream_hooks(
        self,
        *,
        mode: str | None = None,
        file: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        parent: Context | None = None,
        trace_layout: str | None = None,
    ) -> StreamTelemetry:
        """Hooks for one new stream: pass them to ``StreamSession(..., hooks=...)``.

        Args:
            mode: ``"offline"`` or ``"live"`` (default: this instrumentation's mode).
            file: the input file (offline), set as the ``file`` attribute of the stream span.
            attributes: extra attributes for the stream span (e.g. the client's address).
            parent: context whose span becomes the parent of the ``stream`` span (e.g. the server's
                connection span); by default the stream span is the root of a new trace.
            trace_layout: overrides the instrumentation's layout for this stream.
        """
        mode = mode or self.mode
        layout = trace_layout or self.trace_layout
        if layout == "auto":
            layout = "utterance" if mode == LIVE else "stream"
        return StreamTelemetry(self, mode=mode, layout=layout, file=file, attributes=attributes, parent=parent)

    # -- process-level events (called by the server or the runner) ------------------------------

    def base_attributes(self, vad_config_id: str | None = None, mode: str | None = None) -> dict[str, str]:
        """The attributes every metric point carries."""
        return {
            n.PIPELINE_VARIANT: self.variant,
            n.VAD_CONFIG_ID: vad_config_id if vad_config_id is not None else self.vad_config_id,
            n.PIPELINE_MODE: mode or self.mode,
        }

    def stream_rejected(self, reason: str, *, vad_config_id: str | None = None) -> None:
        """Count a stream refused before any session existed (``reason``: e.g. ``"capacity"``)."""
        attrs = self.base_attributes(vad_config_id)
        attrs[n.STREAM_REJECT_REASON] = reason
        self.instruments[n.STREAMS_REJECTED].add(1, attrs)

    def input_error(self, reason: str, *, vad_config_id: str | None = None) -> None:
        """Count an input that could not be used at all (see :func:`classify_input_error`)."""
        attrs = self.base_attributes(vad_config_id)
        attrs[n.INPUT_REASON] = reason
        self.instruments[n.INPUT_ERRORS].add(1, attrs)

    # -- process CPU and memory -------------------------------------------------------------------

    def _register_process_metrics(self) -> None:
        # psutil reads CPU times and current RSS portably; the standard library only offers peak RSS
        # (resource.getrusage) or Linux-only /proc parsing.
        import psutil

        proc = psutil.Process(os.getpid())
        cores = psutil.cpu_count() or 1
        last = {"wall": proc.create_time(), "cpu": 0.0}
        lock = threading.Lock()

        def cpu_time(_options: CallbackOptions):
            t = proc.cpu_times()
            base = self.base_attributes()
            return [
                Observation(t.user, {**base, n.CPU_MODE: "user"}),
                Observation(t.system, {**base, n.CPU_MODE: "system"}),
            ]

        def cpu_utilization(_options: CallbackOptions):
            t = proc.cpu_times()
            cpu, wall = t.user + t.system, time.time()
            with lock:
                d_cpu, d_wall = cpu - last["cpu"], wall - last["wall"]
                last["cpu"], last["wall"] = cpu, wall
            value = d_cpu / (d_wall * cores) if d_wall > 0 else 0.0
            return [Observation(max(0.0, value), self.base_attributes())]

        def memory(_options: CallbackOptions):
            return [Observation(proc.memory_info().rss, self.base_attributes())]

        specs = n.METRICS_BY_NAME
        s = specs[n.PROCESS_CPU_TIME]
        self.meter.create_observable_counter(s.name, [cpu_time], s.unit, s.description)
        s = specs[n.PROCESS_CPU_UTILIZATION]
        self.meter.create_observable_gauge(s.name, [cpu_utilization], s.unit, s.description)
        s = specs[n.PROCESS_MEMORY_USAGE]
        self.meter.create_observable_up_down_counter(s.name, [memory], s.unit, s.description)


@dataclass
class _Segment:
    """A closed segment whose final transcript has not been reported yet."""

    span: Span
    close_ns: int
    decision_delay_s: float
    duration_s: float
    ended: bool = False


class StreamTelemetry(SessionHooks):
    """Session hooks that turn one stream's life into spans and metric points.

    Created by :meth:`Instrumentation.stream_hooks`; one per :class:`StreamSession`. Besides the
    session's own calls, a scheduler calls :meth:`asr_queued` / :meth:`asr_started` (queue depth).
    Every span it opens is ended by :meth:`stream_ended` at the latest, which the session calls on
    ``close()`` or ``abandon()``.
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
        self._kind_attrs: dict[str, dict[str, str]] = {}
        self._started_ns: dict[int, int] = {}
        self._utterances: dict[int, tuple[Span, Context]] = {}
        self._segments: dict[int, _Segment] = {}
        self.segments = 0
        self.discarded = 0
        self.words = 0
        self._frames_in = 0
        self._samples_in = 0
        self._sumsq = 0.0
        self._peak = 0.0
        self._clipped = 0
        self._last_asr_end_ns = 0
        self.stream_id = ""

    # -- helpers ------------------------------------------------------------------------------

    def _metric(self, name: str):
        return self.inst.instruments[name]

    def _asr_attrs(self, kind: str, model: str | None = None, device: str | None = None) -> dict[str, str]:
        """Metric attributes of ASR work: the stream's, the job kind, and (when given) model and device."""
        key = f"{kind}|{model}|{device}"
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

    # -- SessionHooks -------------------------------------------------------------------------

    def stream_started(self, session: StreamSession) -> None:
        now = time.time_ns()
        inst = self.inst
        self.stream_id = session.stream_id
        self._attrs = inst.base_attributes(session.vad_config_id, self.mode)
        self._span_attrs = {
            n.STREAM_ID: session.stream_id,
            n.PIPELINE_VARIANT: inst.variant,
            n.VAD_CONFIG_ID: session.vad_config_id,
        }
        attrs: dict[str, Any] = {
            **self._span_attrs,
            n.AUDIO_SAMPLE_RATE: session.sample_rate,
            n.AUDIO_CHANNELS: session.channels,
            n.ASR_MODEL: inst.asr_model,
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
                kind=SpanKind.SERVER if self.mode == LIVE else SpanKind.INTERNAL,
                attributes=attrs,
                start_time=now,
            )
            self._stream_span = span
            self._stream_ctx = trace.set_span_in_context(span, Context())
        self._metric(n.STREAMS_ACTIVE).add(1, self._attrs)
        self._metric(n.INPUT_STREAMS).add(
            1, {**self._attrs, n.AUDIO_SAMPLE_RATE: session.sample_rate, n.AUDIO_CHANNELS: session.channels}
        )

    def audio_fed(self, session: StreamSession, samples: np.ndarray, vad_ns: int) -> None:
        frames = samples.shape[0] if samples.ndim else 0
        if frames == 0:
            return
        flat = samples.reshape(-1)
        hi, lo = float(flat.max()), float(flat.min())
        sumsq = float(np.dot(flat, flat))
        clipped = int(np.count_nonzero(flat >= CLIP_LEVEL)) if hi >= CLIP_LEVEL else 0
        if lo <= -CLIP_LEVEL:
            clipped += int(np.count_nonzero(flat <= -CLIP_LEVEL))
        with self._lock:
            self._frames_in += frames
            self._samples_in += flat.size
            self._sumsq += sumsq
            self._peak = max(self._peak, hi, -lo)
            self._clipped += clipped
        self._metric(n.VAD_DURATION).record(vad_ns / 1e9, self._attrs)
        self._metric(n.VAD_AUDIO).add(frames / session.sample_rate, self._attrs)

    def vad_event(self, session: StreamSession, event: SpeechStarted | SpeechSegment | SpeechDiscarded) -> None:
        now = time.time_ns()
        if isinstance(event, SpeechStarted):
            self._speech_started(event, now)
        elif isinstance(event, SpeechSegment):
            self._segment_closed(event, now)
        elif isinstance(event, SpeechDiscarded):
            self._discarded(event, now)

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
            if self.mode == OFFLINE:
                # The offline driver runs ASR inline between two feeds: the VAD was not working on
                # this segment while an ASR call ran, so its span starts after the last one.
                start = min(max(start, self._last_asr_end_ns), now)
            span = self.inst.tracer.start_span(
                n.SPAN_VAD_SEGMENT, context=self._parent_ctx(seg.index), attributes=attrs, start_time=start
            )
            self._segments[seg.index] = _Segment(span, now, decision, seg.duration_s)
            self.segments += 1
        reason = {**self._attrs, n.VAD_END_REASON: seg.end_reason}
        self._metric(n.SEGMENT_DURATION).record(seg.duration_s, reason)
        self._metric(n.VAD_DECISION_DELAY).record(decision, reason)
        scope = {**self._attrs, n.AUDIO_SCOPE: "segment"}
        self._metric(n.INPUT_RMS).record(max(0.0, -level.rms_dbfs), scope)
        self._metric(n.INPUT_PEAK).record(max(0.0, -level.peak_dbfs), scope)
        self._metric(n.INPUT_CLIPPED).record(level.clipped_fraction, scope)

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

    def asr_queued(self, session: StreamSession, job: AsrJob) -> None:
        self._metric(n.ASR_QUEUE_DEPTH).add(1, self._asr_attrs(job.kind))

    def asr_started(self, session: StreamSession, job: AsrJob) -> None:
        self._metric(n.ASR_QUEUE_DEPTH).add(-1, self._asr_attrs(job.kind))

    def asr_completed(
        self, session: StreamSession, job: AsrJob, transcripts: list[Transcript], run: AsrRun | None
    ) -> None:
        now = time.time_ns()
        inst = self.inst
        if run is not None:
            started, ended = run.started_ns, max(run.ended_ns, run.started_ns)
            model, device, compute = run.model or inst.asr_model, run.device, run.compute_type
            windows = list(run.windows)
            queue_wait = run.queue_wait_s
        else:
            started = ended = now
            model, device, compute, windows, queue_wait = inst.asr_model, "", "", [], 0.0
        # The job's own compute: its windows' wall times (shares of the engine call when several
        # jobs were decoded in one batch; then the span covers the whole call that ran it).
        compute_s = sum(w.wall_s for w in windows) if windows else (ended - started) / 1e9
        first = [w for w in windows if w.attempt == 0]
        window_s = sum(w.audio_s for w in first) if first else sum(p.duration_s for p in job.pieces)
        dropped = sum(w.dropped for w in windows) if windows else sum(t.dropped for t in transcripts)
        speech_s = sum(p.duration_s for p in job.pieces)
        segs = job.segments if job.kind != PARTIAL else []
        weights = [max(p.duration_s, 1e-3) for p in job.pieces] or [1.0]
        wsum = sum(weights)
        words = sum(len(t.words) for t in transcripts)
        attrs: dict[str, Any] = {
            **self._span_attrs,
            n.ASR_MODEL: model,
            n.ASR_DEVICE: device,
            n.ASR_COMPUTE_TYPE: compute,
            n.ASR_KIND: job.kind,
            n.ASR_JOB_ID: job.job_id,
            n.AUDIO_DURATION_S: round(speech_s, 3),
            n.ASR_WINDOW_S: round(window_s, 3),
            n.ASR_WINDOWS: len(windows) or 1,
            n.ASR_RETRIES: sum(1 for w in windows if w.attempt > 0),
            n.ASR_COMPUTE_S: round(compute_s, 4),
            n.ASR_QUEUE_WAIT_S: round(queue_wait, 4),
            n.ASR_RTF: round(compute_s / speech_s, 4) if speech_s else 0.0,
            n.ASR_AVG_LOGPROB: round(sum(w * t.avg_logprob for w, t in zip(weights, transcripts)) / wsum, 4),
            n.ASR_NO_SPEECH_PROB: round(sum(w * t.no_speech_prob for w, t in zip(weights, transcripts)) / wsum, 4),
            n.ASR_WORDS: words,
            n.ASR_DROPPED: dropped,
            n.ASR_SEGMENTS: len(job.pieces),
            n.ASR_SEGMENT_INDICES: [p.index for p in job.pieces],
        }
        config_ids = sorted({s.config_id for s in segs})
        if config_ids:
            attrs[n.VAD_CONFIG_ID] = config_ids[0] if len(config_ids) == 1 else ",".join(config_ids)
        if inst.trace_text:
            attrs[n.ASR_TEXT] = " ".join(t.text for t in transcripts if t.text)
        first_index = job.pieces[0].index if job.pieces else None
        with self._lock:
            states = [self._segments.get(s.index) for s in segs]
            links = [
                Link(st.span.get_span_context(), {n.SEGMENT_INDEX: s.index})
                for s, st in zip(segs, states)
                if st is not None
            ]
            span = inst.tracer.start_span(
                n.SPAN_ASR_TRANSCRIBE,
                context=self._parent_ctx(first_index),
                links=links,
                attributes=attrs,
                start_time=started,
            )
            span.end(end_time=ended)
            ctx = span.get_span_context()
            for s, t, st in zip(segs, transcripts, states):
                if st is None or st.ended:
                    continue
                outcome: dict[str, Any] = {
                    n.ASR_WORDS: len(t.words),
                    n.ASR_EMPTY: not t.text,
                    n.ASR_AVG_LOGPROB: round(t.avg_logprob, 4),
                    n.ASR_NO_SPEECH_PROB: round(t.no_speech_prob, 4),
                    n.ASR_DROPPED: t.dropped,
                }
                if inst.trace_text:
                    outcome[n.ASR_TEXT] = t.text
                st.span.set_attributes(outcome)
                st.span.add_link(ctx, {n.ASR_JOB_ID: job.job_id})
                st.span.end(end_time=st.close_ns)
                st.ended = True
            self._last_asr_end_ns = max(self._last_asr_end_ns, ended)
        metric_attrs = self._asr_attrs(job.kind, model, device)
        self._metric(n.ASR_QUEUE_WAIT).record(queue_wait, self._asr_attrs(job.kind))
        self._metric(n.ASR_DURATION).record(compute_s, metric_attrs)
        if speech_s:
            self._metric(n.ASR_RTF_METRIC).record(compute_s / speech_s, metric_attrs)
        if dropped:
            self._metric(n.OUTPUT_HALLUCINATION_DROPS).add(dropped, self._asr_attrs(job.kind))

    def final(self, session: StreamSession, segment: SpeechSegment, transcript: Transcript) -> None:
        now = time.time_ns()
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
        if st is not None:
            latency = (now - st.close_ns) / 1e9
            if self.mode == LIVE:  # audio arrives in real time: the hangover is time the user waits
                latency += st.decision_delay_s
            self._metric(n.FINAL_LATENCY).record(latency, attrs)

    def stream_ended(self, session: StreamSession) -> None:
        now = time.time_ns()
        abandoned = not session.done or session.error is not None
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
            samples_in, sumsq, peak, clipped = self._samples_in, self._sumsq, self._peak, self._clipped
        total_frames = session.vad.total_frames
        speech_ratio = session.vad.speech_frames / total_frames if total_frames else 0.0
        rms = _dbfs((sumsq / samples_in) ** 0.5) if samples_in else SILENCE_DBFS
        peak_db = _dbfs(peak) if samples_in else SILENCE_DBFS
        clipped_fraction = clipped / samples_in if samples_in else 0.0
        if span is not None:
            span.set_attributes(
                {
                    n.STREAM_AUDIO_S: round(self._frames_in / session.sample_rate, 3),
                    n.STREAM_SEGMENTS: self.segments,
                    n.STREAM_DISCARDED: self.discarded,
                    n.STREAM_WORDS: self.words,
                    n.VAD_SPEECH_RATIO: round(speech_ratio, 4),
                    n.AUDIO_RMS_DBFS: round(rms, 2),
                    n.AUDIO_PEAK_DBFS: round(peak_db, 2),
                    n.AUDIO_CLIPPED_FRACTION: clipped_fraction,
                    n.STREAM_ABANDONED: abandoned,
                }
            )
            if session.error is not None:
                span.record_exception(session.error, timestamp=now)
                span.set_status(Status(StatusCode.ERROR, f"{type(session.error).__name__}: {session.error}"))
            span.end(end_time=now)
        attrs = self._attrs
        self._metric(n.STREAMS_ACTIVE).add(-1, attrs)
        if total_frames:
            self._metric(n.STREAM_SPEECH_RATIO).record(speech_ratio, attrs)
        if self.segments == 0:
            reason = "no_audio" if samples_in == 0 else "no_speech"
            self._metric(n.INPUT_EMPTY).add(1, {**attrs, n.INPUT_REASON: reason})
        if samples_in:
            scope = {**attrs, n.AUDIO_SCOPE: "stream"}
            self._metric(n.INPUT_RMS).record(max(0.0, -rms), scope)
            self._metric(n.INPUT_PEAK).record(max(0.0, -peak_db), scope)
            self._metric(n.INPUT_CLIPPED).record(clipped_fraction, scope)
