"""Helpers for the live-server tests: a real server on 127.0.0.1 in a background event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import replace
from typing import Self

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.hooks import StreamEnded, StreamStarted
from speechpipe.pipeline.server.speech_server import SpeechServer


class RecordingObserver:
    """Records the session life-cycle events (the telemetry contract: every stream started ends)."""

    def __init__(self, log: list) -> None:
        self.log = log

    def on_event(self, event) -> None:
        if isinstance(event, StreamStarted):
            self.log.append(("started", event.stream_id))
        elif isinstance(event, StreamEnded):
            self.log.append(("ended", event.stream_id))


class ServerThread:
    """``with ServerThread(engine, max_streams=2) as srv:`` serves on ``srv.url`` until the block ends."""

    def __init__(
        self,
        engine,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        reviewer_token: str | None = None,
        config: Config | None = None,
        **settings,
    ) -> None:
        config = config or Config()
        config = replace(config, server=replace(config.server, host="127.0.0.1", port=0, **settings))
        self.hook_log: list = []
        self.loop = asyncio.new_event_loop()
        self.server = SpeechServer(
            config,
            engine,
            token=token,
            admin_token=admin_token,
            reviewer_token=reviewer_token,
            stream_observers=lambda sid, attrs, *_variant: [RecordingObserver(self.hook_log)],
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def call(self, coro, timeout: float = 120.0):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> set[str]:
        """Names of the tasks alive on the server's loop."""

        async def names():
            return {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}

        return self.call(names())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        self.call(self.server.start())
        self.call(self.server.wait_ready())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.server.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_telemetry(srv: ServerThread, telemetry) -> ServerThread:
    """``srv`` reporting through real ``telemetry`` (its /metrics, stream metrics, drift gauges),
    as ``speechpipe serve`` wires it; set before the server starts."""
    from speechpipe.pipeline.hooks import Observers
    from speechpipe.pipeline.observability import server_telemetry

    kw = server_telemetry(telemetry)
    s = srv.server
    s.metrics, s.drift_telemetry, s.labelled = kw.metrics, kw.drift_telemetry, kw.labelled
    s.review_telemetry = kw.review_telemetry
    s.stream_observers = kw.stream_observers
    s.observer = Observers([kw.observer])
    return srv
