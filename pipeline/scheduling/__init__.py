"""Running the live streams' ASR work: the pure queue (:mod:`.asr_queue`), the worker threads
over it (:mod:`.scheduler`) and admission by measured capacity (:mod:`.admission`)."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("admission", "scheduler")
