"""The OpenAI-compatible routes as a part of the live server (see the package docstring and
docs/openai.md): ``POST /v1/audio/transcriptions``, ``GET /v1/models`` and ``/v1/realtime``.

They need the ``stream`` scope (the stream token or a key with ``stream`` is their API key; the
session an upload or a realtime session opens belongs to that principal) and answer a caller without it
in OpenAI's shape (401 ``invalid_api_key``); an upload is bounded by ``server.max_upload_bytes``
(413 ``file_too_large``), both by the server's middleware before the endpoint runs.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from speechpipe.pipeline.config import ServerSettings
from speechpipe.pipeline.live.transport import Transport
from speechpipe.pipeline.openai_api.errors import ApiError, unauthorized
from speechpipe.pipeline.openai_api.realtime import realtime_endpoint
from speechpipe.pipeline.openai_api.transcriptions import Hooks, models_endpoint, transcriptions_endpoint
from speechpipe.pipeline.server.auth import STREAM, requires
from speechpipe.pipeline.server.http import body_limit
from speechpipe.pipeline.server.parts import Part, ServerContext


def refused(_conn: HTTPConnection, _scope: str, _granted: bool) -> Response:
    """A caller without the API key, in OpenAI's shape."""
    return unauthorized().response()


def upload_too_large(limit: int) -> Response:
    return ApiError(413, f"the upload exceeds {limit} bytes (server.max_upload_bytes)", "file_too_large").response()


class OpenAIPart(Part):
    """See the module docstring; ``settings``: the server's limits (the upload's, the stream's)."""

    name = "openai"

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.ctx: ServerContext | None = None
        self.hooks = Hooks(
            serve=self._serve,
            models=self._models,
            max_frame_bytes=settings.max_frame_bytes,
            max_audio_s=settings.max_stream_s,
            retry_after_s=settings.retry_after_s,
            created=int(time.time()),
            languages=self._languages,
        )

    async def start(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _serve(self, transport: Transport, variant: str | None, fed: bool, principal: str | None = None) -> None:
        if self.ctx is None:  # not reached: the models are unknown until the part starts
            raise ApiError(503, "the models are still loading", "not_ready", retry_after_s=self.settings.retry_after_s)
        await self.ctx.serve(transport, variant, fed, principal=principal)

    def _hooks_of(self, conn: HTTPConnection) -> Hooks:
        """The hooks of one request: its streams belong to the principal that made it (an upload's
        session and a realtime session are its own, like a WebSocket stream)."""
        principal = conn.user.display_name
        return replace(self.hooks, serve=functools.partial(self._serve, principal=principal))

    def _models(self) -> tuple[dict[str, str], str] | None:
        """The served variants' model names and the primary's variant, None while they load."""
        if self.ctx is None:
            return None
        models = {name: v.engine.model_name for name, v in self.ctx.variants.items()}
        controller = self.ctx.deployment.controller
        primary = next((n for n in models if controller.role_of(n) == "primary"), controller.primary)
        return models, primary

    def _languages(self) -> tuple[str, ...]:
        return self.ctx.languages if self.ctx is not None else ("en",)

    def routes(self) -> list[BaseRoute]:
        upload = body_limit(self.settings.max_upload_bytes, upload_too_large)(self.transcriptions)
        return [
            Route("/v1/audio/transcriptions", upload, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            WebSocketRoute("/v1/realtime", self.realtime),
        ]

    @requires(STREAM, refused)
    async def transcriptions(self, request: Request) -> Response:
        return await transcriptions_endpoint(request, self._hooks_of(request))

    @requires(STREAM, refused)
    async def models(self, request: Request) -> Response:
        return await models_endpoint(request, self.hooks)

    @requires(STREAM, refused)
    async def realtime(self, websocket: WebSocket) -> None:
        await realtime_endpoint(websocket, self._hooks_of(websocket))
