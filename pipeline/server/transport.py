"""An ASGI WebSocket (Starlette's) as the :class:`~speechpipe.pipeline.live.transport.Transport`
of a live stream."""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from speechpipe.pipeline.live.transport import Closed


class AsgiTransport:
    """Adapts an accepted Starlette :class:`WebSocket` to ``recv`` / ``send`` / ``close``.

    uvicorn's ``websockets-sansio`` protocol stops reading the socket until each message has
    been received here, so a stream that stops reading applies TCP backpressure to its client.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        client = websocket.client
        self.peer = f"{client.host}:{client.port}" if client else "?"
        self._closed: Closed | None = None

    async def recv(self) -> str | bytes:
        if self._closed is not None:
            raise self._closed
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self._closed = Closed(message.get("code", 1005), message.get("reason") or "")
            raise self._closed
        if message.get("bytes") is not None:
            return message["bytes"]
        return message.get("text") or ""

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            # RuntimeError: the ASGI server refuses a send after the close (uvicorn's wording).
            self._closed = Closed(getattr(exc, "code", 1006))
            raise self._closed from None

    async def close(self, code: int, reason: str) -> None:
        if self.websocket.application_state == WebSocketState.DISCONNECTED:
            return
        try:
            await self.websocket.close(code, reason)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass
