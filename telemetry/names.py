"""Every span name, attribute key and metric name speechpipe emits, in one place.

Nothing else in the code base spells these strings: instrumentation, tests, the summary writer
and the docs table (``docs/telemetry.md``, checked against :data:`METRICS` by a test) all use the
constants here. Renaming one is a breaking change for dashboards and saved Jaeger searches.
"""

from __future__ import annotations

from dataclasses import dataclass

#: instrumentation scope of every tracer and meter.
SCOPE = "speechpipe"

# -- span names ---------------------------------------------------------------------------------

SPAN_STREAM = "stream"
"""Root span of one stream: a live connection or an offline file."""
SPAN_UTTERANCE = "utterance"
"""Root of one utterance's own trace (live layout), linked to its ``stream`` span."""
SPAN_VAD_SEGMENT = "vad.segment"
"""One closed speech segment."""
SPAN_ASR_TRANSCRIBE = "asr.transcribe"
"""One ASR job: a packed window of segments (offline), one segment (live) or a partial."""

# -- span events ----------------------------------------------------------------------------------

EVENT_VAD_DISCARDED = "vad.discarded"
"""A triggered region closed with too little speech to make a segment."""

# -- attribute keys -------------------------------------------------------------------------------

# on every span and metric
PIPELINE_VARIANT = "pipeline.variant"
VAD_CONFIG_ID = "vad.config_id"
PIPELINE_MODE = "pipeline.mode"  # OFFLINE | LIVE
OFFLINE = "offline"
LIVE = "live"

# stream
STREAM_ID = "stream.id"
FILE = "file"
AUDIO_SAMPLE_RATE = "audio.sample_rate"
AUDIO_CHANNELS = "audio.channels"
ASR_MODEL = "asr.model"
STREAM_AUDIO_S = "stream.audio_s"
STREAM_ABANDONED = "stream.abandoned"
STREAM_SEGMENTS = "stream.segments"
STREAM_DISCARDED = "stream.discarded"
STREAM_WORDS = "stream.words"
STREAM_TRACE_LAYOUT = "stream.trace_layout"
AUDIO_RMS_DBFS = "audio.rms_dbfs"
AUDIO_PEAK_DBFS = "audio.peak_dbfs"
AUDIO_CLIPPED_FRACTION = "audio.clipped_fraction"

# vad.segment (and utterance)
SEGMENT_INDEX = "segment.index"
SEGMENT_START_S = "segment.start_s"
SEGMENT_END_S = "segment.end_s"
SEGMENT_DURATION_S = "segment.duration_s"
SEGMENT_ABANDONED = "segment.abandoned"
VAD_END_REASON = "vad.end_reason"  # silence | max_length | end_of_stream
VAD_SPEECH_RATIO = "vad.speech_ratio"
VAD_DECISION_DELAY_S = "vad.decision_delay_s"
VAD_SPEECH_MS = "vad.speech_ms"
UTTERANCE_DISCARDED = "utterance.discarded"

# asr.transcribe (some also land on vad.segment once its transcript is known)
ASR_DEVICE = "asr.device"
ASR_COMPUTE_TYPE = "asr.compute_type"
ASR_KIND = "asr.kind"  # final | partial
ASR_JOB_ID = "asr.job_id"
ASR_WINDOW_S = "asr.window_s"
ASR_WINDOWS = "asr.windows"
ASR_RETRIES = "asr.retries"
ASR_COMPUTE_S = "asr.compute_s"
ASR_SEGMENTS = "asr.segments"
ASR_SEGMENT_INDICES = "asr.segment_indices"
AUDIO_DURATION_S = "audio.duration_s"
ASR_QUEUE_WAIT_S = "asr.queue_wait_s"
ASR_RTF = "asr.rtf"
ASR_AVG_LOGPROB = "asr.avg_logprob"
ASR_NO_SPEECH_PROB = "asr.no_speech_prob"
ASR_WORDS = "asr.words"
ASR_DROPPED = "asr.dropped"
ASR_EMPTY = "asr.empty"
ASR_TEXT = "asr.text"  # only with --trace-text: transcripts are personal data

# eval.utterance: one file of one variant in a `speechpipe eval` run (docs/evaluation.md)
SPAN_EVAL_UTTERANCE = "eval.utterance"
EVAL_RUN_ID = "eval.run_id"  # also on the stream span of that file
EVAL_WER = "eval.wer"
EVAL_REF_WORDS = "eval.ref_words"
EVAL_ERRORS_VAD_DROPPED = "eval.errors.vad_dropped"
EVAL_ERRORS_BOUNDARY = "eval.errors.boundary"
EVAL_ERRORS_ASR = "eval.errors.asr"
EVAL_SEGMENTS = "eval.segments"
EVAL_BASELINE = "eval.baseline"
EVAL_WER_DELTA = "eval.wer_delta"
EVAL_WORSE = "eval.worse"

# metric-only attributes
STREAM_REJECT_REASON = "stream.reject_reason"
INPUT_REASON = "input.reason"
AUDIO_SCOPE = "audio.scope"  # "segment" | "stream"
CPU_MODE = "cpu.mode"

# -- metrics --------------------------------------------------------------------------------------

COUNTER = "counter"
UP_DOWN_COUNTER = "updowncounter"
HISTOGRAM = "histogram"
OBSERVABLE_COUNTER = "observable_counter"
OBSERVABLE_GAUGE = "observable_gauge"
OBSERVABLE_UP_DOWN_COUNTER = "observable_updowncounter"

#: attributes carried by every metric point.
BASE_METRIC_ATTRIBUTES = (PIPELINE_VARIANT, VAD_CONFIG_ID, PIPELINE_MODE)

_SECONDS_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SECONDS_SLOW = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
_SEGMENT_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 25.0, 30.0)
_RATIO = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_SMALL_FRACTION = (0.0, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1)
_HEADROOM_DB = (0.1, 1.0, 3.0, 6.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 70.0, 90.0)
_RTF = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
_NEG_LOGPROB = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0)
_WPS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


@dataclass(frozen=True)
class MetricSpec:
    """One instrument: its name, kind, unit, the attributes beyond :data:`BASE_METRIC_ATTRIBUTES`,
    what it means, and (histograms) its bucket boundaries."""

    name: str
    kind: str
    unit: str
    attributes: tuple[str, ...]
    group: str
    description: str
    buckets: tuple[float, ...] | None = None


# software
VAD_DURATION = "speechpipe.vad.duration"
VAD_AUDIO = "speechpipe.vad.audio"
ASR_DURATION = "speechpipe.asr.duration"
ASR_RTF_METRIC = "speechpipe.asr.rtf"
ASR_QUEUE_WAIT = "speechpipe.asr.queue_wait"
ASR_QUEUE_DEPTH = "speechpipe.asr.queue_depth"
FINAL_LATENCY = "speechpipe.final.latency"
STREAMS_ACTIVE = "speechpipe.streams.active"
STREAMS_REJECTED = "speechpipe.streams.rejected"
PROCESS_CPU_TIME = "process.cpu.time"
PROCESS_CPU_UTILIZATION = "process.cpu.utilization"
PROCESS_MEMORY_USAGE = "process.memory.usage"
# input
INPUT_STREAMS = "speechpipe.input.streams"
SEGMENT_DURATION = "speechpipe.vad.segment.duration"
VAD_DECISION_DELAY = "speechpipe.vad.decision_delay"
INPUT_RMS = "speechpipe.input.rms_headroom"
INPUT_PEAK = "speechpipe.input.peak_headroom"
INPUT_CLIPPED = "speechpipe.input.clipped"
STREAM_SPEECH_RATIO = "speechpipe.vad.speech_ratio"
VAD_DISCARDED = "speechpipe.vad.discarded"
INPUT_EMPTY = "speechpipe.input.empty"
INPUT_ERRORS = "speechpipe.input.errors"
# output
OUTPUT_SEGMENTS = "speechpipe.output.segments"
OUTPUT_WORDS = "speechpipe.output.words"
OUTPUT_AVG_LOGPROB = "speechpipe.output.neg_avg_logprob"
OUTPUT_NO_SPEECH_PROB = "speechpipe.output.no_speech_prob"
OUTPUT_WORDS_PER_SECOND = "speechpipe.output.words_per_second"
OUTPUT_HALLUCINATION_DROPS = "speechpipe.output.hallucination_drops"

_ASR = (ASR_KIND, ASR_MODEL, ASR_DEVICE)

METRICS: tuple[MetricSpec, ...] = (
    # -- software -------------------------------------------------------------------------------
    MetricSpec(
        VAD_DURATION,
        HISTOGRAM,
        "s",
        (),
        "software",
        "VAD stage wall time (resampling + frame classification) per chunk of audio fed",
        _SECONDS_FAST,
    ),
    MetricSpec(
        VAD_AUDIO,
        COUNTER,
        "s",
        (),
        "software",
        "audio consumed by the VAD, in stream seconds (VAD RTF = sum of vad.duration / this)",
    ),
    MetricSpec(
        ASR_DURATION,
        HISTOGRAM,
        "s",
        _ASR,
        "software",
        "ASR stage wall time per job (its Whisper windows and retries; its share of a batched engine call)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        ASR_RTF_METRIC,
        HISTOGRAM,
        "1",
        _ASR,
        "software",
        "real-time factor of one ASR job: its wall time / seconds of speech it transcribed",
        _RTF,
    ),
    MetricSpec(
        ASR_QUEUE_WAIT,
        HISTOGRAM,
        "s",
        (ASR_KIND,),
        "software",
        "time an ASR job waited for the engine before it started",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        ASR_QUEUE_DEPTH,
        UP_DOWN_COUNTER,
        "{job}",
        (ASR_KIND,),
        "software",
        "ASR jobs queued and not started yet (the AsrQueued/AsrDequeued events of the scheduler's jobs)",
    ),
    MetricSpec(
        FINAL_LATENCY,
        HISTOGRAM,
        "s",
        (),
        "software",
        "end of speech -> final transcript: from the arrival of the audio at the segment's end to the final "
        "(live: the latency_s sent to the client; offline: packing wait included)",
        _SECONDS_SLOW,
    ),
    MetricSpec(STREAMS_ACTIVE, UP_DOWN_COUNTER, "{stream}", (), "software", "streams open now"),
    MetricSpec(
        STREAMS_REJECTED,
        COUNTER,
        "{stream}",
        (STREAM_REJECT_REASON,),
        "software",
        "streams refused before a session was created (server: capacity, bad handshake...)",
    ),
    MetricSpec(
        PROCESS_CPU_TIME,
        OBSERVABLE_COUNTER,
        "s",
        (CPU_MODE,),
        "software",
        "CPU time used by this process (cpu.mode = user or system)",
    ),
    MetricSpec(
        PROCESS_CPU_UTILIZATION,
        OBSERVABLE_GAUGE,
        "1",
        (),
        "software",
        "CPU used by this process since the previous observation, as a fraction of all cores",
    ),
    MetricSpec(
        PROCESS_MEMORY_USAGE, OBSERVABLE_UP_DOWN_COUNTER, "By", (), "software", "resident memory (RSS) of this process"
    ),
    # -- input ----------------------------------------------------------------------------------
    MetricSpec(
        INPUT_STREAMS,
        COUNTER,
        "{stream}",
        (AUDIO_SAMPLE_RATE, AUDIO_CHANNELS),
        "input",
        "streams started, by input sample rate and channel count",
    ),
    MetricSpec(
        SEGMENT_DURATION,
        HISTOGRAM,
        "s",
        (VAD_END_REASON,),
        "input",
        "duration of each speech segment the VAD closed",
        _SEGMENT_S,
    ),
    MetricSpec(
        VAD_DECISION_DELAY,
        HISTOGRAM,
        "s",
        (VAD_END_REASON,),
        "input",
        "stream time from a segment's end to the VAD's decision that it was over (hangover)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        INPUT_RMS,
        HISTOGRAM,
        "dB",
        (AUDIO_SCOPE,),
        "input",
        "RMS level below full scale (20 = -20 dBFS; histograms take no negative values) of each speech "
        "segment (the 16 kHz audio the ASR sees) and of each whole stream (as received)",
        _HEADROOM_DB,
    ),
    MetricSpec(
        INPUT_PEAK,
        HISTOGRAM,
        "dB",
        (AUDIO_SCOPE,),
        "input",
        "peak level below full scale (3 = -3 dBFS), per segment and per stream",
        _HEADROOM_DB,
    ),
    MetricSpec(
        INPUT_CLIPPED,
        HISTOGRAM,
        "1",
        (AUDIO_SCOPE,),
        "input",
        "fraction of samples at or above full scale (abs(x) >= 0.999), per segment and per stream",
        _SMALL_FRACTION,
    ),
    MetricSpec(
        STREAM_SPEECH_RATIO,
        HISTOGRAM,
        "1",
        (),
        "input",
        "fraction of a stream's VAD frames classified as speech, recorded when the stream ends",
        _RATIO,
    ),
    MetricSpec(
        VAD_DISCARDED,
        COUNTER,
        "{region}",
        (),
        "input",
        "triggered regions discarded for holding less than vad.min_speech_ms of speech (too-short input)",
    ),
    MetricSpec(
        INPUT_EMPTY,
        COUNTER,
        "{stream}",
        (INPUT_REASON,),
        "input",
        "streams that ended without a speech segment (input.reason = no_audio or no_speech)",
    ),
    MetricSpec(
        INPUT_ERRORS,
        COUNTER,
        "{file}",
        (INPUT_REASON,),
        "input",
        "inputs that could not be used at all (corrupt, empty or unreadable files)",
    ),
    # -- output ---------------------------------------------------------------------------------
    MetricSpec(
        OUTPUT_SEGMENTS,
        COUNTER,
        "{segment}",
        (ASR_EMPTY,),
        "output",
        "final transcripts; asr.empty = true for those with no words (empty-transcript rate = empty / all)",
    ),
    MetricSpec(OUTPUT_WORDS, COUNTER, "{word}", (), "output", "words in final transcripts"),
    MetricSpec(
        OUTPUT_AVG_LOGPROB,
        HISTOGRAM,
        "1",
        (),
        "output",
        "minus the Whisper avg_logprob of each final transcript (0 = certain; histograms take no negative values)",
        _NEG_LOGPROB,
    ),
    MetricSpec(
        OUTPUT_NO_SPEECH_PROB, HISTOGRAM, "1", (), "output", "Whisper no_speech_prob of each final transcript", _RATIO
    ),
    MetricSpec(
        OUTPUT_WORDS_PER_SECOND,
        HISTOGRAM,
        "{word}/s",
        (),
        "output",
        "words per second of segment audio, for each non-empty final transcript",
        _WPS,
    ),
    MetricSpec(
        OUTPUT_HALLUCINATION_DROPS,
        COUNTER,
        "{segment}",
        (ASR_KIND,),
        "output",
        "Whisper segments dropped by the hallucination guard",
    ),
)

METRICS_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}
