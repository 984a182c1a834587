"""What a live stream needs of its WebSocket, whatever serves it.

:class:`~speechpipe.pipeline.live.connection.Connection` talks to a :class:`Transport`; the server
gives it one over an ASGI WebSocket (:mod:`speechpipe.pipeline.server.transport`), and a test may give
it anything with the same four members.
"""

from __future__ import annotations

from typing import Protocol


class Closed(Exception):
    """The connection is closed (the client went away, or the close handshake ran)."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """A WebSocket connection, already accepted."""

    peer: str

    async def recv(self) -> str | bytes:
        """The next message; raises :class:`Closed` once the connection is closed."""
        ...

    async def send(self, text: str) -> None:
        """Send a text message; raises :class:`Closed` when the connection is gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; never raises for a connection already gone."""
        ...
