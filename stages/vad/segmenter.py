"""Streaming voice-activity segmentation.

A :class:`VadSegmenter` takes 16 kHz mono float32 audio in chunks of any size and emits
:class:`SpeechStarted`, :class:`SpeechSegment` and :class:`SpeechDiscarded` events whose times are
sample-exact positions in the stream. Frame classification is delegated to a
:class:`~speechpipe.stages.vad.classifiers.FrameClassifier` (webrtcvad or Silero), so every
backend shares the same state machine: pre-roll, start trigger, hangover, minimum speech length
and maximum segment length.

Frames are aligned to the start of the stream, so feeding 10 ms or 1 s chunks yields exactly the
same segments.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad.classifiers import FrameClassifier, make_classifier
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

    def start_at(self, sample: int, index: int) -> None:
        """Begin the stream at 16 kHz stream sample ``sample`` with segment index ``index`` (a
        resumed stream: its times and indices go on from where the last final left them).
        Only before any audio."""
        if self.samples_seen or self._pending.size:
            raise ValueError("start_at: audio was fed already")
        if sample < 0 or index < 0:
            raise ValueError(f"start_at: sample and index must be >= 0, not {sample}, {index}")
        self._pos = self._buf_start = self._seg_start = self._last_speech_end = sample
        self._frames_start = self._min_start = self.samples_seen = sample
        self._index = index

    @property
    def triggered(self) -> bool:
        """True while a segment is open."""
        return self._triggered

    @property
    def open_index(self) -> int | None:
        """Index of the open segment, or None while no segment is open."""
        return self._index if self._triggered else None

    @property
    def open_start(self) -> int:
        """Start sample of the open segment (meaningful while :attr:`open_index` is not None)."""
        return self._seg_start

    def open_segment(self) -> tuple[int, int, np.ndarray] | None:
        """Index, start sample and audio of the open segment so far (for partial transcripts)."""
        if not self._triggered:
            return None
        off = self._seg_start - self._buf_start
        return self._index, self._seg_start, self._buf[off:].copy()

    @property
    def settled_sample(self) -> int:
        """Audio before this stream sample is settled: no segment still open or to come can hold
        it, so it is in a segment already reported or rejected for good (the history kept for
        the pre-roll and the open segment starts here)."""
        return self._buf_start

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
            frames = whole.reshape(n_frames, fs)
            for i, speech in enumerate(self._clf.classify(frames)):
                self._on_frame(frames[i], bool(speech), self._pos + i * fs, events)
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

    def _on_frame(self, frame: np.ndarray, speech: bool, start: int, events: list[VadEvent]) -> None:
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
