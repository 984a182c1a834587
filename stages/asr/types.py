"""What the ASR stage takes and gives: audio pieces in, transcripts with stream-time words out, and
what each call cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from speechpipe.stages.pcm import SAMPLE_RATE

#: the longest prompt taken, in characters (Whisper keeps the last 223 tokens of it anyway).
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class Decoding:
    """How one stream's audio is decoded, where a client may choose (OpenAI's ``prompt`` and
    ``temperature``).

    Attributes:
        prompt: text Whisper is told came before (spellings, names, a style); its last 223
            tokens are kept. "" : none.
        temperature: the first decoding temperature. 0 decodes greedily and falls back to the
            configured higher temperatures when a decode fails Whisper's checks; above 0 the
            decode samples at it, falling back to the configured temperatures above it.
        prefix: words the transcript of the window's first piece must begin with (Whisper's
            decoder is given them and goes on from there): a live segment's committed words
            (:mod:`speechpipe.pipeline.live.captions`). "" : none. A window with a prefix holds
            that one piece; audio Whisper did not reach, retried in a window of its own, is
            decoded without it.
    """

    prompt: str = ""
    temperature: float = 0.0
    prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        if not isinstance(self.prefix, str) or len(self.prefix) > MAX_PROMPT_CHARS:
            raise ValueError(f"prefix must be text of at most {MAX_PROMPT_CHARS} characters")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            raise ValueError(f"temperature must be a number from 0 to 1, not {t!r}")
        object.__setattr__(self, "temperature", float(t))

    def temperatures(self, configured: tuple[float, ...]) -> tuple[float, ...]:
        """The temperatures to try in turn: this one, then the configured ones above it."""
        return (self.temperature, *(t for t in configured if t > self.temperature))


@dataclass
class Word:
    """A recognised word; ``start``/``end`` in seconds of stream time."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class AudioPiece:
    """A span of 16 kHz audio to transcribe, positioned in its stream.

    ``owner``: whose audio it is where pieces of several streams share a window (the stream id;
    "" where every piece of the window is one stream's). Words never pass between pieces of
    different owners: a piece a word crossed into or out of is decoded again alone
    (:func:`~speechpipe.stages.asr.windows.map_window`).
    """

    index: int
    start_sample: int
    audio: np.ndarray = field(repr=False)
    owner: str = ""

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


@dataclass
class Transcript:
    """Transcription of one :class:`AudioPiece`.

    ``avg_logprob``, ``no_speech_prob`` and ``compression_ratio`` are those of the Whisper segments
    the piece's words came from (duration-weighted over the kept segments; over all segments when
    everything was dropped). ``dropped`` counts Whisper segments the hallucination guard removed.
    """

    index: int
    start: float
    end: float
    text: str
    words: list[Word]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    dropped: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WindowStats:
    """What one Whisper call cost and covered (``attempt`` > 0: a retry of pieces a packed window
    missed, or of a piece decoded again alone because words crossed its slot)."""

    audio_s: float
    wall_s: float
    pieces: int
    whisper_segments: int
    dropped: int
    attempt: int = 0
    #: pieces of this window whose words crossed into or out of another owner's slot, decoded
    #: again alone (their words here were discarded)
    crossed: int = 0
    #: words seen crossing between slots of different owners (each counted once)
    crossing_words: int = 0


@dataclass
class AsrRun:
    """How one engine call ran, for telemetry: wall-clock times (ns since the epoch, as OpenTelemetry
    wants them), time the job spent queued, and what each Whisper window of the call covered."""

    started_ns: int
    ended_ns: int
    queue_wait_s: float = 0.0
    windows: list[WindowStats] = field(default_factory=list)
    model: str = ""
    device: str = ""
    compute_type: str = ""
    #: the job's share of the call (its audio over the call's) where jobs of several streams
    #: shared it: its compute and encoder passes are this share of the call's
    share: float = 1.0

    @property
    def wall_s(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9
