"""Levels of automation and the human review queue (docs/review.md)."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("cli", "part", "policy", "settings")
