"""Frame classifiers: is this frame of 16 kHz audio speech? webrtcvad here, Silero in
:mod:`speechpipe.stages.vad.silero`; :func:`make_classifier` builds the one a config names."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad.config import VadConfig


class FrameClassifier(Protocol):
    """Decides, frame by frame, whether a frame of 16 kHz float32 audio is speech."""

    frame_samples: int

    def is_speech(self, frame: np.ndarray) -> bool: ...

    def classify(self, frames: np.ndarray) -> list[bool]:
        """:meth:`is_speech` of each row of ``frames`` (shape ``(n, frame_samples)``), in order."""
        ...

    def reset(self) -> None: ...


class WebRtcClassifier:
    """webrtcvad frame classifier (GMM-based, very cheap)."""

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30) -> None:
        import webrtcvad

        self._mode = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000

    def is_speech(self, frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return self._vad.is_speech(pcm, SAMPLE_RATE)

    def classify(self, frames: np.ndarray) -> list[bool]:
        return [self.is_speech(f) for f in frames]

    def reset(self) -> None:
        # webrtcvad keeps adaptive noise estimates; a fresh stream gets a fresh detector.
        import webrtcvad

        self._vad = webrtcvad.Vad(self._mode)


def make_classifier(config: VadConfig) -> FrameClassifier:
    """Build the frame classifier that ``config.backend`` names."""
    if config.backend == "silero":
        from speechpipe.stages.vad.silero import SileroClassifier

        return SileroClassifier(threshold=config.threshold)
    return WebRtcClassifier(config.aggressiveness, config.frame_ms)
