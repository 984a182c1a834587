"""The VAD stage: frame classifiers (webrtcvad, Silero) under one streaming segmenter.

The public names are re-exported here; modules of the stage import each other directly.
"""

from speechpipe.stages.vad.classifiers import FrameClassifier, WebRtcClassifier, make_classifier
from speechpipe.stages.vad.config import VadConfig
from speechpipe.stages.vad.events import (
    END_MAX_LENGTH,
    END_OF_STREAM,
    END_SILENCE,
    SpeechDiscarded,
    SpeechSegment,
    SpeechStarted,
    VadEvent,
)
from speechpipe.stages.vad.segmenter import VadSegmenter

__all__ = [
    "END_MAX_LENGTH",
    "END_OF_STREAM",
    "END_SILENCE",
    "FrameClassifier",
    "SpeechDiscarded",
    "SpeechSegment",
    "SpeechStarted",
    "VadConfig",
    "VadEvent",
    "VadSegmenter",
    "WebRtcClassifier",
    "make_classifier",
]
