"""One packed window and its pieces: the audio handed to Whisper (pieces joined by silence), and
Whisper's segments mapped back to per-piece transcripts in stream time, with the hallucination
guard applied, the audio a decode did not reach cut out for a retry, and, where pieces of several
owners (streams) share the window, the pieces a word crossed between owners marked for a decode
of their own."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from speechpipe.stages.asr.config import AsrConfig
from speechpipe.stages.asr.guard import is_hallucination
from speechpipe.stages.asr.types import AudioPiece, Transcript, WindowStats, Word
from speechpipe.stages.pcm import SAMPLE_RATE

#: audio left undecoded at the end of a piece that is worth a second pass, in seconds.
MISS_MIN_S = 1.0


def assemble(window: list[AudioPiece], gap_s: float) -> tuple[np.ndarray, list[int]]:
    """The window's audio (pieces joined by ``gap_s`` of silence) and each piece's offset in it."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
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


def whole_words(words: list[Word]) -> list[Word]:
    """``words`` with each one that Whisper attached to the one before (no leading space:
    "-not" after " S", "'s" after " John") joined to it, so that the words are the text's
    whitespace-separated words, as clients show them: the join spans both, with the lower
    probability."""
    out: list[Word] = []
    for w in words:
        if out and w.word and not w.word[0].isspace():
            prev = out[-1]
            w = Word(prev.start, max(prev.end, w.end), prev.word + w.word, min(prev.probability, w.probability))
            out[-1] = w
        else:
            out.append(w)
    return out


@dataclass
class _PieceOutput:
    """What one window's Whisper segments left for one of its pieces."""

    words: list[Word] = field(default_factory=list)
    #: (weight, avg_logprob, no_speech_prob, compression_ratio) of every segment touching the piece
    seen: list[tuple[float, float, float, float]] = field(default_factory=list)
    kept: list[tuple[float, float, float, float]] = field(default_factory=list)
    dropped: int = 0

    def transcript(self, piece: AudioPiece) -> Transcript:
        # Scores are duration-weighted over the kept segments, over all of them when all were dropped.
        basis = self.kept or self.seen
        if basis:
            wsum = sum(e[0] for e in basis)
            avg_lp, nsp, cr = (sum(e[0] * e[i] for e in basis) / wsum for i in (1, 2, 3))
        else:
            avg_lp, nsp, cr = 0.0, 1.0, 0.0
        words = whole_words(self.words)
        return Transcript(
            index=piece.index,
            start=piece.start_s,
            end=piece.start_s + piece.duration_s,
            text="".join(w.word for w in words).strip(),
            words=words,
            avg_logprob=float(avg_lp),  # plain floats: these end up in JSON
            no_speech_prob=float(nsp),
            compression_ratio=float(cr),
            dropped=self.dropped,
        )


def map_window(
    window: list[AudioPiece],
    offsets: list[int],
    audio: np.ndarray,
    segments: list,
    wall: float,
    config: AsrConfig,
    covered: list[float] | None = None,
) -> tuple[list[Transcript], WindowStats, list[AudioPiece | None], list[bool]]:
    """Turn one window's Whisper segments into per-piece transcripts (guard applied), the audio
    of each piece that the decode did not reach (None where it was covered), and which pieces a
    word crossed into or out of from another owner's slot (:func:`crossings`): their transcripts
    here cannot be trusted to hold only their own words. ``covered``: how far (window seconds)
    the decode of each piece's slot reached, where slots were decoded apart (default: the end of
    the window's last segment, for every piece)."""
    outputs = [_PieceOutput() for _ in window]
    crossed, crossing_words = crossings(window, offsets, [w for seg in segments for w in seg.words or []])
    dropped_total = 0
    for seg in segments:
        drop = is_hallucination(config, seg.no_speech_prob, seg.avg_logprob, seg.compression_ratio)
        words = seg.words or []
        # Which pieces this Whisper segment touched, weighted by how much of it fell in each.
        touched: dict[int, float] = {}
        for w in words:
            k = piece_of((w.start + w.end) / 2, offsets, window)
            touched[k] = touched.get(k, 0.0) + max(w.end - w.start, 1e-3)
            if not drop:
                outputs[k].words.append(to_stream_word(w, offsets[k], window[k]))
        if not words:
            touched[piece_of((seg.start + seg.end) / 2, offsets, window)] = max(seg.end - seg.start, 1e-3)
        for k, weight in touched.items():
            entry = (weight, seg.avg_logprob, seg.no_speech_prob, seg.compression_ratio)
            outputs[k].seen.append(entry)
            if drop:
                outputs[k].dropped += 1
            else:
                outputs[k].kept.append(entry)
        dropped_total += int(drop)
    results = [out.transcript(p) for p, out in zip(window, outputs)]
    stats = WindowStats(audio.size / SAMPLE_RATE, wall, len(window), len(segments), dropped_total)
    stats.crossed, stats.crossing_words = sum(crossed), crossing_words
    if covered is None:
        covered = [max((seg.end for seg in segments), default=0.0)] * len(window)
    return results, stats, _missed(window, offsets, covered, outputs), crossed


def crossings(window: list[AudioPiece], offsets: list[int], words: list) -> tuple[list[bool], int]:
    """Which pieces of a window shared by several owners a word crossed into or out of, and how
    many words did.

    Each piece owns a slot: its span, widened to the middle of the silence on either side. A word
    (window time) belongs to the piece its middle falls nearest (:func:`piece_of`); it crosses
    when it reaches past its piece's slot into the slot of a piece of another owner. Both pieces
    are then marked: the word may be one's audio read as the other's, or the other's context
    carried over, and neither transcript may hold a word of someone else's audio. Between pieces
    of one owner (a stream's own neighbouring segments) words move as they always did.
    """
    crossed = [False] * len(window)
    if len({p.owner for p in window}) < 2:
        return crossed, 0
    spans = [(off / SAMPLE_RATE, off / SAMPLE_RATE + p.duration_s) for off, p in zip(offsets, window)]
    # the boundary between slot k and slot k + 1: the middle of the silence between the pieces
    bounds = [(spans[k][1] + spans[k + 1][0]) / 2 for k in range(len(window) - 1)]
    n = 0
    for w in words:
        k = piece_of((w.start + w.end) / 2, offsets, window)
        hit = False
        j = k
        while j > 0 and w.start < bounds[j - 1]:  # reaches into earlier slots
            j -= 1
            if window[j].owner != window[k].owner:
                crossed[j] = hit = True
        j = k
        while j < len(bounds) and w.end > bounds[j]:  # reaches into later slots
            j += 1
            if window[j].owner != window[k].owner:
                crossed[j] = hit = True
        if hit:
            crossed[k] = True
            n += 1
    return crossed, n


def _missed(
    window: list[AudioPiece], offsets: list[int], covered: list[float], outputs: list[_PieceOutput]
) -> list[AudioPiece | None]:
    """The audio of each piece after ``covered[k]`` (window time the decode reached), where worth a retry."""
    missed: list[AudioPiece | None] = []
    for k, p in enumerate(window):
        a = offsets[k] / SAMPLE_RATE
        from_s = max(a, covered[k])
        # A lone piece with no output at all is Whisper's verdict (no speech), not a miss.
        reached = len(window) > 1 or bool(outputs[k].seen)
        if reached and a + p.duration_s - from_s > MISS_MIN_S:
            cut = round((from_s - a) * SAMPLE_RATE)
            missed.append(AudioPiece(p.index, p.start_sample + cut, p.audio[cut:], p.owner))
        else:
            missed.append(None)
    return missed


def piece_of(t: float, offsets: list[int], window: list[AudioPiece]) -> int:
    """Index of the piece whose span holds window time ``t`` (the nearest one for a gap)."""
    best, best_d = 0, float("inf")
    for k, (off, p) in enumerate(zip(offsets, window)):
        a = off / SAMPLE_RATE
        b = a + p.duration_s
        d = 0.0 if a <= t <= b else min(abs(t - a), abs(t - b))
        if d < best_d:
            best, best_d = k, d
    return best


def to_stream_word(w, offset: int, piece: AudioPiece) -> Word:
    """A word in window time, as a word in stream time clamped to its piece."""
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


def merge(piece: AudioPiece, parts: list[Transcript]) -> Transcript:
    """One transcript for ``piece`` from the transcripts of its first pass and of retried tails."""
    if len(parts) == 1:
        return parts[0]
    words = whole_words(sorted((w for t in parts for w in t.words), key=lambda w: w.start))
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
