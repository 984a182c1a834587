"""Clients of the live server: stream audio over the WebSocket protocol and collect what comes back.

:func:`stream_pcm` is the one client loop (used by ``speechpipe stream``, ``speechpipe mic``, the
tests and the benchmark): it sends ``start``, the audio frames, then ``stop``, while a reader task
collects ``ready``/``speech_start``/``partial``/``final``/``error``/``end`` messages.
:func:`file_frames` turns an audio file into PCM frames at its own rate (the server resamples).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from speechpipe.pipeline.protocol import Resume, Start
from speechpipe.pipeline.server.settings import DEFAULT_URL  # noqa: F401 - part of this module's interface
from speechpipe.stages.audio import header, iter_file_blocks
from speechpipe.stages.pcm import to_mono


@dataclass
class StreamResult:
    """Everything a stream got back."""

    ready: dict | None = None
    finals: list[dict] = field(default_factory=list)
    partials: list[dict] = field(default_factory=list)
    speech_starts: list[dict] = field(default_factory=list)
    discarded: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    end: dict | None = None
    close_code: int | None = None
    close_reason: str = ""
    sent_s: float = 0.0
    wall_s: float = 0.0
    #: (seconds of audio sent once this frame is, monotonic time its send began), per frame
    sends: list[tuple[float, float]] = field(default_factory=list, repr=False)
    #: monotonic time each final arrived, in the order of ``finals``
    final_times: list[float] = field(default_factory=list, repr=False)
    #: the session (from the first ``ready``): what a resume names
    session: str | None = None
    #: each resume: ``broke_at`` (monotonic), ``resume_s`` (from the break to the new ``ready``),
    #: ``from_s`` and ``segment`` (where it went on)
    resumes: list[dict] = field(default_factory=list)

    def take(self, msg: dict) -> None:
        """File one server message where it belongs."""
        kind = msg.get("type")
        if kind == "ready":
            self.ready = msg
        elif kind == "final":
            self.finals.append(msg)
            self.final_times.append(time.monotonic())
        elif kind == "partial":
            self.partials.append(msg)
        elif kind == "speech_start":
            self.speech_starts.append(msg)
        elif kind == "discarded":
            self.discarded.append(msg)
        elif kind == "error":
            self.errors.append(msg)
        elif kind == "end":
            self.end = msg

    @property
    def text(self) -> str:
        """The finals joined, in segment order."""
        return " ".join(f["text"] for f in sorted(self.finals, key=lambda f: f["segment"]) if f["text"])

    @property
    def latencies(self) -> list[float]:
        """The latency of every final that was transcribed (lost ones have none)."""
        return [f["latency_s"] for f in self.finals if "latency_s" in f]

    def observed_latency(self, k: int) -> float | None:
        """The latency of final ``k`` as this client saw it: from the moment it began sending the
        frame that holds the segment's end to the moment the final arrived (None if unknown). The
        server's ``latency_s`` starts after the frame arrived and ends before the final is sent, so
        it is never larger."""
        if not self.sends:
            return None
        end = self.finals[k]["end"]
        # A segment that ends with the stream (its end rounded up by resampling) ends in the last frame.
        began = next((began for sent, began in self.sends if sent >= end - 1e-6), self.sends[-1][1])
        return self.final_times[k] - began

    @property
    def lost(self) -> int:
        """Segments the server opened that got no transcript: a final marked lost, or neither a
        final nor a discard."""
        started = {m["segment"] for m in self.speech_starts}
        done = {f["segment"] for f in self.finals if f.get("status", "ok") == "ok"}
        return len(started - done - {d["segment"] for d in self.discarded})


def pcm_s16le(x: np.ndarray) -> bytes:
    """float32 (frames,) or (frames, channels) in [-1, 1] -> interleaved little-endian int16 bytes."""
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def file_start(path: str | Path) -> Start:
    """The ``start`` message for a file sent as is (native rate; mono or stereo)."""
    info = header(path)
    return Start(sample_rate=info.sample_rate, channels=2 if info.channels == 2 else 1)


def file_frames(path: str | Path, frame_ms: float = 20.0) -> Iterable[bytes]:
    """A file's audio as s16le frames of ``frame_ms`` at its native rate (more than two channels
    are mixed down to mono)."""
    info = header(path)
    n = max(1, round(info.sample_rate * frame_ms / 1000))
    carry = np.zeros((0, 2 if info.channels == 2 else 1), dtype=np.float32)
    for block in iter_file_blocks(path):
        if info.channels > 2:
            block = to_mono(block)[:, None]
        block = np.concatenate([carry, block]) if carry.size else block
        whole = len(block) // n * n
        for i in range(0, whole, n):
            yield pcm_s16le(block[i : i + n])
        carry = block[whole:]
    if len(carry):
        yield pcm_s16le(carry)


async def paced(frames: Iterable[bytes], frame_s: float, speed: float) -> AsyncIterator[bytes]:
    """Yield ``frames`` at ``speed`` times real time (0: as fast as possible), without drift."""
    t0 = time.monotonic()
    for k, frame in enumerate(frames):
        if speed > 0:
            delay = t0 + k * frame_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the reader run
        yield frame


#: errors after which a resuming client tries again (the next replica may serve it).
RETRYABLE = ("session_open", "resume_unavailable", "shutting_down", "server_busy", "not_ready")
#: seconds between attempts to resume (the last repeats).
RESUME_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


#: the most audio a resuming client keeps uncovered by finals (a long silence): beyond it the
#: oldest goes, and a resume starts where the kept audio does.
MAX_KEPT_S = 300.0


class _Kept:
    """The audio sent and not yet covered by a final, by stream time: what a resume sends again."""

    def __init__(self, start: Start) -> None:
        self.start = start
        self.frames: deque[tuple[float, bytes]] = deque()  # (stream time of the frame's first sample, frame)
        self.sent_frames = 0  # sample frames sent so far (stream time = this / rate)

    @property
    def first_s(self) -> float:
        """The stream time the kept audio begins at."""
        return self.frames[0][0] if self.frames else self.sent_frames / self.start.sample_rate

    def sent(self, frame: bytes) -> None:
        self.frames.append((self.sent_frames / self.start.sample_rate, frame))
        self.sent_frames += len(frame) // self.start.bytes_per_frame
        while self.frames and self.sent_frames / self.start.sample_rate - self.frames[0][0] > MAX_KEPT_S:
            self.frames.popleft()

    def covered(self, until_s: float) -> None:
        """A final covers the audio up to ``until_s``: what lies wholly before it is let go."""
        rate, bpf = self.start.sample_rate, self.start.bytes_per_frame
        while self.frames and self.frames[0][0] + len(self.frames[0][1]) / bpf / rate <= until_s:
            self.frames.popleft()

    def since(self, from_s: float) -> list[bytes]:
        """The kept audio from ``from_s`` on (the first frame cut at it)."""
        rate, bpf = self.start.sample_rate, self.start.bytes_per_frame
        out = []
        for t0, frame in self.frames:
            skip = max(0, round((from_s - t0) * rate)) * bpf
            if skip < len(frame):
                out.append(frame[skip:])
        return out


async def stream_pcm(
    url: str,
    start: Start,
    frames: AsyncIterable[bytes],
    *,
    token: str | None = None,
    on_message: Callable[[dict], None] | None = None,
    open_timeout: float = 30.0,
    end_timeout: float = 120.0,
    reconnect: int = 0,
) -> StreamResult:
    """Stream ``frames`` to the server and collect the results until ``end`` (or the close).

    Stops sending early if the server reports an error or closes. ``token`` goes in an
    ``Authorization: Bearer`` header.

    ``reconnect``: how many times a stream whose connection breaks (its server died or stopped:
    no ``end``, or ``end`` with reason ``shutdown`` before the audio was all sent) is resumed:
    the client connects again (through a load balancer, to another replica) with ``resume`` in
    ``start`` (docs/protocol.md) and sends again the audio that no final covers yet, then the
    rest. Finals are never duplicated (one per segment index); ``StreamResult.resumes`` says
    when each resume happened and how long it took.
    """
    result = StreamResult()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    t0 = time.monotonic()
    kept = _Kept(start)
    source = aiter(frames)
    attempts = 0
    while True:
        resume = None
        if result.session is not None:  # on from the last segment the client has the outcome of
            last = max(result.finals + result.discarded, key=lambda f: f["segment"], default=None)
            from_s, segment = (last["end"], last["segment"] + 1) if last else (0.0, 0)
            resume = Resume(result.session, max(from_s, kept.first_s), segment)
        try:
            done = await _connection(
                url, start, resume, source, kept, result, headers, on_message, open_timeout, end_timeout
            )
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:  # could not connect at all
            if result.session is None or attempts >= reconnect:
                raise
            result.errors.append({"type": "error", "code": "reconnect_failed", "message": str(exc)})
            done = False
        broke_at = time.monotonic()  # when this connection was seen to end
        if done or result.session is None or attempts >= reconnect:
            break
        await asyncio.sleep(RESUME_BACKOFF_S[min(attempts, len(RESUME_BACKOFF_S) - 1)])
        attempts += 1
        result.resumes.append({"broke_at": broke_at})
    result.wall_s = time.monotonic() - t0
    return result


async def _connection(
    url: str,
    start: Start,
    resume: Resume | None,
    source: AsyncIterator[bytes],
    kept: _Kept,
    result: StreamResult,
    headers: dict | None,
    on_message: Callable[[dict], None] | None,
    open_timeout: float,
    end_timeout: float,
) -> bool:
    """One connection of a stream; True when the stream is over (``end`` after all the audio, or
    an error not worth a retry), False when it broke and may be resumed."""
    opened = time.monotonic()
    first = dataclasses.replace(start, resume=resume)
    state = {"end": None, "error": None, "all_sent": False}
    async with connect(
        url, additional_headers=headers, open_timeout=open_timeout, max_size=None, compression=None
    ) as ws:
        stopped = asyncio.Event()

        async def read() -> None:
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    kind = msg.get("type")
                    if kind == "ready":
                        if resume is not None and result.resumes:
                            result.resumes[-1] |= {
                                "session": resume.session,
                                "from_s": resume.from_s,
                                "segment": resume.segment,
                                "ready_s": time.monotonic() - opened,
                            }
                            result.resumes[-1]["resume_s"] = time.monotonic() - result.resumes[-1]["broke_at"]
                        if result.session is None:
                            result.session = msg.get("session")
                            result.take(msg)
                    elif kind in ("final", "discarded"):
                        if any(f["segment"] == msg["segment"] for f in result.finals + result.discarded):
                            continue  # never twice (a server cannot send one again after a resume)
                        result.take(msg)
                        kept.covered(msg["end"])
                    elif kind == "error" and resume is not None and msg.get("code") in RETRYABLE:
                        result.resumes[-1].setdefault("errors", []).append(msg)  # tried again, not the stream's
                    else:
                        result.take(msg)
                    if kind == "error":
                        state["error"] = msg.get("code")
                        stopped.set()  # stop sending: the stream is over
                    elif kind == "end":
                        state["end"] = msg.get("reason")
                    if on_message is not None:
                        on_message(msg)
            except ConnectionClosed:
                pass
            finally:
                stopped.set()

        reader = asyncio.create_task(read())
        try:
            await ws.send(json.dumps(first.to_dict()))
            if resume is not None:
                for frame in kept.since(resume.from_s):
                    if stopped.is_set():
                        break
                    await ws.send(frame)
            while not stopped.is_set():
                frame = await anext(source, None)
                if frame is None:
                    state["all_sent"] = True
                    break
                began = time.monotonic()
                kept.sent(frame)  # kept before it is sent: a send that breaks keeps it too
                await ws.send(frame)
                result.sent_s += len(frame) / (start.bytes_per_frame * start.sample_rate)
                result.sends.append((result.sent_s, began))
            if state["all_sent"] and not stopped.is_set():
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(reader, end_timeout)
        finally:
            reader.cancel()
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    if state["error"] is not None:
        return state["error"] not in RETRYABLE or result.session is None
    if state["end"] is None:
        return False  # broke: no end
    return state["all_sent"] or state["end"] != "shutdown"


async def stream_file(
    url: str,
    path: str | Path,
    *,
    speed: float = 1.0,
    frame_ms: float = 20.0,
    token: str | None = None,
    partials: bool = True,
    on_message: Callable[[dict], None] | None = None,
    reconnect: int = 0,
) -> StreamResult:
    """Send one file at ``speed`` times real time (0 = as fast as possible) and collect the results
    (``reconnect``: see :func:`stream_pcm`)."""
    start = file_start(path)
    if not partials:
        start = Start(start.sample_rate, start.encoding, start.channels, start.language, partials=False)
    frames = paced(file_frames(path, frame_ms), frame_ms / 1000, speed)
    return await stream_pcm(url, start, frames, token=token, on_message=on_message, reconnect=reconnect)
