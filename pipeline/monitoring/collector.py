"""An observer that turns a stream's events into per-segment features (the same offline, live and
in eval): input features when the VAD closes a segment, output features when its final comes."""

from __future__ import annotations

from collections.abc import Callable

from speechpipe.pipeline.hooks import Event, FinalTranscript, StreamStarted, VadOutput
from speechpipe.stages.features import input_features, output_features
from speechpipe.stages.vad import SpeechSegment

SegmentFeatures = dict[str, float]


class FeatureCollector:
    """Calls ``on_segment(stream_id, index, features)`` once per segment: first with its input
    features (``outputs`` False) or, with ``outputs``, once its final is in, with both."""

    def __init__(self, on_segment: Callable[[str, int, SegmentFeatures], None], *, outputs: bool = True) -> None:
        self.on_segment = on_segment
        self.outputs = outputs
        self._rate: dict[str, int] = {}
        self._inputs: dict[tuple[str, int], SegmentFeatures] = {}

    def _input(self, stream_id: str, seg: SpeechSegment) -> SegmentFeatures:
        rate = self._rate.get(stream_id, 16000)
        return input_features(seg.audio, source_rate=rate, speech_ratio=seg.speech_ratio)

    def on_event(self, event: Event) -> None:
        if isinstance(event, StreamStarted):
            self._rate[event.stream_id] = event.sample_rate
        elif isinstance(event, VadOutput) and isinstance(event.event, SpeechSegment):
            seg = event.event
            feats = self._input(event.stream_id, seg)
            if self.outputs:
                self._inputs[(event.stream_id, seg.index)] = feats
            else:
                self.on_segment(event.stream_id, seg.index, feats)
        elif isinstance(event, FinalTranscript) and self.outputs:
            seg = event.segment
            feats = self._inputs.pop((event.stream_id, seg.index), None)
            if feats is None:
                feats = self._input(event.stream_id, seg)
            self.on_segment(event.stream_id, seg.index, feats | output_features(event.transcript, seg.duration_s))
