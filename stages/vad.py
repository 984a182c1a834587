"""Streaming voice-activity segmentation.

A :class:`VadSegmenter` takes 16 kHz mono float32 audio in chunks of any size and emits
:class:`SpeechStarted`, :class:`SpeechSegment` and :class:`SpeechDiscarded` events whose times are
sample-exact positions in the stream. Frame classification is delegated to a
:class:`FrameClassifier` (webrtcvad here, Silero in :mod:`speechpipe.stages.silero`), so every
backend shares the same state machine: pre-roll, start trigger, hangover, minimum speech length
and maximum segment length.

Frames are aligned to the start of the stream, so feeding 10 ms or 1 s chunks yields exactly the
same segments.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000

END_SILENCE = "silence"
END_MAX_LENGTH = "max_length"
END_OF_STREAM = "end_of_stream"


@dataclass(frozen=True)
class VadConfig:
    """Parameters of the VAD stage. Every field that changes segments feeds :attr:`config_id`.

    Attributes:
        backend: ``"webrtc"`` or ``"silero"``.
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

    backend: str = "webrtc"
    aggressiveness: int = 2
    frame_ms: int = 30
    threshold: float = 0.5
    pre_roll_ms: int = 300
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


class FrameClassifier(Protocol):
    """Decides, frame by frame, whether a frame of 16 kHz float32 audio is speech."""

    frame_samples: int

    def is_speech(self, frame: np.ndarray) -> bool: ...

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

    def reset(self) -> None:
        # webrtcvad keeps adaptive noise estimates; a fresh stream gets a fresh detector.
        import webrtcvad

        self._vad = webrtcvad.Vad(self._mode)


def make_classifier(config: VadConfig) -> FrameClassifier:
    """Build the frame classifier that ``config.backend`` names."""
    if config.backend == "silero":
        from .silero import SileroClassifier

        return SileroClassifier(threshold=config.threshold)
    return WebRtcClassifier(config.aggressiveness, config.frame_ms)


class VadSegmenter:
    """Streaming segmenter: ``feed()`` chunks, then ``flush()`` at end of stream.

    Pure and synchronous; one instance per stream.
    """

    def __init__(self, config: VadConfig | None = None, classifier: FrameClassifier | None = None) -> None:
        self.config = config or VadConfig()
        self.config_id = self.config.config_id
        self._clf = classifier or make_classifier(self.config)
        self.frame_samples = self._clf.frame_samples
        fs = self.frame_samples
        ms = lambda v: max(0, round(v * SAMPLE_RATE / 1000))
        self._pre_roll = ms(self.config.pre_roll_ms)
        self._trigger_frames = max(1, -(-ms(self.config.start_trigger_ms) // fs))
        self._trigger_need = max(1, int(np.ceil(self.config.start_ratio * self._trigger_frames)))
        self._hangover_frames = max(1, -(-ms(self.config.hangover_ms) // fs))
        self._post_roll = min(ms(self.config.post_roll_ms), self._hangover_frames * fs)
        self._min_speech_frames = -(-ms(self.config.min_speech_ms) // fs)
        self._max_len = int(self.config.max_segment_s * SAMPLE_RATE)
        self._search = int(self.config.split_search_s * SAMPLE_RATE)

        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet forming a whole frame
        self._pos = 0  # stream sample index of the first pending sample
        # Audio history kept for pre-roll while idle, and the open segment's audio while triggered.
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self._window: deque[bool] = deque(maxlen=self._trigger_frames)
        self._triggered = False
        self._seg_start = 0
        self._last_speech_end = 0  # end sample of the last speech frame in the open segment
        self._silence_run = 0
        self._flags: list[bool] = []  # per-frame speech flags of the open segment
        self._energy: list[float] = []  # per-frame mean square of the open segment
        self._frames_start = 0  # stream sample of the first frame in _flags
        self._min_start = 0  # a new segment may not start before the previous one ended
        self._index = 0
        self.samples_seen = 0
        self.speech_frames = 0
        self.total_frames = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def triggered(self) -> bool:
        """True while a segment is open."""
        return self._triggered

    def open_segment(self) -> tuple[int, int, np.ndarray] | None:
        """Index, start sample and audio of the open segment so far (for partial transcripts)."""
        if not self._triggered:
            return None
        off = self._seg_start - self._buf_start
        return self._index, self._seg_start, self._buf[off:].copy()

    @property
    def pausing(self) -> bool:
        """True while a segment is open but its latest frames are not speech (the hangover runs)."""
        return self._triggered and self._silence_run > 0

    def closing_segment(self) -> tuple[int, int, np.ndarray] | None:
        """The open segment as it will close if no more speech comes, or None.

        While the hangover runs (speech paused, segment still open) the end the segment will get is
        already known: the last speech frame plus post-roll. Once that much audio has arrived this
        returns the segment's index, start sample and audio up to that end, sample for sample what
        the :class:`SpeechSegment` will hold if the silence lasts. A live driver can transcribe it
        early and reuse the result when the segment closes as predicted.
        """
        if not self._triggered or self._silence_run == 0:
            return None
        end = self._last_speech_end + self._post_roll
        decide = self._last_speech_end + self._hangover_frames * self.frame_samples
        if end > self._pos or decide - self._seg_start >= self._max_len:
            return None  # the end is not here yet, or the segment will be split at max length instead
        off = self._seg_start - self._buf_start
        return self._index, self._seg_start, self._buf[off : end - self._buf_start].copy()

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume 16 kHz mono float32 samples; return the events they complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_seen += samples.size
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        fs = self.frame_samples
        n_frames = samples.size // fs
        events: list[VadEvent] = []
        if n_frames:
            whole = samples[: n_frames * fs]
            self._buf = np.concatenate([self._buf, whole]) if self._buf.size else whole.copy()
            for i in range(n_frames):
                frame = whole[i * fs : (i + 1) * fs]
                self._on_frame(frame, self._pos + i * fs, events)
            self._pos += n_frames * fs
            self._trim_history()
        self._pending = samples[n_frames * fs :].copy()
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open segment (tail samples included) and reset."""
        events: list[VadEvent] = []
        if self._triggered:
            end = self._pos + self._pending.size
            if self._pending.size:
                self._buf = np.concatenate([self._buf, self._pending])
            self._close(end, END_OF_STREAM, end, events)
        self._pending = np.zeros(0, dtype=np.float32)
        return events

    # -- state machine ------------------------------------------------------------------------

    def _on_frame(self, frame: np.ndarray, start: int, events: list[VadEvent]) -> None:
        speech = bool(self._clf.is_speech(frame))
        fs = self.frame_samples
        self.total_frames += 1
        self.speech_frames += speech
        if not self._triggered:
            self._window.append(speech)
            if sum(self._window) >= self._trigger_need:
                # Open at the first speech frame of the window, minus pre-roll.
                first = start - (len(self._window) - 1) * fs
                for flag in self._window:
                    if flag:
                        break
                    first += fs
                seg_start = max(first - self._pre_roll, self._buf_start, self._min_start)
                self._open(seg_start, start + fs, events)
            return
        self._flags.append(speech)
        self._energy.append(float(np.dot(frame, frame)) / fs)
        if speech:
            self._silence_run = 0
            self._last_speech_end = start + fs
        else:
            self._silence_run += 1
        end = start + fs
        if self._silence_run >= self._hangover_frames:
            self._close(min(self._last_speech_end + self._post_roll, end), END_SILENCE, end, events)
        elif end - self._seg_start >= self._max_len:
            self._split(end, events)

    def _open(self, seg_start: int, upto: int, events: list[VadEvent]) -> None:
        fs = self.frame_samples
        self._triggered = True
        self._seg_start = seg_start
        # Frames from the segment start up to the trigger frame, re-derived from the window so that
        # speech ratio and split energies cover the whole segment.
        n = (upto - seg_start) // fs
        self._frames_start = upto - n * fs
        window = list(self._window)
        flags = [False] * max(0, n - len(window)) + window[-n:] if n else []
        self._flags = flags
        self._energy = []
        for k in range(n):
            a = self._frames_start + k * fs - self._buf_start
            f = self._buf[a : a + fs]
            self._energy.append(float(np.dot(f, f)) / fs)
        self._last_speech_end = upto
        self._silence_run = 0
        self._window.clear()
        events.append(SpeechStarted(self._index, seg_start, self.config_id))

    def _split(self, limit: int, events: list[VadEvent]) -> None:
        """Cut the open segment at its quietest frame within ``split_search_s`` before ``limit``."""
        fs = self.frame_samples
        n = len(self._energy)
        lo = max(1, n - self._search // fs)
        k = lo + int(np.argmin(self._energy[lo:n])) if n > lo else n
        # Cut in the middle of the quietest frame: the least likely place for a word.
        cut = self._frames_start + k * fs + fs // 2
        cut = min(cut, limit)
        tail_flags, tail_energy = self._flags[k:], self._energy[k:]
        self._emit(cut, END_MAX_LENGTH, limit, events, flags=self._flags[:k])
        # The remainder continues as a new, still-open segment.
        self._index += 1
        self._seg_start = cut
        self._frames_start = self._frames_start + k * fs
        self._flags, self._energy = tail_flags, tail_energy
        events.append(SpeechStarted(self._index, cut, self.config_id))

    def _close(self, end: int, reason: str, decided: int, events: list[VadEvent]) -> None:
        self._emit(end, reason, decided, events, flags=self._flags)
        self._index += 1
        self._triggered = False
        self._min_start = end
        self._flags, self._energy = [], []
        self._window.clear()
        self._silence_run = 0

    def _emit(self, end: int, reason: str, decided: int, events: list[VadEvent], flags: list[bool]) -> None:
        speech_frames = sum(flags)
        ratio = speech_frames / len(flags) if flags else 0.0
        if speech_frames < self._min_speech_frames and reason != END_MAX_LENGTH:
            events.append(
                SpeechDiscarded(
                    self._index,
                    self._seg_start,
                    end,
                    speech_frames * self.frame_samples * 1000 / SAMPLE_RATE,
                    self.config_id,
                )
            )
            return
        a, b = self._seg_start - self._buf_start, end - self._buf_start
        events.append(
            SpeechSegment(
                index=self._index,
                start_sample=self._seg_start,
                end_sample=end,
                audio=self._buf[a:b].copy(),
                end_reason=reason,
                speech_ratio=ratio,
                config_id=self.config_id,
                decided_sample=decided,
            )
        )

    def _trim_history(self) -> None:
        """Keep only what a future segment may need: pre-roll while idle, the open segment while triggered."""
        end = self._pos
        keep_from = (
            self._seg_start
            if self._triggered
            else max(end - self._pre_roll - self._trigger_frames * self.frame_samples, self._min_start)
        )
        keep_from = max(keep_from, self._buf_start)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
