"""Clients of the live server: stream audio over the WebSocket protocol and collect what comes back.

:func:`stream_pcm` is the one client loop (used by ``speechpipe stream``, ``speechpipe mic``, the
tests and the benchmark): it sends ``start``, the audio frames, then ``stop``, while a reader task
collects ``ready``/``speech_start``/``partial``/``final``/``error``/``end`` messages.
:func:`file_frames` turns an audio file into PCM frames at its own rate (the server resamples).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speechpipe.pipeline.protocol import Start
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


async def stream_pcm(
    url: str,
    start: Start,
    frames: AsyncIterable[bytes],
    *,
    token: str | None = None,
    on_message: Callable[[dict], None] | None = None,
    open_timeout: float = 30.0,
    end_timeout: float = 120.0,
) -> StreamResult:
    """Stream ``frames`` to the server and collect the results until ``end`` (or the close).

    Stops sending early if the server reports an error or closes. ``token`` goes in an
    ``Authorization: Bearer`` header.
    """
    result = StreamResult()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    t0 = time.monotonic()
    async with connect(
        url, additional_headers=headers, open_timeout=open_timeout, max_size=None, compression=None
    ) as ws:
        stopped = asyncio.Event()

        async def read() -> None:
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    result.take(msg)
                    if msg.get("type") == "error":
                        stopped.set()  # stop sending: the stream is over
                    if on_message is not None:
                        on_message(msg)
            except ConnectionClosed:
                pass
            finally:
                stopped.set()

        reader = asyncio.create_task(read())
        try:
            await ws.send(json.dumps(start.to_dict()))
            async for frame in frames:
                if stopped.is_set():
                    break
                began = time.monotonic()
                await ws.send(frame)
                result.sent_s += len(frame) / (start.bytes_per_frame * start.sample_rate)
                result.sends.append((result.sent_s, began))
            if not stopped.is_set():
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(reader, end_timeout)
        finally:
            reader.cancel()
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    result.wall_s = time.monotonic() - t0
    return result


async def stream_file(
    url: str,
    path: str | Path,
    *,
    speed: float = 1.0,
    frame_ms: float = 20.0,
    token: str | None = None,
    partials: bool = True,
    on_message: Callable[[dict], None] | None = None,
) -> StreamResult:
    """Send one file at ``speed`` times real time (0 = as fast as possible) and collect the results."""
    start = file_start(path)
    if not partials:
        start = Start(start.sample_rate, start.encoding, start.channels, start.language, partials=False)
    frames = paced(file_frames(path, frame_ms), frame_ms / 1000, speed)
    return await stream_pcm(url, start, frames, token=token, on_message=on_message)
