"""Monitoring in production: a baseline profile of per-segment features and drift against it."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("cli", "part", "quality")
