"""The OpenAI-compatible routes of a server (see the package docstring and docs/openai.md)."""

from __future__ import annotations

import time
from typing import Protocol

from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from speechpipe.pipeline.config import ServerSettings
from speechpipe.pipeline.deploy.deployment import Deployment
from speechpipe.pipeline.deploy.router import StreamRouter
from speechpipe.pipeline.live.transport import Transport
from speechpipe.pipeline.openai_api.realtime import realtime_endpoint
from speechpipe.pipeline.openai_api.transcriptions import Hooks, models_endpoint, transcriptions_endpoint


class Served(Protocol):
    """What the routes read of the server."""

    token: str | None
    settings: ServerSettings
    variants: dict
    deployment: Deployment | None
    router: StreamRouter | None

    async def serve_transport(self, ws: Transport, variant: str | None = None, fed: bool = False) -> None: ...


def _models(server: Served) -> tuple[dict[str, str], str] | None:
    deployment = server.deployment
    if deployment is None or not server.variants:
        return None
    models = {name: v.engine.model_name for name, v in server.variants.items()}
    controller = deployment.controller
    primary = next((n for n in models if controller.role_of(n) == "primary"), controller.primary)
    return models, primary


def openai_routes(server: Served) -> list[BaseRoute]:
    """``/v1/audio/transcriptions``, ``/v1/models`` and ``/v1/realtime`` on ``server``."""
    s = server.settings
    hooks = Hooks(
        token=server.token,
        serve=server.serve_transport,
        models=lambda: _models(server),
        max_upload_bytes=s.max_upload_bytes,
        max_frame_bytes=s.max_frame_bytes,
        max_audio_s=s.max_stream_s,
        retry_after_s=s.retry_after_s,
        created=int(time.time()),
        languages=lambda: server.router.languages if server.router is not None else ("en",),
    )

    async def transcriptions(request: Request):
        return await transcriptions_endpoint(request, hooks)

    async def models(request: Request):
        return await models_endpoint(request, hooks)

    async def realtime(websocket: WebSocket) -> None:
        await realtime_endpoint(websocket, hooks)

    return [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        WebSocketRoute("/v1/realtime", realtime),
    ]
