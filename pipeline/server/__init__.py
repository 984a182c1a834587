"""The live server: :class:`~speechpipe.pipeline.server.speech_server.speech_server.SpeechServer` composed of
its parts, one ASGI app (Starlette) under uvicorn serving the WebSocket endpoint ``/stream`` and the
HTTP routes on one port (:mod:`.app`, :mod:`.runner`, :mod:`.transport`), its settings and tokens."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("app", "serve_loop", "settings", "speech_server", "tokens", "transport")
