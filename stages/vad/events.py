"""What the VAD segmenter reports: a segment opened, closed (with its audio) or discarded.

Positions are samples of the 16 kHz stream (end exclusive), so times are exact whatever the
chunking of the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from speechpipe.stages.pcm import SAMPLE_RATE

END_SILENCE = "silence"
END_MAX_LENGTH = "max_length"
END_OF_STREAM = "end_of_stream"


@dataclass
class SpeechStarted:
    """The VAD triggered: speech begins at ``start_sample`` (pre-roll included)."""

    index: int
    start_sample: int
    config_id: str

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE


@dataclass
class SpeechSegment:
    """A closed speech segment with its audio.

    ``start_sample``/``end_sample`` are positions in the 16 kHz stream (end exclusive).
    ``speech_ratio`` is the fraction of frames inside the segment classified as speech.
    """

    index: int
    start_sample: int
    end_sample: int
    audio: np.ndarray = field(repr=False)
    end_reason: str
    speech_ratio: float
    config_id: str
    #: sample at which the VAD decided the segment was over (end of hangover, or the split point).
    decided_sample: int = 0

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE


@dataclass
class SpeechDiscarded:
    """A triggered region that closed with less speech than ``min_speech_ms``."""

    index: int
    start_sample: int
    end_sample: int
    speech_ms: float
    config_id: str


VadEvent = SpeechStarted | SpeechSegment | SpeechDiscarded
