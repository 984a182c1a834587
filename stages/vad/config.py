"""Settings of the VAD stage and their stable id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class VadConfig:
    """Parameters of the VAD stage. Every field that changes segments feeds :attr:`config_id`.

    Attributes:
        backend: ``"silero"`` (default) or ``"webrtc"``. Silero VAD ends segments in pauses full of
            room noise, where webrtcvad hears the noise as speech: on streams of corpus
            utterances with noisy pauses (benchmarks/vad_noise.py) Silero ended 100 % of the
            pauses of 0.8 s or more, webrtcvad 30 %; frame F1 on the labelled clips 0.900 against
            0.816, for 0.004 s of CPU per second of audio against 0.002.
        aggressiveness: webrtcvad mode 0 (least) to 3 (most aggressive filtering of non-speech).
        frame_ms: classification frame, 10, 20 or 30 ms (webrtc); Silero always uses 32 ms.
        threshold: Silero speech probability above which a frame is speech.
        pre_roll_ms: audio kept before the trigger point and prepended to a segment.
        start_trigger_ms: window over which speech frames are counted to open a segment.
        start_ratio: fraction of speech frames in that window that opens a segment.
        hangover_ms: continuous non-speech that closes a segment (end-of-speech silence).
        post_roll_ms: trailing audio kept after the last speech frame (at most ``hangover_ms``).
        min_speech_ms: segments with less speech than this are discarded.
        max_segment_s: longest segment; a longer one is split at the quietest frame near the limit.
        split_search_s: how far back from the limit the quietest frame is searched for.
    """

    backend: str = "silero"
    aggressiveness: int = 2
    frame_ms: int = 30
    threshold: float = 0.5
    pre_roll_ms: int = 500
    start_trigger_ms: int = 90
    start_ratio: float = 0.6
    hangover_ms: int = 500
    post_roll_ms: int = 200
    min_speech_ms: int = 150
    max_segment_s: float = 29.0
    split_search_s: float = 3.0

    def __post_init__(self) -> None:
        if self.backend not in ("webrtc", "silero"):
            raise ValueError(f"vad.backend must be 'webrtc' or 'silero', not {self.backend!r}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad.aggressiveness must be 0, 1, 2 or 3, not {self.aggressiveness!r}")
        if self.backend == "webrtc" and self.frame_ms not in (10, 20, 30):
            raise ValueError(f"vad.frame_ms must be 10, 20 or 30 for webrtc, not {self.frame_ms!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("vad.threshold must lie between 0 and 1")
        if not 0.0 < self.start_ratio <= 1.0:
            raise ValueError("vad.start_ratio must lie in (0, 1]")
        for name in ("pre_roll_ms", "start_trigger_ms", "hangover_ms", "post_roll_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"vad.{name} must not be negative")
        if self.max_segment_s < 1.0:
            raise ValueError("vad.max_segment_s must be at least 1 s")
        if not 0.0 < self.split_search_s < self.max_segment_s:
            raise ValueError("vad.split_search_s must be positive and below max_segment_s")

    @property
    def config_id(self) -> str:
        """Stable short id of this configuration: the version tag carried by every segment."""
        canonical = json.dumps(self.effective(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def effective(self) -> dict:
        """The fields that actually influence this backend's output (others are left out of the id)."""
        d = asdict(self)
        if self.backend == "webrtc":
            d.pop("threshold")
        else:
            d.pop("aggressiveness")
            d.pop("frame_ms")
        return d
