"""``POST /v1/audio/transcriptions`` (OpenAI's multipart request) and ``GET /v1/models``.

An upload is decoded as ``speechpipe transcribe`` decodes files (:mod:`speechpipe.stages.audio`),
checked end to end before anything runs (a corrupt or truncated file is a 400, not half a
transcript), then fed at its native rate and channels to a live stream of the server
(:mod:`.fed`): admission, routing, VAD, scheduler, drift and telemetry are the live ones. A final
that could not be made fails the request (503) instead of leaving a hole in the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from speechpipe.pipeline.live.transport import Transport
from speechpipe.pipeline.openai_api import formats as F
from speechpipe.pipeline.openai_api.errors import ApiError, bad_request, from_stream_error
from speechpipe.pipeline.openai_api.fed import run_fed
from speechpipe.pipeline.openai_api.models import ModelChoice, choose, listing
from speechpipe.pipeline.protocol import Start
from speechpipe.stages.asr.types import MAX_PROMPT_CHARS
from speechpipe.stages.audio import AudioError, AudioInfo, iter_file_blocks, probe, to_mono


@dataclass
class Hooks:
    """What the OpenAI routes need of the server (the API key, the stream token, is checked by the
    server's authentication before they run; the body's size by its body limit).

    Attributes:
        serve: serves a stream on a transport, pinned to a variant or routed (None); the flag
            says it is fed as fast as it reads (an upload) rather than in real time.
        models: the served variants' model names and the primary, None while they load.
        max_frame_bytes: the largest audio message a stream takes.
        max_audio_s: the longest stream.
        retry_after_s: the retry hint of a refused request.
        created: the server's start (Unix seconds), the ``created`` of every model.
        languages: the language codes the served models take.
    """

    serve: Callable[[Transport, str | None, bool], Awaitable[None]]
    models: Callable[[], tuple[dict[str, str], str] | None]
    max_frame_bytes: int
    max_audio_s: float
    retry_after_s: float
    created: int
    languages: Callable[[], tuple[str, ...]] = lambda: ("en",)


def resolve_model(requested: str, hooks: Hooks) -> ModelChoice:
    served = hooks.models()
    if served is None:
        raise ApiError(
            503, "the models are still loading; retry shortly", "not_ready", retry_after_s=hooks.retry_after_s
        )
    choice = choose(requested, *served)
    if choice is None:
        known = [m["id"] for m in listing(*served, hooks.created)["data"]]
        raise ApiError(
            404, f"The model '{requested}' does not exist; this server serves {known}", "model_not_found", "model"
        )
    return choice


async def models_endpoint(request: Request, hooks: Hooks) -> Response:
    try:
        served = hooks.models()
        if served is None:
            raise ApiError(503, "the models are still loading", "not_ready", retry_after_s=hooks.retry_after_s)
    except ApiError as exc:
        return exc.response()
    return JSONResponse(listing(*served, hooks.created), headers={"Cache-Control": "no-store"})


# -- the request --------------------------------------------------------------------------------


@dataclass
class Params:
    file: UploadFile
    choice: ModelChoice
    language: str | None
    response_format: str
    granularities: tuple[str, ...]
    stream: bool
    prompt: str = ""
    temperature: float = 0.0


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.strip().lower() in ("", "false", "0"):
        return False
    if value.strip().lower() in ("true", "1"):
        return True
    raise bad_request(f"{name} must be true or false, not {value!r}", param=name)


async def parse(request: Request, hooks: Hooks) -> Params:
    """The request's fields, checked; :class:`ApiError` says what is wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request(
            "the request must be multipart/form-data, with the audio as its 'file' part", "invalid_request"
        )
    try:
        form = await request.form(max_files=1, max_fields=64)
    except MultiPartException as exc:
        raise bad_request(f"malformed multipart body: {exc.message}", "invalid_request") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise bad_request("the audio file is missing: send it as the multipart field 'file'", "missing_file", "file")
    text = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    fmt = text.get("response_format") or "json"
    if fmt not in F.FORMATS:
        raise bad_request(f"response_format must be one of {list(F.FORMATS)}, not {fmt!r}", param="response_format")
    granularities = tuple(
        v for k, v in form.multi_items() if k in ("timestamp_granularities[]", "timestamp_granularities")
    )
    for g in granularities:
        if g not in ("word", "segment"):
            raise bad_request(
                f"timestamp_granularities takes word and segment, not {g!r}", param="timestamp_granularities"
            )
    if granularities and fmt != "verbose_json":
        raise bad_request("timestamp_granularities needs response_format verbose_json", param="timestamp_granularities")
    temperature = text.get("temperature") or "0"
    try:
        t = float(temperature)
    except ValueError:
        t = -1.0
    if not 0.0 <= t <= 1.0:  # NaN too
        raise bad_request(f"temperature must be a number from 0 to 1, not {temperature!r}", param="temperature")
    prompt = (text.get("prompt") or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    return Params(
        file=upload,
        choice=resolve_model(text.get("model", ""), hooks),
        language=(text.get("language") or "").strip() or None,
        response_format=fmt,
        granularities=granularities,
        stream=_flag(text.get("stream"), "stream"),
        prompt=prompt,
        temperature=t,
    )


def _save(upload: UploadFile) -> str:
    """The upload in a file of its own (the decoder reads paths), its name kept for the format."""
    suffix = os.path.splitext(upload.filename or "")[1][:16]
    fd, path = tempfile.mkstemp(prefix="speechpipe-upload-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        upload.file.seek(0)
        while chunk := upload.file.read(1 << 20):
            out.write(chunk)
    return path


def _check_audio(path: str, name: str, max_audio_s: float) -> AudioInfo:
    """Decode the whole file once: it must decode to the end before any of it is transcribed."""
    try:
        info = probe(path)
        frames = sum(len(block) for block in iter_file_blocks(path))
    except AudioError as exc:
        cause = str(exc).replace(path, name)  # the client knows its file, not our temporary copy
        raise bad_request(f"could not decode the audio file: {cause}", "invalid_audio", "file") from None
    if frames / info.sample_rate > max_audio_s:
        raise bad_request(
            f"the audio lasts {frames / info.sample_rate:.0f} s, over this server's {max_audio_s:.0f} s (server.max_stream_s)",
            "audio_too_long",
            "file",
        )
    return dataclasses.replace(info, frames=frames, duration_s=frames / info.sample_rate)


def stream_messages(path: str, info: AudioInfo, params: Params, max_frame_bytes: int) -> Iterator[str | bytes]:
    """What a WebSocket client streaming this file would send: ``start``, PCM, ``stop``."""
    channels = info.channels if info.channels <= 2 else 1
    language = params.language or Start.language
    start = Start(
        info.sample_rate,
        "pcm_f32le",
        channels,
        language,
        partials=False,
        prompt=params.prompt,
        temperature=params.temperature,
    )
    yield json.dumps(start.to_dict())
    frames = max(1, min(info.sample_rate, max_frame_bytes // (4 * channels)))
    for block in iter_file_blocks(path, frames / info.sample_rate):
        pcm = block if channels == info.channels else to_mono(block)
        yield pcm.astype("<f4", copy=False).tobytes()
    yield json.dumps({"type": "stop"})


class Outcome:
    """A stream's answer as it comes: its ``ready``, finals, and how it ended."""

    def __init__(self) -> None:
        self.ready: dict | None = None
        self.segments: list = []
        self.lost: list[dict] = []
        self.error: dict | None = None

    def take(self, message: dict) -> F.Transcript | None:
        """Record ``message``; returns the transcript of an ``ok`` final."""
        kind = message.get("type")
        if kind == "ready":
            self.ready = message
        elif kind == "error":
            self.error = message
        elif kind == "final" and message.get("status") == "lost":
            self.lost.append(message)
        elif kind == "final":
            tr = F.transcript_of(message)
            self.segments.append(tr)
            return tr
        return None

    def failure(self, retry_after_s: float) -> ApiError | None:
        if self.error is not None:
            return from_stream_error(self.error, retry_after_s)
        if self.lost:
            reasons = sorted({m.get("reason", "?") for m in self.lost})
            return ApiError(
                503,
                f"{len(self.lost)} segment(s) could not be transcribed ({', '.join(reasons)}); retry the request",
                "segments_lost",
                retry_after_s=retry_after_s,
            )
        return None

    def headers(self) -> dict:
        r = self.ready or {}
        return {
            "Cache-Control": "no-store",
            "X-Speechpipe-Session": r.get("session", ""),
            "X-Speechpipe-Variant": r.get("variant", ""),
        }


async def transcriptions_endpoint(request: Request, hooks: Hooks) -> Response:
    path: str | None = None
    try:
        params = await parse(request, hooks)
        path = await asyncio.to_thread(_save, params.file)
        info = await asyncio.to_thread(_check_audio, path, params.file.filename or "file", hooks.max_audio_s)
        client = request.client
        peer = f"http:{client.host}:{client.port}" if client else "http"
        messages = stream_messages(path, info, params, hooks.max_frame_bytes)
        events = run_fed(lambda t: hooks.serve(t, params.choice.variant, True), messages, peer)
        outcome = Outcome()
        async for message in events:  # up to ready (or the refusal), so a refusal is an HTTP status
            outcome.take(message)
            if outcome.ready is not None or outcome.error is not None:
                break
        if outcome.ready is None:
            await events.aclose()
            raise outcome.failure(hooks.retry_after_s) or ApiError(
                500, "the stream ended before it started", "internal"
            )
        if params.stream:
            body = _sse(events, outcome, hooks, path)
            path = None  # the body's generator removes it
            return StreamingResponse(body, media_type="text/event-stream", headers=outcome.headers())
        async for message in events:
            outcome.take(message)
        failure = outcome.failure(hooks.retry_after_s)
        if failure is not None:
            raise failure
        language = outcome.ready.get("language", "en")
        result = F.Transcription(outcome.segments, info.duration_s, language, params.temperature)
        body, media_type = F.render(result, params.response_format, params.granularities)
        return Response(body, media_type=media_type, headers=outcome.headers())
    except ApiError as exc:
        return exc.response()
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


async def _sse(events: AsyncIterator[dict], outcome: Outcome, hooks: Hooks, path: str) -> AsyncIterator[str]:
    """``transcript.text.delta`` per final, then ``transcript.text.done``; a failure is an
    ``error`` event (the SDK raises it) instead of a ``done`` with text missing."""
    sent = False
    try:
        async for message in events:
            tr = outcome.take(message)
            if tr is not None and tr.text.strip():
                yield F.sse(F.delta_event((" " if sent else "") + tr.text.strip()))
                sent = True
        failure = outcome.failure(hooks.retry_after_s)
        if failure is not None:
            yield F.sse(failure.body())
        else:
            yield F.sse(F.done_event(F.join_text(outcome.segments)))
    finally:
        await events.aclose()
        with contextlib.suppress(OSError):
            os.unlink(path)
