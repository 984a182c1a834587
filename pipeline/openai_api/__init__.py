"""OpenAI-compatible endpoints: ``POST /v1/audio/transcriptions``, ``GET /v1/models`` and the
transcription sessions of the Realtime API (``/v1/realtime``), so the official ``openai`` SDKs and
the apps built on them use speechpipe unchanged (docs/openai.md).

Every request is a live stream: an upload is fed to the same
:class:`~speechpipe.pipeline.live.connection.Connection` a WebSocket client gets (:mod:`.fed`), so
admission, the deployment's router, the VAD, the scheduler, drift and telemetry apply to it as to
any stream; a realtime session translates the Realtime API's events onto the live protocol
(:mod:`.realtime_core`).
"""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("part",)
