"""``speechpipe serve``'s loop: a server run until SIGTERM or SIGINT, then drained."""

from __future__ import annotations

import asyncio
import signal

from speechpipe.pipeline.server.speech_server import SpeechServer


async def serve_forever(server: SpeechServer) -> None:
    """Run until SIGTERM or SIGINT, then drain (the ``speechpipe serve`` command)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        waiting = {stopped} | ({server.loading} if server.loading is not None else set())
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server.loading in done and server.loading.exception() is not None:
            raise server.loading.exception()  # a variant that cannot load stops the server
        await stopped
    finally:
        stopped.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.shutdown()
