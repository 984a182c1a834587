"""The live dashboard's data: figures from ``/metrics``, the deploy state and drift, in one snapshot."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("part",)
