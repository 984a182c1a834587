"""The ``speechpipe`` command line: :func:`main` (:mod:`.main`), the shared flags (:mod:`.args`)
and the live commands (:mod:`.live`)."""

from speechpipe.pipeline.cli.main import main

__all__ = ["main"]

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("args",)
