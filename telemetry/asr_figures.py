"""What one ASR job cost and produced, computed once from the job, its transcripts and its run:
the attributes of its ``asr.transcribe`` span and the values of its metric points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.stages.asr import AsrRun, Transcript
from speechpipe.telemetry import names as n


def kind_label(job: AsrJob) -> str:
    """``asr.kind`` of a job: ``final``, or ``partial`` for the open segment's work (partials and
    speculative jobs that did not become a final)."""
    return "final" if job.kind is JobKind.FINAL else "partial"


@dataclass
class AsrFigures:
    """One ASR job, in figures."""

    kind: str
    model: str
    device: str
    compute_type: str
    started_ns: int
    ended_ns: int
    compute_s: float
    queue_wait_s: float
    speech_s: float
    window_s: float
    windows: int
    retries: int
    #: the job's share of the call, of its encoder passes (windows), and pieces of the call
    #: decoded again alone because a word crossed between streams
    share: float
    passes: float
    crossed: int
    dropped: int
    words: int
    avg_logprob: float
    no_speech_prob: float

    @property
    def rtf(self) -> float:
        return self.compute_s / self.speech_s if self.speech_s else 0.0


def asr_figures(
    job: AsrJob, transcripts: list[Transcript], run: AsrRun | None, default_model: str, now_ns: int
) -> AsrFigures:
    """The figures of ``job``; without a run (nothing timed it) its times are ``now_ns``."""
    if run is not None:
        started, ended = run.started_ns, max(run.ended_ns, run.started_ns)
        model, device, compute = run.model or default_model, run.device, run.compute_type
        windows, queue_wait, share = list(run.windows), run.queue_wait_s, run.share
    else:
        started = ended = now_ns
        model, device, compute, windows, queue_wait, share = default_model, "", "", [], 0.0, 1.0
    # The job's own compute: its windows' wall times (shares of the engine call when several
    # jobs were decoded in one batch; then the span covers the whole call that ran it), its share
    # of them where several streams' jobs shared the call's windows.
    compute_s = share * (sum(w.wall_s for w in windows) if windows else (ended - started) / 1e9)
    first = [w for w in windows if w.attempt == 0]
    speech_s = sum(p.duration_s for p in job.pieces)
    weights = [max(p.duration_s, 1e-3) for p in job.pieces] or [1.0]
    wsum = sum(weights)
    return AsrFigures(
        kind=kind_label(job),
        model=model,
        device=device,
        compute_type=compute,
        started_ns=started,
        ended_ns=ended,
        compute_s=compute_s,
        queue_wait_s=queue_wait,
        speech_s=speech_s,
        window_s=sum(w.audio_s for w in first) if first else speech_s,
        windows=len(windows) or 1,
        retries=sum(1 for w in windows if w.attempt > 0),
        share=share,
        passes=share * (len(windows) or 1),
        crossed=sum(w.crossed for w in windows),
        dropped=sum(w.dropped for w in windows) if windows else sum(t.dropped for t in transcripts),
        words=sum(len(t.words) for t in transcripts),
        avg_logprob=sum(w * t.avg_logprob for w, t in zip(weights, transcripts)) / wsum,
        no_speech_prob=sum(w * t.no_speech_prob for w, t in zip(weights, transcripts)) / wsum,
    )


def span_attributes(job: AsrJob, transcripts: list[Transcript], f: AsrFigures, trace_text: bool) -> dict[str, Any]:
    """The attributes of the job's ``asr.transcribe`` span (the stream's own come on top)."""
    attrs: dict[str, Any] = {
        n.ASR_MODEL: f.model,
        n.ASR_DEVICE: f.device,
        n.ASR_COMPUTE_TYPE: f.compute_type,
        n.ASR_KIND: f.kind,
        n.ASR_JOB_ID: job.job_id,
        n.AUDIO_DURATION_S: round(f.speech_s, 3),
        n.ASR_WINDOW_S: round(f.window_s, 3),
        n.ASR_WINDOWS: f.windows,
        n.ASR_RETRIES: f.retries,
        n.ASR_SHARE: round(f.share, 4),
        n.ASR_CROSSED: f.crossed,
        n.ASR_COMPUTE_S: round(f.compute_s, 4),
        n.ASR_QUEUE_WAIT_S: round(f.queue_wait_s, 4),
        n.ASR_RTF: round(f.rtf, 4),
        n.ASR_AVG_LOGPROB: round(f.avg_logprob, 4),
        n.ASR_NO_SPEECH_PROB: round(f.no_speech_prob, 4),
        n.ASR_WORDS: f.words,
        n.ASR_DROPPED: f.dropped,
        n.ASR_SEGMENTS: len(job.pieces),
        n.ASR_SEGMENT_INDICES: [p.index for p in job.pieces],
    }
    config_ids = sorted({s.config_id for s in job.segments})
    if config_ids:
        attrs[n.VAD_CONFIG_ID] = config_ids[0] if len(config_ids) == 1 else ",".join(config_ids)
    if trace_text:
        attrs[n.ASR_TEXT] = " ".join(t.text for t in transcripts if t.text)
    return attrs


def outcome_attributes(transcript: Transcript, trace_text: bool) -> dict[str, Any]:
    """What a segment's transcript came to, set on its ``vad.segment`` span."""
    outcome: dict[str, Any] = {
        n.ASR_WORDS: len(transcript.words),
        n.ASR_EMPTY: not transcript.text,
        n.ASR_AVG_LOGPROB: round(transcript.avg_logprob, 4),
        n.ASR_NO_SPEECH_PROB: round(transcript.no_speech_prob, 4),
        n.ASR_DROPPED: transcript.dropped,
    }
    if trace_text:
        outcome[n.ASR_TEXT] = transcript.text
    return outcome
