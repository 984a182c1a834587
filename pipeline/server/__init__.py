"""The live server: :class:`~speechpipe.pipeline.server.speech_server.SpeechServer` composed of
parts (:mod:`.parts`: what a feature gives the server and what it is given), one ASGI app
(Starlette, :mod:`.app`) under uvicorn (:mod:`.runner`) serving the WebSocket endpoint ``/stream``
and every part's routes on one port, principals and scopes (:mod:`.auth`), the body limit and the
JSON errors the routes share (:mod:`.http`), the WebSocket as a transport (:mod:`.transport`), its
settings and tokens."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("auth", "http", "keys", "parts", "serve_loop", "settings", "speech_server", "tokens", "transport")
