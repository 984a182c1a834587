"""A live stream whose client is code: the messages a WebSocket client would send come from an
iterator, the server's messages go to a queue. An HTTP request is served as such a stream, fed as
fast as the stream reads (the live core stops reading while its finals queue up, as it does for a
WebSocket client, so a long upload never floods the ASR)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from speechpipe.pipeline.live.transport import Closed, Transport

#: serves one accepted stream on a transport until it is over (the server's own handler).
ServeStream = Callable[[Transport], Awaitable[None]]


class FedTransport:
    """A :class:`~speechpipe.pipeline.live.transport.Transport` fed from ``messages``.

    After the last message ``recv`` waits until the server closes the stream (a client that said
    ``stop`` and reads the rest). :meth:`abort` is the client going away.
    """

    def __init__(self, messages: Iterator[str | bytes], peer: str) -> None:
        self.peer = peer
        self._messages = messages
        self.outbox: asyncio.Queue[dict | None] = asyncio.Queue()  # None: the stream is closed
        self._gone = asyncio.Event()
        self._closed: Closed | None = None
        self.close_code: int | None = None

    async def recv(self) -> str | bytes:
        if self._closed is None:
            # No await before the return: a recv cancelled by the connection never loses a message.
            message = next(self._messages, None)
            if message is not None:
                return message
            await self._gone.wait()
        raise self._closed

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        self.outbox.put_nowait(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        if self._closed is None:
            self.close_code = code
            self._end(Closed(code, reason))

    def abort(self) -> None:
        """The client went away (an HTTP client that disconnected)."""
        if self._closed is None:
            self._end(Closed(1006, "client went away"))

    def _end(self, closed: Closed) -> None:
        self._closed = closed
        self._gone.set()
        self.outbox.put_nowait(None)


async def run_fed(serve: ServeStream, messages: Iterator[str | bytes], peer: str) -> AsyncIterator[dict]:
    """Serve one fed stream; yields every message the server sends it, in order, until it closes.

    Closing the generator early (the HTTP client left) aborts the stream like a vanished WebSocket
    client, and waits for the server to release it.
    """
    transport = FedTransport(messages, peer)
    task = asyncio.create_task(serve(transport), name=f"fed-{peer}")
    try:
        while True:
            message = await transport.outbox.get()
            if message is None:
                break
            yield message
    finally:
        transport.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await task
