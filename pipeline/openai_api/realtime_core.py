"""The transcription sessions of OpenAI's Realtime API mapped onto the live protocol, Sans-I/O.

:class:`RealtimeTranslator` takes the Realtime client's events and gives the live stream's
messages (``start`` at the first audio, PCM, ``stop``) plus the events to answer at once; it takes
the live stream's messages and gives Realtime server events:

=====================================  =====================================================
live protocol                          Realtime API
=====================================  =====================================================
(connection accepted)                  ``session.created``
``speech_start``                       ``input_audio_buffer.speech_started``
``partial`` (new committed words)      ``conversation.item.input_audio_transcription.delta``
``final`` (ok)                         ``input_audio_buffer.speech_stopped``, ``.committed``,
                                       ``conversation.item.input_audio_transcription.delta``
                                       and ``.completed``
``final`` (lost)                       ``...speech_stopped``, ``.committed``,
                                       ``conversation.item.input_audio_transcription.failed``
``discarded``                          ``input_audio_buffer.speech_stopped`` (no item)
``error``                              ``error``
=====================================  =====================================================

Deltas append only text that will not change: a ``partial``'s ``stable`` words (committed, never
taken back within the segment, :mod:`speechpipe.pipeline.live.captions`) as they grow, then the
rest of the final, so that an item's deltas add up to its ``completed`` transcript exactly, as in
OpenAI's API. The one exception: where the final did not keep the committed words (the server
counts those, ``commits_broken``: Whisper's hallucination guard dropped them), the deltas already
sent cannot be taken back, and ``completed`` carries the final's text.

Input formats: ``audio/pcm`` (16-bit, 24 kHz; the legacy ``pcm16``), ``audio/pcmu`` and
``audio/pcma`` (G.711 at 8 kHz; ``g711_ulaw``/``g711_alaw``), decoded here to 16-bit PCM. Turn
detection is the server's own VAD (``server_vad``); its timing knobs belong to the served variant's
``[vad]`` and are not changed per session.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field

import numpy as np

from speechpipe.pipeline.protocol import Start
from speechpipe.stages.asr.types import MAX_PROMPT_CHARS

#: the live ``start`` of each input format: (sample rate, G.711 law or None)
_FORMATS = {
    "audio/pcm": (24000, None),
    "pcm16": (24000, None),
    "audio/pcmu": (8000, "ulaw"),
    "g711_ulaw": (8000, "ulaw"),
    "audio/pcma": (8000, "alaw"),
    "g711_alaw": (8000, "alaw"),
}
_GA_NAMES = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype("<i2")


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


#: G.711 byte -> 16-bit sample (ITU-T G.711's expansion)
G711 = {"ulaw": _ulaw_table(), "alaw": _alaw_table()}


class RealtimeError(Exception):
    """A client event the session cannot take: answered with an ``error`` event."""

    def __init__(self, code: str, message: str, event_id: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.event_id, self.param = code, message, event_id, param


@dataclass
class Step:
    """What one input produced: messages for the live stream, events for the Realtime client."""

    live: list[str | bytes] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


def error_event(code: str, message: str, event_id: str | None = None, param: str | None = None) -> dict:
    kind = "server_error" if code == "internal_error" else "invalid_request_error"
    return {
        "type": "error",
        "error": {"type": kind, "code": code, "message": message, "event_id": event_id, "param": param},
    }


class RealtimeTranslator:
    """One Realtime transcription session (see the module docstring)."""

    def __init__(self, model: str, languages: tuple[str, ...]) -> None:
        self.session_id = "sess_" + uuid.uuid4().hex[:20]
        self.model = model
        self.languages = languages
        self.format = "audio/pcm"
        self.language: str | None = None
        self.prompt = ""
        self.started = False
        self._events = 0
        self._odd = b""  # a half sample carried to the next append
        self._previous_item: str | None = None
        self._sent: dict[str, str] = {}  # each open item's text sent in deltas so far

    # -- Realtime client -> live stream ------------------------------------------------------------

    def opened(self) -> Step:
        return Step(events=[self._event("session.created", session=self._session())])

    def client_event(self, text: str | bytes) -> Step:
        """One client event; raises :class:`RealtimeError` for one that cannot be taken."""
        try:
            event = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RealtimeError("invalid_json", "the event is not valid JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RealtimeError("invalid_event", "an event is a JSON object with a string 'type'")
        kind, event_id = event["type"], event.get("event_id")
        if kind in ("session.update", "transcription_session.update"):
            self._update(event.get("session"), event_id)
            name = "session.updated" if kind == "session.update" else "transcription_session.updated"
            return Step(events=[self._event(name, session=self._session())])
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"), event_id)
        if kind == "input_audio_buffer.commit":
            return Step()  # under server VAD the server commits at each end of speech
        if kind == "input_audio_buffer.clear":
            return Step(events=[self._event("input_audio_buffer.cleared")])
        raise RealtimeError("unknown_event", f"event type {kind!r} is not served by a transcription session", event_id)

    def _update(self, session: object, event_id: str | None) -> None:
        if not isinstance(session, dict):
            raise RealtimeError("invalid_value", "session.update needs a 'session' object", event_id, "session")
        audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
        inp = audio.get("input") if isinstance(audio.get("input"), dict) else {}
        fmt = inp.get("format", session.get("input_audio_format"))
        transcription = inp.get("transcription", session.get("input_audio_transcription"))
        turn = inp.get("turn_detection", session.get("turn_detection", {"type": "server_vad"}))
        if fmt is not None:
            name = fmt.get("type") if isinstance(fmt, dict) else fmt
            if name not in _FORMATS:
                raise RealtimeError(
                    "invalid_value",
                    f"input format {name!r}: use audio/pcm, audio/pcmu or audio/pcma",
                    event_id,
                    "session.audio.input.format",
                )
            if isinstance(fmt, dict) and fmt.get("rate") not in (None, _FORMATS[name][0]):
                raise RealtimeError(
                    "invalid_value", f"{name} is at {_FORMATS[name][0]} Hz", event_id, "session.audio.input.format.rate"
                )
            name = _GA_NAMES.get(name, name)
            if self.started and name != self.format:
                raise RealtimeError(
                    "invalid_value", "the input format cannot change once audio has been sent", event_id
                )
            self.format = name
        if isinstance(transcription, dict):
            model = transcription.get("model")
            if model and model != self.model:
                raise RealtimeError(
                    "invalid_value",
                    f"the session transcribes with {self.model!r} (chosen by ?model= when connecting); connect with ?model={model} instead",
                    event_id,
                    "session.audio.input.transcription.model",
                )
            language = transcription.get("language")
            if language and language not in self.languages:
                raise RealtimeError(
                    "invalid_value",
                    f"language {language!r} is not served here; available: {list(self.languages)}",
                    event_id,
                    "session.audio.input.transcription.language",
                )
            if self.started and language and language != self.language:
                raise RealtimeError("invalid_value", "the language cannot change once audio has been sent", event_id)
            self.language = language or self.language
            prompt = transcription.get("prompt")
            if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
                raise RealtimeError(
                    "invalid_value",
                    f"the prompt must be text of at most {MAX_PROMPT_CHARS} characters",
                    event_id,
                    "session.audio.input.transcription.prompt",
                )
            if self.started and prompt is not None and prompt != self.prompt:
                raise RealtimeError("invalid_value", "the prompt cannot change once audio has been sent", event_id)
            self.prompt = self.prompt if prompt is None else prompt
        if turn is None or (isinstance(turn, dict) and turn.get("type") not in (None, "server_vad")):
            raise RealtimeError(
                "invalid_value",
                "turn detection is the server's VAD (server_vad); it cannot be turned off or replaced",
                event_id,
                "session.audio.input.turn_detection",
            )

    def _append(self, audio: object, event_id: str | None) -> Step:
        if not isinstance(audio, str):
            raise RealtimeError("invalid_value", "input_audio_buffer.append needs base64 'audio'", event_id, "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "'audio' is not valid base64", event_id, "audio") from None
        step = Step()
        if not self.started:
            rate, _law = _FORMATS[self.format]
            start = Start(rate, "pcm_s16le", 1, self.language or Start.language, partials=True, prompt=self.prompt)
            step.live.append(json.dumps(start.to_dict()))
            self.started = True
        law = _FORMATS[self.format][1]
        if law is not None:
            pcm = G711[law][np.frombuffer(data, dtype=np.uint8)].tobytes()
        else:
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            pcm = data
        if pcm:
            step.live.append(pcm)
        return step

    # -- live stream -> Realtime client -------------------------------------------------------------

    def server_message(self, message: dict) -> list[dict]:
        """The Realtime events of one live message."""
        kind = message.get("type")
        if kind == "speech_start":
            return [
                self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=_ms(message["t"]),
                    item_id=self._item(message["segment"]),
                )
            ]
        if kind == "discarded":
            self._sent.pop(self._item(message["segment"]), None)
            return [
                self._event(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=_ms(message["end"]),
                    item_id=self._item(message["segment"]),
                )
            ]
        if kind == "partial":
            item = self._item(message["segment"])
            stable, sent = message.get("stable") or "", self._sent.get(item, "")
            if len(stable) <= len(sent) or not stable.startswith(sent):
                return []
            self._sent[item] = stable
            return [self._delta(item, stable[len(sent) :])]
        if kind == "final":
            item = self._item(message["segment"])
            sent = self._sent.pop(item, "")
            out = [
                self._event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(message["end"]), item_id=item),
                self._event("input_audio_buffer.committed", item_id=item, previous_item_id=self._previous_item),
            ]
            self._previous_item = item
            if message.get("status") == "lost":
                failure = {
                    "type": "server_error",
                    "code": message.get("reason", "lost"),
                    "message": "the segment could not be transcribed",
                }
                out.append(
                    self._event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item,
                        content_index=0,
                        error=failure,
                    )
                )
                return out
            text = message.get("text", "")
            usage = {"type": "duration", "seconds": round(float(message["end"]) - float(message["start"]), 3)}
            if not sent:
                out.append(self._delta(item, text))
            elif text.startswith(sent) and len(text) > len(sent):
                out.append(self._delta(item, text[len(sent) :]))
            out.append(
                self._event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item,
                    content_index=0,
                    transcript=text,
                    usage=usage,
                )
            )
            return out
        if kind == "error":
            return [
                dict(error_event(message.get("code", "error"), message.get("message", "")), event_id=self._next_id())
            ]
        return []  # ready, end: nothing the Realtime API has

    # -- helpers ----------------------------------------------------------------------------------

    def _item(self, segment: int) -> str:
        return f"item_{self.session_id[5:17]}_{int(segment)}"

    def _next_id(self) -> str:
        self._events += 1
        return f"event_{self.session_id[5:17]}_{self._events}"

    def _delta(self, item: str, text: str) -> dict:
        return self._event(
            "conversation.item.input_audio_transcription.delta", item_id=item, content_index=0, delta=text
        )

    def _event(self, kind: str, **fields: object) -> dict:
        return {"type": kind, "event_id": self._next_id(), **fields}

    def _session(self) -> dict:
        rate = _FORMATS[self.format][0]
        fmt = {"type": self.format, "rate": rate} if self.format == "audio/pcm" else {"type": self.format}
        return {
            "type": "transcription",
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                    "turn_detection": {"type": "server_vad"},
                    "noise_reduction": None,
                }
            },
        }


def _ms(seconds: object) -> int:
    return round(float(seconds) * 1000)
