"""``/v1/realtime``: a Realtime API transcription session served as a live stream.

The live :class:`~speechpipe.pipeline.live.connection.Connection` talks to a
:class:`RealtimeTransport`, which turns the client's Realtime events into live messages on the
way in and the live messages into Realtime events on the way out
(:class:`~speechpipe.pipeline.openai_api.realtime_core.RealtimeTranslator`). The model is chosen
when connecting (``?model=``, as the SDK's ``realtime.connect(model=...)`` sends it).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from starlette.websockets import WebSocket

from speechpipe.pipeline.live.transport import Closed
from speechpipe.pipeline.openai_api.errors import ApiError
from speechpipe.pipeline.openai_api.realtime_core import RealtimeError, RealtimeTranslator, error_event
from speechpipe.pipeline.openai_api.transcriptions import Hooks, resolve_model
from speechpipe.pipeline.server.transport import AsgiTransport


class RealtimeTransport:
    """The live stream's :class:`~speechpipe.pipeline.live.transport.Transport` over a Realtime
    client's WebSocket (an :class:`~speechpipe.pipeline.server.transport.AsgiTransport` underneath)."""

    def __init__(self, websocket: WebSocket, translator: RealtimeTranslator) -> None:
        self.socket = AsgiTransport(websocket)
        self.translator = translator
        self.peer = f"realtime:{self.socket.peer}"
        self._pending: deque[str | bytes] = deque()
        self._lock = asyncio.Lock()  # the stream's writer and the reader both send events

    async def recv(self) -> str | bytes:
        while not self._pending:
            data = await self.socket.recv()  # Closed when the client has gone
            try:
                step = self.translator.client_event(data)
            except RealtimeError as exc:
                await self.send_events([error_event(exc.code, exc.message, exc.event_id, exc.param)])
                continue
            await self.send_events(step.events)
            self._pending.extend(step.live)
        return self._pending.popleft()

    async def send(self, text: str) -> None:
        await self.send_events(self.translator.server_message(json.loads(text)))

    async def send_events(self, events: list[dict]) -> None:
        async with self._lock:
            for event in events:
                await self.socket.send(json.dumps(event, ensure_ascii=False))

    async def close(self, code: int, reason: str) -> None:
        await self.socket.close(code, reason)


async def realtime_endpoint(websocket: WebSocket, hooks: Hooks) -> None:
    """Serve one Realtime transcription session (its API key checked by the server's authentication)."""
    try:
        choice = resolve_model(websocket.query_params.get("model", ""), hooks)
    except ApiError as exc:
        await websocket.send_denial_response(exc.response())
        return
    await websocket.accept()
    translator = RealtimeTranslator(choice.model, hooks.languages())
    transport = RealtimeTransport(websocket, translator)
    try:
        await transport.send_events(translator.opened().events)
    except Closed:
        return
    await hooks.serve(transport, choice.variant, False)  # a microphone's pace
