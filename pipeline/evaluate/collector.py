"""What an evaluation collects from each stream it runs."""

from __future__ import annotations

from speechpipe.pipeline.evaluate.quality import evaluation as ev
from speechpipe.pipeline.evaluate.quality.word_timing import RawWord
from speechpipe.pipeline.hooks import AsrCompleted, Event, FinalTranscript, StreamEnded, StreamStarted, VadOutput
from speechpipe.stages.asr import Transcript
from speechpipe.stages.features import input_features, output_features
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment


class EvalCollector:
    """Records what the evaluation needs from one stream: segments, discards, ASR runs, finals,
    and the per-segment features of each final (:mod:`speechpipe.stages.features`, computed as the
    live drift monitor's collector computes them: input features of the segment's audio at the
    stream's rate, output features of its final); an observer of the stream's session
    (:mod:`speechpipe.pipeline.hooks`)."""

    def __init__(self) -> None:
        self.segments: list[SpeechSegment] = []
        self.discarded = 0
        self.finals: dict[int, Transcript] = {}
        self.asr_wall_s = 0.0
        self.asr_calls = 0
        self.speech_frames = 0
        self.total_frames = 0
        self.vad_config_id = ""
        self.source_rate = 16000
        self.features: dict[int, dict[str, float]] = {}

    def on_event(self, event: Event) -> None:
        match event:
            case StreamStarted():
                self.vad_config_id = event.vad_config_id
                self.source_rate = event.sample_rate
            case VadOutput(event=SpeechSegment() as seg):
                self.segments.append(seg)
            case VadOutput(event=SpeechDiscarded()):
                self.discarded += 1
            case AsrCompleted(run=run) if run is not None:
                self.asr_wall_s += run.wall_s
                self.asr_calls += len(run.windows)
            case FinalTranscript(segment=seg, transcript=tr):
                self.finals[seg.index] = tr
                inputs = input_features(seg.audio, source_rate=self.source_rate, speech_ratio=seg.speech_ratio)
                self.features[seg.index] = inputs | output_features(tr, seg.duration_s)
            case StreamEnded():
                self.speech_frames = event.speech_frames
                self.total_frames = event.total_frames

    def file_run(self, file_id: str, duration: float, text: str) -> ev.FileRun:
        segs, words, features = [], [], []
        for s in sorted(self.segments, key=lambda s: s.start_sample):
            tr = self.finals.get(s.index)
            if s.index in self.features:
                features.append(self.features[s.index])
            segs.append(
                ev.SegmentInfo(s.index, s.start_s, s.end_s, s.end_reason, s.speech_ratio, tr.text if tr else "")
            )
            if tr is not None:
                words += [RawWord(w.word, w.start, w.end, s.index) for w in tr.words]
        return ev.FileRun(
            file=file_id,
            duration=duration,
            text=text,
            segments=segs,
            words=words,
            discarded=self.discarded,
            speech_frames=self.speech_frames,
            total_frames=self.total_frames,
            asr_wall_s=self.asr_wall_s,
            asr_calls=self.asr_calls,
            hallucination_drops=sum(t.dropped for t in self.finals.values()),
            vad_config_id=self.vad_config_id,
            features=features,
        )
