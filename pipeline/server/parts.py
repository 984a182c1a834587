"""How a feature plugs into the live server: a :class:`ServerPart`.

A part says what it wants of the server through one small interface, and the server composes a
list of them (``SpeechServer(config, engine, parts=[...])``):

* :meth:`~ServerPart.observers`: the observers it wants on a stream, given the stream
  (:class:`StreamInfo`: its id, principal, variant, role and that variant's config);
* :meth:`~ServerPart.server_observers`: the observers of the server's own events (a stream turned
  away, a deploy change, drift judged, a review): every part's, fanned out as one
  (:attr:`ServerContext.observer`), which is also where a part reports its own events;
* :meth:`~ServerPart.routes`: its HTTP and WebSocket routes, each endpoint declaring the scope it
  needs (:func:`speechpipe.pipeline.server.auth.requires`) and, where it takes a body over 64 KiB,
  its limit (:func:`speechpipe.pipeline.server.http.body_limit`);
* :meth:`~ServerPart.tick`: its periodic work (gates, drift, figures) at ``now`` on the server's
  clock; the server calls it every ``tick_s`` seconds, or a test calls ``await server.tick()``;
* :meth:`~ServerPart.start` / :meth:`~ServerPart.stop`: once the variants are loaded it is given
  a :class:`ServerContext` (never the server itself); after the streams have drained it stops.

Routes are asked for when the server starts listening, before the variants load (``/readyz``
answers then): an endpoint of a part not started yet answers 503 ``not_ready``.

Parts that need one another are given each other explicitly by whoever builds them (the drift
part's figures to the dashboard part, say); events flow through :attr:`ServerContext.observer`
(the deployment's scores reach the drift part that way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from starlette.routing import BaseRoute

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.hooks import Observer

if TYPE_CHECKING:
    from speechpipe.pipeline.deploy.deployment import Deployment
    from speechpipe.pipeline.deploy.variants import LoadedVariant
    from speechpipe.pipeline.live.actions import ReviewRequest
    from speechpipe.pipeline.scheduling.scheduler import AsrScheduler
    from speechpipe.pipeline.server.auth import SessionOwners


@dataclass(frozen=True)
class StreamInfo:
    """A stream, as the parts see it when it starts.

    Attributes:
        stream_id: its session id.
        attributes: its audio format's attributes (rate, encoding, channels).
        variant: the variant serving it; ``config`` that variant's effective config.
        role: the variant's role (``primary``, ``candidate``, ``shadow``).
        principal: who opened it (``stream``, ``anonymous``...), when known.
        routed: chosen by the deployment (False: the client named the variant, an OpenAI request
            naming its model; such a stream is not the deployment's traffic).
    """

    stream_id: str
    attributes: dict
    variant: str
    role: str
    config: Config
    principal: str | None = None
    routed: bool = True


@dataclass(frozen=True)
class ServerContext:
    """What a part is given at :meth:`ServerPart.start`: handles on what the server loaded.

    Attributes:
        config: the server's config.
        clock: the server's clock (Unix seconds; tests give one they advance).
        variants: the loaded variants, by name.
        deployment: which variant serves a stream, its ledger and gates.
        languages: the language codes the served models take.
        scheduler: the ASR scheduler every variant's jobs run on.
        observer: the server's events, fanned out to every part's :meth:`ServerPart.server_observers`.
        push: sends a message to the live stream of a session; False when it is gone.
        serve: serves a stream on a transport, pinned to a variant or routed (None); the flag
            says it is fed as fast as it reads (an upload) rather than in real time; keyword
            ``principal``: who opened it (its owner).
        stopping: set when the server starts draining (long responses end then).
        owners: who opened each session (the session routes answer its owner, reviewers and
            admins only).
    """

    config: Config
    clock: Callable[[], float]
    variants: dict[str, LoadedVariant]
    deployment: Deployment
    languages: tuple[str, ...]
    scheduler: AsrScheduler
    observer: Observer
    push: Callable[[str, dict], bool]
    serve: Callable[..., Awaitable[None]]
    stopping: asyncio.Event
    owners: SessionOwners


class ServerPart(Protocol):
    """A feature of the server (see the module docstring)."""

    name: str

    def observers(self, stream: StreamInfo) -> list[Observer]: ...

    def server_observers(self) -> list[Observer]: ...

    def routes(self) -> list[BaseRoute]: ...

    async def tick(self, now: float) -> None: ...

    async def start(self, ctx: ServerContext) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class ReviewQueue(Protocol):
    """A part that takes the segments streams send to people (the review queue), and the
    after-margins that follow them. The server gives streams the first such part whose
    ``queues_reviews`` holds."""

    queues_reviews: bool

    def enqueue(self, stream: StreamInfo, request: ReviewRequest) -> None: ...


class Part:
    """A part that wants nothing: subclasses override what they use."""

    name = "part"

    def observers(self, stream: StreamInfo) -> list[Observer]:
        return []

    def server_observers(self) -> list[Observer]:
        return []

    def routes(self) -> list[BaseRoute]:
        return []

    async def tick(self, now: float) -> None:
        return None

    async def start(self, ctx: ServerContext) -> None:
        return None

    async def stop(self) -> None:
        return None
