"""Every metric instrument speechpipe creates: kind, unit, attributes, meaning and buckets, in one
table (documented in docs/telemetry.md, checked against it by a test); the names themselves are
in :mod:`speechpipe.telemetry.names`."""

from __future__ import annotations

from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_kinds import (
    COUNTER,
    HISTOGRAM,
    OBSERVABLE_COUNTER,
    OBSERVABLE_GAUGE,
    OBSERVABLE_UP_DOWN_COUNTER,
    UP_DOWN_COUNTER,
    MetricSpec,
)
from speechpipe.telemetry.review_specs import REVIEW_METRICS

#: attributes carried by every metric point.
BASE_METRIC_ATTRIBUTES = (n.PIPELINE_VARIANT, n.VARIANT_ID, n.DEPLOY_ROLE, n.VAD_CONFIG_ID, n.PIPELINE_MODE)

_SECONDS_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SECONDS_SLOW = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
_SEGMENT_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 25.0, 30.0)
_RATIO = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_ERASURE = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
_SMALL_FRACTION = (0.0, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1)
_HEADROOM_DB = (0.1, 1.0, 3.0, 6.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 70.0, 90.0)
_RTF = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
_NEG_LOGPROB = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0)
_WPS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


_ASR = (n.ASR_KIND, n.ASR_MODEL, n.ASR_DEVICE)

METRICS: tuple[MetricSpec, ...] = (
    # -- software -------------------------------------------------------------------------------
    MetricSpec(
        n.VAD_DURATION,
        HISTOGRAM,
        "s",
        (),
        "software",
        "VAD stage wall time (resampling + frame classification) per chunk of audio fed",
        _SECONDS_FAST,
    ),
    MetricSpec(
        n.VAD_AUDIO,
        COUNTER,
        "s",
        (),
        "software",
        "audio consumed by the VAD, in stream seconds (VAD RTF = sum of vad.duration / this)",
    ),
    MetricSpec(
        n.ASR_DURATION,
        HISTOGRAM,
        "s",
        _ASR,
        "software",
        "ASR stage wall time per job (its Whisper windows and retries; its share of a batched engine call)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.ASR_RTF_METRIC,
        HISTOGRAM,
        "1",
        _ASR,
        "software",
        "real-time factor of one ASR job: its wall time / seconds of speech it transcribed",
        _RTF,
    ),
    MetricSpec(
        n.ASR_PASSES,
        COUNTER,
        "{window}",
        _ASR,
        "software",
        "Whisper encoder passes (windows, retries included) per job; a job sharing a call with other streams' "
        "counts its share of the call's",
    ),
    MetricSpec(
        n.ASR_QUEUE_WAIT,
        HISTOGRAM,
        "s",
        (n.ASR_KIND,),
        "software",
        "time an ASR job waited for the engine before it started",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.ASR_QUEUE_DEPTH,
        UP_DOWN_COUNTER,
        "{job}",
        (n.ASR_KIND,),
        "software",
        "ASR jobs queued and not started yet (the AsrQueued/AsrDequeued events of the scheduler's jobs)",
    ),
    MetricSpec(
        n.FINAL_LATENCY,
        HISTOGRAM,
        "s",
        (),
        "software",
        "end of speech -> final transcript: from the arrival of the audio at the segment's end to the final "
        "(live: the latency_s sent to the client; offline: packing wait included)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.PARTIAL_FIRST_LATENCY,
        HISTOGRAM,
        "s",
        (),
        "software",
        "speech_start -> the segment's first partial shown (live streams that asked for partials; segments with one)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.PARTIAL_ERASURE,
        HISTOGRAM,
        "1",
        (),
        "software",
        "per segment with partials: characters its updates and final took back from the text shown, over "
        "the final's characters (0: every update only appended)",
        _ERASURE,
    ),
    MetricSpec(
        n.PARTIAL_ERASED,
        COUNTER,
        "{char}",
        (n.CAPTION_TEXT,),
        "software",
        "characters taken back from the text shown (caption.text=shown) or from the committed words "
        "(stable: 0 unless a final broke a commit); over partial.final_chars: the normalized erasure",
    ),
    MetricSpec(
        n.PARTIAL_FINAL_CHARS,
        COUNTER,
        "{char}",
        (),
        "software",
        "characters of the finals of live streams that asked for partials (the erasure's denominator)",
    ),
    MetricSpec(
        n.PARTIAL_COMMITS_BROKEN,
        COUNTER,
        "{segment}",
        (),
        "software",
        "finals that did not begin with the words their partials had committed",
    ),
    MetricSpec(
        n.PARTIAL_REDECODED,
        COUNTER,
        "{segment}",
        (),
        "software",
        "finals decoded a second time, with their segment's committed words as Whisper's prefix (the first "
        "decode's words were not those)",
    ),
    MetricSpec(
        n.FINALS_LOST,
        COUNTER,
        "{segment}",
        (n.SEGMENT_LOST,),
        "software",
        "segments that will never get a final transcript, by reason (drain_timeout, asr_failed, disconnected, abandoned)",
    ),
    MetricSpec(
        n.OBSERVER_ERRORS,
        OBSERVABLE_COUNTER,
        "{error}",
        (n.OBSERVER,),
        "software",
        "errors raised by a stream's observers (telemetry, deployment evidence, drift...), by observer; "
        "the stream and the other observers go on",
    ),
    MetricSpec(
        n.OBSERVER_DROPPED,
        OBSERVABLE_COUNTER,
        "{event}",
        (n.OBSERVER,),
        "software",
        "events an observer missed because its stream's observer queue was full (it was too slow), by observer",
    ),
    # -- deployment (pipeline.variant / deploy.role: the variant concerned) -----------------------
    MetricSpec(
        n.DEPLOY_CHANGES,
        COUNTER,
        "{change}",
        (n.DEPLOY_ACTION,),
        "software",
        "changes of the deployment: canary steps, rollbacks, promotions, switches, admin actions",
    ),
    MetricSpec(
        n.DEPLOY_ROLLBACKS,
        COUNTER,
        "{rollback}",
        (n.DEPLOY_GATE,),
        "software",
        "automatic rollbacks of a canary, by the gate that failed (deploy.gate = admin for manual ones)",
    ),
    MetricSpec(
        n.DEPLOY_WEIGHT,
        UP_DOWN_COUNTER,
        "1",
        (),
        "software",
        "share of new streams routed to each variant now (kept as the sum of its changes)",
    ),
    MetricSpec(
        n.SHADOW_SEGMENTS,
        COUNTER,
        "{segment}",
        (n.SHADOW_OUTCOME,),
        "software",
        "segments given to a shadow variant: done, shed under load (never run) or failed",
    ),
    MetricSpec(
        n.SHADOW_AGREEMENT,
        HISTOGRAM,
        "1",
        (n.SHADOW_EMPTY_MISMATCH,),
        "output",
        "agreement of the shadow with the primary per segment: 1 - WER(shadow vs primary), floored at 0",
        _RATIO,
    ),
    MetricSpec(
        n.SHADOW_LATENCY,
        HISTOGRAM,
        "s",
        (),
        "software",
        "segment closed -> shadow transcript ready (it waits below the clients' work)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.FEEDBACK_WORDS,
        COUNTER,
        "{word}",
        (),
        "output",
        "reference words of human feedback scored against each variant (WER = feedback.errors / this)",
    ),
    MetricSpec(
        n.FEEDBACK_ERRORS,
        COUNTER,
        "{word}",
        (),
        "output",
        "word errors (substitutions + deletions + insertions) of each variant against human feedback",
    ),
    MetricSpec(
        n.FEEDBACK_COUNTED,
        COUNTER,
        "{feedback}",
        (),
        "output",
        "feedback that counts (feedback, review or admin scope; reviews too) on sessions each variant served: "
        "it moves gates, drift and review WER",
    ),
    MetricSpec(
        n.FEEDBACK_CLIENT,
        COUNTER,
        "{feedback}",
        (),
        "output",
        "client feedback (a principal with the stream scope only) on sessions each variant served: kept apart, "
        "it moves nothing",
    ),
    MetricSpec(
        n.DRIFT_SCORE,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT, n.DRIFT_STAGE, n.DRIFT_FEATURE),
        "input",
        "drift of a feature's recent window from the baseline (normed Wasserstein, rate difference or "
        "Jensen-Shannon distance), per variant",
    ),
    MetricSpec(
        n.DRIFT_ALERT,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT, n.DRIFT_STAGE, n.DRIFT_FEATURE),
        "input",
        "1 while the feature's drift score is above the threshold learned from the baseline, else 0",
    ),
    MetricSpec(
        n.QUALITY_ESTIMATED_WER,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT,),
        "output",
        "the variant's word error rate over the drift window, estimated without references from its "
        "segments' confidences and lengths (calibrated on the baseline's references)",
    ),
    MetricSpec(
        n.QUALITY_ESTIMATED_WER_LOW,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT,),
        "output",
        "the low end of the estimated WER's 90 % interval (sampling and model error)",
    ),
    MetricSpec(
        n.QUALITY_ESTIMATED_WER_HIGH,
        OBSERVABLE_GAUGE,
        "1",
        (n.DRIFT_VARIANT,),
        "output",
        "the high end of the estimated WER's 90 % interval (sampling and model error)",
    ),
    MetricSpec(n.STREAMS_ACTIVE, UP_DOWN_COUNTER, "{stream}", (), "software", "streams open now"),
    MetricSpec(
        n.STREAMS_REJECTED,
        COUNTER,
        "{stream}",
        (n.STREAM_REJECT_REASON,),
        "software",
        "streams refused before a session was created (server: capacity, bad handshake...)",
    ),
    MetricSpec(
        n.PROCESS_CPU_TIME,
        OBSERVABLE_COUNTER,
        "s",
        (n.CPU_MODE,),
        "software",
        "CPU time used by this process (cpu.mode = user or system)",
    ),
    MetricSpec(
        n.PROCESS_CPU_UTILIZATION,
        OBSERVABLE_GAUGE,
        "1",
        (),
        "software",
        "CPU used by this process since the previous observation, as a fraction of all cores",
    ),
    MetricSpec(
        n.PROCESS_MEMORY_USAGE,
        OBSERVABLE_UP_DOWN_COUNTER,
        "By",
        (),
        "software",
        "resident memory (RSS) of this process",
    ),
    # -- input ----------------------------------------------------------------------------------
    MetricSpec(
        n.INPUT_STREAMS,
        COUNTER,
        "{stream}",
        (n.AUDIO_SAMPLE_RATE, n.AUDIO_CHANNELS),
        "input",
        "streams started, by input sample rate and channel count",
    ),
    MetricSpec(
        n.SEGMENT_DURATION,
        HISTOGRAM,
        "s",
        (n.VAD_END_REASON,),
        "input",
        "duration of each speech segment the VAD closed",
        _SEGMENT_S,
    ),
    MetricSpec(
        n.VAD_DECISION_DELAY,
        HISTOGRAM,
        "s",
        (n.VAD_END_REASON,),
        "input",
        "stream time from a segment's end to the VAD's decision that it was over (hangover)",
        _SECONDS_SLOW,
    ),
    MetricSpec(
        n.INPUT_RMS,
        HISTOGRAM,
        "dB",
        (n.AUDIO_SCOPE,),
        "input",
        "RMS level below full scale (20 = -20 dBFS; histograms take no negative values) of each speech "
        "segment (the 16 kHz audio the ASR sees) and of each whole stream (as received)",
        _HEADROOM_DB,
    ),
    MetricSpec(
        n.INPUT_PEAK,
        HISTOGRAM,
        "dB",
        (n.AUDIO_SCOPE,),
        "input",
        "peak level below full scale (3 = -3 dBFS), per segment and per stream",
        _HEADROOM_DB,
    ),
    MetricSpec(
        n.INPUT_CLIPPED,
        HISTOGRAM,
        "1",
        (n.AUDIO_SCOPE,),
        "input",
        "fraction of samples at or above full scale (abs(x) >= 0.999), per segment and per stream",
        _SMALL_FRACTION,
    ),
    MetricSpec(
        n.STREAM_SPEECH_RATIO,
        HISTOGRAM,
        "1",
        (),
        "input",
        "fraction of a stream's VAD frames classified as speech, recorded when the stream ends",
        _RATIO,
    ),
    MetricSpec(
        n.VAD_DISCARDED,
        COUNTER,
        "{region}",
        (),
        "input",
        "triggered regions discarded for holding less than vad.min_speech_ms of speech (too-short input)",
    ),
    MetricSpec(
        n.INPUT_EMPTY,
        COUNTER,
        "{stream}",
        (n.INPUT_REASON,),
        "input",
        "streams that ended without a speech segment (input.reason = no_audio or no_speech)",
    ),
    MetricSpec(
        n.INPUT_ERRORS,
        COUNTER,
        "{file}",
        (n.INPUT_REASON,),
        "input",
        "inputs that could not be used at all (corrupt, empty or unreadable files)",
    ),
    MetricSpec(
        n.INPUT_SANITIZED,
        COUNTER,
        "{sample}",
        (),
        "input",
        "input samples that were not finite (NaN, Inf) and were replaced before the stages",
    ),
    # -- output ---------------------------------------------------------------------------------
    MetricSpec(
        n.OUTPUT_SEGMENTS,
        COUNTER,
        "{segment}",
        (n.ASR_EMPTY,),
        "output",
        "final transcripts; asr.empty = true for those with no words (empty-transcript rate = empty / all)",
    ),
    MetricSpec(n.OUTPUT_WORDS, COUNTER, "{word}", (), "output", "words in final transcripts"),
    MetricSpec(
        n.OUTPUT_AVG_LOGPROB,
        HISTOGRAM,
        "1",
        (),
        "output",
        "minus the Whisper avg_logprob of each final transcript (0 = certain; histograms take no negative values)",
        _NEG_LOGPROB,
    ),
    MetricSpec(
        n.OUTPUT_NO_SPEECH_PROB, HISTOGRAM, "1", (), "output", "Whisper no_speech_prob of each final transcript", _RATIO
    ),
    MetricSpec(
        n.OUTPUT_WORDS_PER_SECOND,
        HISTOGRAM,
        "{word}/s",
        (),
        "output",
        "words per second of segment audio, for each non-empty final transcript",
        _WPS,
    ),
    MetricSpec(
        n.OUTPUT_HALLUCINATION_DROPS,
        COUNTER,
        "{segment}",
        (n.ASR_KIND,),
        "output",
        "Whisper segments dropped by the hallucination guard",
    ),
)

METRICS += REVIEW_METRICS

METRICS_BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}
