"""Clients of the live server: the streaming client loop (:mod:`.client`) and the microphone
(:mod:`.mic`)."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("client", "mic")
