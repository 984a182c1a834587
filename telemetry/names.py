"""Every span name, attribute key and metric name speechpipe emits, in one place.

Nothing else in the code base spells these strings: instrumentation, tests, the summary writer
and the docs table (``docs/telemetry.md``, checked against :data:`METRICS` by a test) all use the
constants here. Renaming one is a breaking change for dashboards and saved Jaeger searches.
"""

from __future__ import annotations

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
EVENT_FINAL_LOST = "final.lost"
"""A segment that will never get its final (the server stopped or broke first, or the client left)."""
EVENT_DEPLOY_CHANGE = "deploy.change"
"""The deployment changed (a step, a rollback, an admin action): on the ``deploy`` span of the change."""
EVENT_DRIFT_ALERT = "drift.alert"
"""A feature of a variant drifted past its threshold (or came back): on a ``drift`` span."""
SPAN_DRIFT = "drift"
SPAN_DEPLOY = "deploy"
"""One change of the deployment (root span; its event carries the figures)."""

# -- attribute keys -------------------------------------------------------------------------------

# on every span and metric
PIPELINE_VARIANT = "pipeline.variant"
VARIANT_ID = "pipeline.variant_id"  # hash of the variant's effective [vad] and [asr] settings
DEPLOY_ROLE = "deploy.role"  # primary | candidate | shadow
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
AUDIO_SANITIZED_SAMPLES = "audio.sanitized_samples"

# vad.segment (and utterance)
SEGMENT_INDEX = "segment.index"
SEGMENT_START_S = "segment.start_s"
SEGMENT_END_S = "segment.end_s"
SEGMENT_DURATION_S = "segment.duration_s"
SEGMENT_ABANDONED = "segment.abandoned"
CAPTION_TEXT = "caption.text"  # shown | stable: the whole line, or the committed words
SEGMENT_LOST = "segment.lost"  # why the segment got no final
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
ASR_SHARE = "asr.share"
ASR_CROSSED = "asr.crossed"
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
DEPLOY_ACTION = (
    "deploy.action"  # start | advance | rollback | promote | revert | switch | set_weight | pause | resume | golden
)
DEPLOY_GATE = "deploy.gate"
SHADOW_OUTCOME = "shadow.outcome"  # done | shed | failed
SHADOW_EMPTY_MISMATCH = "shadow.empty_mismatch"
AUTOMATION_LEVEL = "automation.level"  # human | shadow | assist | partial | full, on every stream span
REVIEW_REASON = "review.reason"  # level | low_confidence | empty | audit | vad_audit
OBSERVER = "observer"  # an observer's name: its `name` attribute or its class name
# drift gauges (Prometheus: speechpipe_drift_score{variant,stage,feature})
DRIFT_VARIANT = "variant"
DRIFT_STAGE = "stage"
DRIFT_FEATURE = "feature"

# -- metrics --------------------------------------------------------------------------------------

# software
VAD_DURATION = "speechpipe.vad.duration"
VAD_AUDIO = "speechpipe.vad.audio"
ASR_DURATION = "speechpipe.asr.duration"
ASR_RTF_METRIC = "speechpipe.asr.rtf"
ASR_PASSES = "speechpipe.asr.passes"
ASR_QUEUE_WAIT = "speechpipe.asr.queue_wait"
ASR_QUEUE_DEPTH = "speechpipe.asr.queue_depth"
FINAL_LATENCY = "speechpipe.final.latency"
# live captions (issue 27): what a segment's partials cost their reader
PARTIAL_FIRST_LATENCY = "speechpipe.partial.first_latency"
PARTIAL_ERASURE = "speechpipe.partial.erasure"
PARTIAL_ERASED = "speechpipe.partial.erased"
PARTIAL_FINAL_CHARS = "speechpipe.partial.final_chars"
PARTIAL_COMMITS_BROKEN = "speechpipe.partial.commits_broken"
PARTIAL_REDECODED = "speechpipe.partial.redecoded"
STREAMS_ACTIVE = "speechpipe.streams.active"
STREAMS_REJECTED = "speechpipe.streams.rejected"
FINALS_LOST = "speechpipe.finals.lost"
OBSERVER_ERRORS = "speechpipe.observer.errors"
OBSERVER_DROPPED = "speechpipe.observer.dropped"
# deployment
DEPLOY_CHANGES = "speechpipe.deploy.changes"
DEPLOY_ROLLBACKS = "speechpipe.deploy.rollbacks"
DEPLOY_WEIGHT = "speechpipe.deploy.weight"
SHADOW_SEGMENTS = "speechpipe.shadow.segments"
SHADOW_AGREEMENT = "speechpipe.shadow.agreement"
SHADOW_LATENCY = "speechpipe.shadow.latency"
FEEDBACK_WORDS = "speechpipe.feedback.words"
FEEDBACK_ERRORS = "speechpipe.feedback.errors"
FEEDBACK_COUNTED = "speechpipe.feedback.counted"
FEEDBACK_CLIENT = "speechpipe.feedback.client"
DRIFT_SCORE = "speechpipe.drift.score"
DRIFT_ALERT = "speechpipe.drift.alert"
# the WER estimated without references (Prometheus: speechpipe_quality_estimated_wer{variant})
QUALITY_ESTIMATED_WER = "speechpipe.quality.estimated_wer"
QUALITY_ESTIMATED_WER_LOW = "speechpipe.quality.estimated_wer_low"
QUALITY_ESTIMATED_WER_HIGH = "speechpipe.quality.estimated_wer_high"
# human review (Prometheus: speechpipe_review_queue, speechpipe_review_ai_wer{variant}...)
REVIEW_QUEUE = "speechpipe.review.queue"
REVIEW_OLDEST_AGE = "speechpipe.review.oldest_age"
REVIEW_REVIEWED = "speechpipe.review.reviewed"
REVIEW_AI_WER = "speechpipe.review.ai_wer"
REVIEW_AI_WORDS = "speechpipe.review.ai_words"
REVIEW_VAD_CUTS = "speechpipe.review.vad_cuts"
REVIEW_VAD_MISSES = "speechpipe.review.vad_misses"
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
INPUT_SANITIZED = "speechpipe.input.sanitized"
# output
OUTPUT_SEGMENTS = "speechpipe.output.segments"
OUTPUT_WORDS = "speechpipe.output.words"
OUTPUT_AVG_LOGPROB = "speechpipe.output.neg_avg_logprob"
OUTPUT_NO_SPEECH_PROB = "speechpipe.output.no_speech_prob"
OUTPUT_WORDS_PER_SECOND = "speechpipe.output.words_per_second"
OUTPUT_HALLUCINATION_DROPS = "speechpipe.output.hallucination_drops"
