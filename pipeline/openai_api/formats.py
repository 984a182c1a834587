"""The response formats of ``/v1/audio/transcriptions``, from a stream's finals (pure).

``json`` ``{"text"}``; ``text`` the plain text; ``srt`` and ``vtt`` the subtitles
``speechpipe transcribe`` writes (same cue rules); ``verbose_json`` OpenAI's verbose document
(``task``, ``language``, ``duration``, ``text``, ``segments`` with Whisper's confidences, and
``words`` when ``timestamp_granularities[]`` asks for them). Streaming answers are server-sent
events: ``transcript.text.delta`` per final, then ``transcript.text.done``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from speechpipe.pipeline.offline.outputs import srt, vtt
from speechpipe.stages.asr.types import Transcript, Word

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def _num(value: object, default: float = 0.0) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def transcript_of(final: dict) -> Transcript:
    """The :class:`Transcript` a live ``final`` message carries."""
    return Transcript(
        index=int(final["segment"]),
        start=float(final["start"]),
        end=float(final["end"]),
        text=final.get("text", ""),
        words=[Word(w["start"], w["end"], w["word"], w.get("probability", 1.0)) for w in final.get("words", [])],
        avg_logprob=_num(final.get("avg_logprob")),
        no_speech_prob=_num(final.get("no_speech_prob")),
        compression_ratio=_num(final.get("compression_ratio")),
    )


def join_text(segments: list[Transcript]) -> str:
    return " ".join(t for t in (s.text.strip() for s in segments) if t)


@dataclass
class Transcription:
    """What one request produced: its segments in order, the audio's length and language, and the
    first decoding temperature it asked for."""

    segments: list[Transcript] = field(default_factory=list)
    duration: float = 0.0
    language: str = "en"
    temperature: float = 0.0

    @property
    def text(self) -> str:
        return join_text(self.segments)


#: Whisper's language codes as OpenAI's verbose_json names them (the language of the request).
_LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian"}


def verbose(result: Transcription, words: bool, segments: bool = True) -> dict:
    """OpenAI's ``verbose_json`` document."""
    doc: dict = {
        "task": "transcribe",
        "language": _LANGUAGE_NAMES.get(result.language, result.language),
        "duration": round(result.duration, 3),
        "text": result.text,
    }
    if segments:
        doc["segments"] = [
            {
                "id": i,
                "seek": round(s.start * 100),
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text.strip(),
                "tokens": [],
                "temperature": result.temperature,
                "avg_logprob": round(s.avg_logprob, 4),
                "compression_ratio": round(s.compression_ratio, 4),
                "no_speech_prob": round(s.no_speech_prob, 4),
            }
            for i, s in enumerate(x for x in result.segments if x.text.strip())
        ]
    if words:
        doc["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in result.segments
            for w in s.words
            if w.word.strip()
        ]
    return doc


def render(result: Transcription, fmt: str, granularities: tuple[str, ...] = ()) -> tuple[str, str]:
    """``(body, media type)`` of ``result`` in response format ``fmt``."""
    if fmt == "json":
        body = json.dumps({"text": result.text}, ensure_ascii=False)
    elif fmt == "verbose_json":
        want_words = "word" in granularities
        want_segments = not granularities or "segment" in granularities
        body = json.dumps(verbose(result, want_words, want_segments), ensure_ascii=False)
    elif fmt == "text":
        body = result.text + "\n"
    elif fmt == "srt":
        body = srt(result.segments)
    elif fmt == "vtt":
        body = vtt(result.segments)
    else:
        raise ValueError(f"unknown response format {fmt!r}")
    return body, MEDIA_TYPES[fmt]


def sse(event: dict) -> str:
    """One server-sent event carrying ``event`` as JSON."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def delta_event(text: str) -> dict:
    return {"type": "transcript.text.delta", "delta": text}


def done_event(text: str) -> dict:
    return {"type": "transcript.text.done", "text": text}
