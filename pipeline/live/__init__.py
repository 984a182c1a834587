"""One live stream: a Sans-I/O core (:mod:`~speechpipe.pipeline.live.core`: events in, actions out,
time passed in) and the asyncio connection that does its I/O and timers
(:mod:`~speechpipe.pipeline.live.connection`)."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("actions", "connection", "transport")
