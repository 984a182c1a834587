"""The live streaming protocol (docs/protocol.md), Sans-I/O: parsing client messages, building
server messages, and the error codes with their WebSocket close codes.

Nothing here touches a socket; the server (:mod:`speechpipe.pipeline.server.speech_server`) and the clients
(:mod:`speechpipe.pipeline.clients.client`) both use it, so the two sides cannot drift apart.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from speechpipe.stages.asr import Decoding, Transcript
from speechpipe.stages.asr.types import MAX_PROMPT_CHARS
from speechpipe.stages.audio import MAX_RATE, MIN_RATE

ENCODINGS = ("pcm_s16le", "pcm_f32le")
CHANNELS = (1, 2)

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

#: every error code the server sends, with the close code that follows it.
ERROR_CLOSE_CODES: dict[str, int] = {
    "bad_json": CLOSE_INVALID_PAYLOAD,
    "bad_message": CLOSE_POLICY,
    "unknown_type": CLOSE_POLICY,
    "binary_before_start": CLOSE_POLICY,
    "already_started": CLOSE_POLICY,
    "bad_audio": CLOSE_INVALID_PAYLOAD,
    "unsupported_rate": CLOSE_UNSUPPORTED_DATA,
    "unsupported_encoding": CLOSE_UNSUPPORTED_DATA,
    "unsupported_channels": CLOSE_UNSUPPORTED_DATA,
    "unsupported_language": CLOSE_UNSUPPORTED_DATA,
    "frame_too_large": CLOSE_TOO_BIG,
    "idle_timeout": CLOSE_POLICY,
    "stream_too_long": CLOSE_POLICY,
    "server_busy": CLOSE_TRY_AGAIN_LATER,
    "not_ready": CLOSE_TRY_AGAIN_LATER,
    "shutting_down": CLOSE_GOING_AWAY,
    "slow_reader": CLOSE_POLICY,
    "internal_error": CLOSE_INTERNAL_ERROR,
    "unknown_session": CLOSE_POLICY,
    "session_open": CLOSE_TRY_AGAIN_LATER,
    "resume_unavailable": CLOSE_TRY_AGAIN_LATER,
}


class ProtocolError(Exception):
    """Input that ends the stream: carries the error ``code`` and the close code that goes with it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return ERROR_CLOSE_CODES.get(self.code, CLOSE_POLICY)


@dataclass(frozen=True)
class Resume:
    """``start.resume``: the session a new connection continues after the old one broke (a
    replica that died or stopped), from stream time ``from_s`` (the ``end`` of the last final the
    client got, 0 when none) with segment index ``segment`` (that final's index + 1). The client
    sends again its audio from ``from_s`` on; the server's stream times and indices go on from
    there, so no final is sent twice and none is skipped."""

    session: str
    from_s: float = 0.0
    segment: int = 0

    def to_dict(self) -> dict:
        return {"session": self.session, "from_s": self.from_s, "segment": self.segment}


@dataclass(frozen=True)
class Start:
    """The client's ``start`` message: the format of the binary frames that follow."""

    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    channels: int = 1
    language: str = "en"
    partials: bool = True
    #: the client's own key (a user or device id): a canary routes the same key to the same variant.
    client: str | None = None
    #: text Whisper is told came before each segment (names, spellings); "" : none.
    prompt: str = ""
    #: the first decoding temperature (0: greedy, falling back to higher ones on a failed decode).
    temperature: float = 0.0
    #: a session this stream continues (its connection broke); None: a new session.
    resume: Resume | None = None

    @property
    def decoding(self) -> Decoding:
        """The stream's prompt and first temperature, as the ASR stage takes them."""
        return Decoding(self.prompt, self.temperature)

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return (2 if self.encoding == "pcm_s16le" else 4) * self.channels

    def to_dict(self) -> dict:
        return {
            "type": "start",
            "sample_rate": self.sample_rate,
            "encoding": self.encoding,
            "channels": self.channels,
            "language": self.language,
            "partials": self.partials,
        } | (
            ({"client": self.client} if self.client is not None else {})
            | ({"prompt": self.prompt} if self.prompt else {})
            | ({"temperature": self.temperature} if self.temperature else {})
            | ({"resume": self.resume.to_dict()} if self.resume is not None else {})
        )


@dataclass(frozen=True)
class Stop:
    """The client's ``stop`` message: no more audio; send the remaining finals, then ``end``."""


class _TooLarge(ValueError):
    """A JSON number too large for a float."""


#: the largest integer a message may hold: every number must fit a float.
_MAX_INT = int(sys.float_info.max)


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    # Checked before int(): Python refuses to convert strings of more than 4300 digits at all.
    if digits > 310 or abs(int(text)) > _MAX_INT:
        raise _TooLarge(f"a number of {digits} digits does not fit a float")
    return int(text)


_START_FIELDS = {
    "type",
    "sample_rate",
    "encoding",
    "channels",
    "language",
    "partials",
    "client",
    "prompt",
    "temperature",
    "resume",
}
MAX_CLIENT_KEY = 128
#: the longest session id ``resume`` may name (the server's are 12 hex characters).
MAX_SESSION_ID = 64
#: the latest stream time ``resume`` may name: a week of audio.
MAX_RESUME_S = 7 * 24 * 3600.0


def parse_client_text(text: str, languages: tuple[str, ...] = ("en",)) -> Start | Stop:
    """Parse one client text message.

    Args:
        text: the message.
        languages: language codes the server's model accepts.

    Raises:
        ProtocolError: malformed JSON (``bad_json``), not an object or bad field (``bad_message``),
            unknown ``type`` (``unknown_type``), or an unsupported format (``unsupported_*``).
    """
    try:
        msg = json.loads(text, parse_int=_bounded_int)
    except _TooLarge as exc:
        raise ProtocolError("bad_message", str(exc)) from None
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind == "stop":
        return Stop()
    if kind != "start":
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected 'start' or 'stop'")
    unknown = sorted(set(msg) - _START_FIELDS)
    if unknown:
        raise ProtocolError(
            "bad_message",
            f"unknown field(s) in start: {', '.join(unknown)} (known: {', '.join(sorted(_START_FIELDS))})",
        )
    rate = msg.get("sample_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate != int(rate):
        raise ProtocolError("unsupported_rate", f"sample_rate must be a whole number of Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError("unsupported_rate", f"sample_rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    encoding = msg.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError(
            "unsupported_encoding", f"encoding {encoding!r} is not supported; use one of {list(ENCODINGS)}"
        )
    channels = msg.get("channels", 1)
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise ProtocolError("unsupported_channels", f"channels must be 1 or 2, got {channels!r}")
    language = msg.get("language", "en")
    if language not in languages:
        raise ProtocolError(
            "unsupported_language", f"language {language!r} is not served here; available: {list(languages)}"
        )
    partials = msg.get("partials", True)
    if not isinstance(partials, bool):
        raise ProtocolError("bad_message", f"partials must be true or false, got {partials!r}")
    client = msg.get("client")
    if client is not None and (not isinstance(client, str) or not 0 < len(client) <= MAX_CLIENT_KEY):
        raise ProtocolError("bad_message", f"client must be a string of 1-{MAX_CLIENT_KEY} characters, got {client!r}")
    prompt = msg.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError("bad_message", f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    temperature = msg.get("temperature", 0.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or not 0.0 <= temperature <= 1.0
    ):
        raise ProtocolError("bad_message", f"temperature must be a number from 0 to 1, got {temperature!r}")
    resume = _resume(msg["resume"]) if msg.get("resume") is not None else None
    return Start(int(rate), encoding, channels, language, partials, client, prompt, float(temperature), resume)


def _resume(doc: object) -> Resume:
    """``start.resume``, checked (``bad_message`` saying what is wrong)."""
    if not isinstance(doc, dict):
        raise ProtocolError("bad_message", 'resume must be an object: {"session": ID, "from_s": S, "segment": N}')
    unknown = sorted(set(doc) - {"session", "from_s", "segment"})
    if unknown:
        raise ProtocolError("bad_message", f"unknown field(s) in resume: {', '.join(unknown)}")
    session, from_s, segment = doc.get("session"), doc.get("from_s", 0.0), doc.get("segment", 0)
    if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_ID:
        raise ProtocolError("bad_message", "resume.session must be the session id given in ready")
    if (
        isinstance(from_s, bool)
        or not isinstance(from_s, (int, float))
        or not math.isfinite(from_s)
        or not 0 <= from_s <= MAX_RESUME_S
    ):
        raise ProtocolError("bad_message", f"resume.from_s must be a stream time in seconds, got {from_s!r}")
    if isinstance(segment, bool) or not isinstance(segment, int) or not 0 <= segment <= 10_000_000:
        raise ProtocolError("bad_message", f"resume.segment must be a segment index, got {segment!r}")
    return Resume(session, float(from_s), segment)


def check_audio(data: bytes, start: Start) -> None:
    """Reject a binary frame that is not a whole number of sample frames (``bad_audio``)."""
    if len(data) % start.bytes_per_frame:
        raise ProtocolError(
            "bad_audio",
            f"binary frame of {len(data)} bytes is not a whole number of {start.encoding} frames "
            f"({start.bytes_per_frame} bytes each with {start.channels} channel(s))",
        )


# -- server messages ------------------------------------------------------------------------------


def dumps(msg: dict[str, Any]) -> str:
    """Serialize a server message (compact JSON, UTF-8 text)."""
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def ready(session: str, start: Start, **info: Any) -> dict:
    fmt = {k: v for k, v in start.to_dict().items() if k != "type"}
    return {"type": "ready", "session": session, **fmt, **info}


def speech_start(segment: int, t: float) -> dict:
    return {"type": "speech_start", "segment": segment, "t": round(t, 3)}


def discarded(segment: int, start: float, end: float) -> dict:
    return {"type": "discarded", "segment": segment, "start": round(start, 3), "end": round(end, 3)}


def partial(segment: int, transcript: Transcript, stable: str = "", text: str | None = None) -> dict:
    """A partial transcript of the open segment: ``text`` the line to show (``stable``, the words
    committed for the rest of the segment, then the newest hypothesis' unstable tail;
    :mod:`speechpipe.pipeline.live.captions`)."""
    return {"type": "partial", "segment": segment, "text": transcript.text if text is None else text, "stable": stable}


def final(segment: int, start: float, end: float, transcript: Transcript, latency_s: float) -> dict:
    return {
        "type": "final",
        "segment": segment,
        "start": round(start, 3),
        "end": round(end, 3),
        "text": transcript.text,
        "words": [
            {"start": w.start, "end": w.end, "word": w.word.strip(), "probability": w.probability}
            for w in transcript.words
        ],
        "latency_s": round(latency_s, 3),
        "status": "ok",
        "avg_logprob": _finite(transcript.avg_logprob),
        "no_speech_prob": _finite(transcript.no_speech_prob),
        "compression_ratio": _finite(transcript.compression_ratio),
    }


def _finite(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def final_lost(segment: int, start: float, end: float, reason: str) -> dict:
    """The final of a segment that will never be transcribed: still exactly one final per
    ``speech_start``, saying why it has no text."""
    return {
        "type": "final",
        "segment": segment,
        "start": round(start, 3),
        "end": round(end, 3),
        "text": "",
        "words": [],
        "status": "lost",
        "reason": reason,
    }


def revision(segment: int, text: str, by: str = "human") -> dict:
    """A reviewed transcript of a segment that has had its final: it replaces the final's text."""
    return {"type": "revision", "segment": segment, "text": text, "by": by}


def error(code: str, message: str, **extra: Any) -> dict:
    return {"type": "error", "code": code, "message": message, **extra}


def end(reason: str, segments: int) -> dict:
    return {"type": "end", "reason": reason, "segments": segments}
