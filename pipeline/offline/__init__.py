"""Files and folders: the offline runner (:mod:`.runner`), its synchronous session driver
(:mod:`.driver`), result files (:mod:`.outputs`), the progress bar, the allocator tuning and Ray
(:mod:`.ray_runner`)."""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("allocator", "outputs", "ray_runner", "runner")
