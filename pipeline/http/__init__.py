"""The HTTP layer of the live server: one ASGI app (Starlette) under uvicorn, serving the
WebSocket endpoint ``/stream`` and the HTTP routes on one port."""
