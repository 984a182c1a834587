"""Helpers for the live-server tests: a real server on 127.0.0.1 in a background event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import replace
from typing import Self

from speechpipe.pipeline.cli.live import server_parts
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.deploy import share_of
from speechpipe.pipeline.hooks import StreamEnded, StreamStarted
from speechpipe.pipeline.server.auth import Principals
from speechpipe.pipeline.server.parts import Part, StreamInfo
from speechpipe.pipeline.server.speech_server import SpeechServer

__all__ = ["ObserversPart", "RecordingObserver", "RecordingPart", "ServerThread", "free_port"]


class RecordingObserver:
    """Records the session life-cycle events (the telemetry contract: every stream started ends)."""

    def __init__(self, log: list) -> None:
        self.log = log

    def on_event(self, event) -> None:
        if isinstance(event, StreamStarted):
            self.log.append(("started", event.stream_id))
        elif isinstance(event, StreamEnded):
            self.log.append(("ended", event.stream_id))


class RecordingPart(Part):
    """Puts a :class:`RecordingObserver` on every stream."""

    name = "recording"

    def __init__(self, log: list) -> None:
        self.log = log

    def observers(self, stream: StreamInfo) -> list:
        return [RecordingObserver(self.log)]


class ObserversPart(Part):
    """Puts the observers ``make(stream)`` gives on every stream (a test's own)."""

    name = "test-observers"

    def __init__(self, make) -> None:
        self.make = make

    def observers(self, stream: StreamInfo) -> list:
        return list(self.make(stream))


class ServerThread:
    """``with ServerThread(engine, max_streams=2) as srv:`` serves on ``srv.url`` until the block ends.

    The server has the parts ``speechpipe serve`` gives it (:func:`server_parts`, with real
    ``telemetry`` when given one), a part recording every stream's start and end in ``hook_log``,
    and the test's own ``parts``. It does not tick on its own: a test runs the parts' periodic
    work with :meth:`tick`, at the time of ``clock`` (the server's clock: the wall clock unless
    the test gives its own).
    """

    def __init__(
        self,
        engine,
        *,
        token: str | None = None,
        admin_token: str | None = None,
        reviewer_token: str | None = None,
        keys: tuple = (),
        config: Config | None = None,
        telemetry=None,
        parts: list | None = None,
        clock=time.time,
        **settings,
    ) -> None:
        config = config or Config()
        config = replace(config, server=replace(config.server, host="127.0.0.1", port=0, **settings))
        self.hook_log: list = []
        self.loop = asyncio.new_event_loop()
        self.clock = clock
        self.server = SpeechServer(
            config,
            engine,
            parts=server_parts(config, telemetry) + [RecordingPart(self.hook_log)] + list(parts or []),
            principals=Principals.from_tokens(stream=token, admin=admin_token, reviewer=reviewer_token, keys=keys),
            clock=clock,
            tick_s=None,
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def part(self, name: str):
        """The server's part called ``name`` (``review``, ``drift``, ``deploy``...)."""
        return next(p for p in self.server.parts if p.name == name)

    def released(self, session: str, timeout: float = 30.0) -> None:
        """Wait until the server has let go of the stream ``session``: its connection has handled
        every action of its end (the review's last after-margins handed over, ``StreamEnded``
        reported), which the client's ``end`` comes before."""
        deadline = time.monotonic() + timeout
        while session in self.server.streams:
            assert time.monotonic() < deadline, "the stream never closed on the server"
            time.sleep(0.01)

    def tick(self, timeout: float = 30.0) -> None:
        """Run every part's periodic work now (the deploy gates, drift, the review figures), once
        the streams the test opened have closed: a stream's observers have had all of its events
        by then (its connection drains their queue before it closes)."""
        deadline = time.monotonic() + timeout
        while self.server.streams:
            assert time.monotonic() < deadline, "streams still open"
            time.sleep(0.02)
        self.call(self.server.tick())

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


def key_for(candidate: str, below: float, on_candidate: bool) -> str:
    """A client key the canary routes to the candidate (or not) at a weight of ``below``."""
    for k in range(10_000):
        key = f"client-{k}"
        if (share_of(f"client:{key}", candidate) < below) == on_candidate:
            return key
    raise AssertionError("no key found")


def full_window(config: Config | None = None) -> Config:
    """``config`` (default: the defaults) with the encoder reading Whisper's full 30 s for every
    call (``asr.context_s`` = 0), for tests of identities that hold only there: with a short
    context a live final's words depend on the length of what shares its call. JFK sent at once
    (its finals meet in calls) then reads "and so am I fellow Americans", and a twin shadow that
    decodes each final alone agrees with the primary on fewer than all finals."""
    config = config or Config()
    return replace(config, asr=replace(config.asr, context_s=0.0))


def canary_config(candidate: str, tmp_path) -> Config:
    """A canary of ``candidate`` at steps [0.5, 1.0] that judges its gates on little evidence (one
    stream a step, two finals, ten feedback words), its state under ``tmp_path``, with two
    candidates to choose from: ``mute`` (its guard drops every segment: finals come back empty)
    and ``twin`` (the same pipeline under a new name)."""
    return Config().with_overrides(
        {
            "deploy.mode": "canary",
            "deploy.candidate": candidate,
            "deploy.steps": [0.5, 1.0],
            "deploy.step_min_streams": 1,
            "deploy.step_min_s": 0.0,
            "deploy.gates.min_finals": 2,
            "deploy.gates.min_feedback_words": 10,
            "deploy.state_file": str(tmp_path / "deploy.db"),
            "variants.mute.asr.min_avg_logprob": -0.0001,
            "variants.twin.vad.backend": Config().vad.backend,
        }
    )
