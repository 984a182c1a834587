"""Running the ASGI app under uvicorn inside the server's own event loop, on a socket the server
bound itself, with the WebSocket settings of a live server; and the refusal of a stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from starlette.applications import Starlette

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.live.transport import Closed, Transport
from speechpipe.pipeline.protocol import ProtocolError


class HttpServer(uvicorn.Server):
    """uvicorn without its signal handlers: the speech server handles SIGTERM and SIGINT itself,
    draining the streams before the HTTP server stops."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def start_http(app: Starlette, sock: socket.socket, max_message_bytes: int) -> tuple[HttpServer, asyncio.Task]:
    """Serve ``app`` on ``sock`` (bound and listening); returns once it accepts connections."""
    config = uvicorn.Config(
        app,
        ws="websockets-sansio",
        ws_max_size=max_message_bytes,
        ws_per_message_deflate=False,  # PCM does not compress; spare the CPU
        # The keepalive closes a client that answers no ping (1011 "keepalive ping timeout",
        # docs/protocol.md) after 20 + 20 s; a client that does not read what it is sent is closed
        # first by the stream's own bound (slow_reader, server.slow_reader_s: see live/connection.py).
        ws_ping_interval=20,
        ws_ping_timeout=20,
        lifespan="on",  # the app's startup and shutdown run (parts start with the variants: see app.py)
        log_config=None,
        access_log=False,
        server_header=False,
        headers=[("server", "speechpipe")],
        timeout_graceful_shutdown=5,
    )
    server = HttpServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    return server, task


def stop_listening(server: HttpServer) -> None:
    """Accept no new connections; the open ones go on."""
    for listener in server.servers:
        listener.close()


async def reject(ws: Transport, exc: ProtocolError, extra: dict) -> None:
    """Send ``exc`` as an ``error`` message and close with its code."""

    async def discard() -> None:  # what the client sends meanwhile must not stall the close
        try:
            while True:
                await ws.recv()
        except Closed:
            pass

    reader = asyncio.create_task(discard())
    try:
        await ws.send(P.dumps(P.error(exc.code, exc.message, **extra)))
        await ws.close(exc.close_code, exc.message[:120])
    except Closed:
        pass
    finally:
        reader.cancel()
