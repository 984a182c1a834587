"""``speechpipe eval``: pipeline variants over labelled datasets, and why their results differ.

The variants (a config's ``[variants.*]``, ``--variant``, ``--sweep``) come from
:mod:`speechpipe.pipeline.variants`, as the live server's do. Here: ``datasets`` (files,
references, labels), ``collector`` (what each stream's session reports), ``reference_timing``
(reference word times, once per file), ``runner`` (the run and eval.json), ``cli`` (the command).
The figures are computed in :mod:`speechpipe.pipeline.evaluate.quality.evaluation` and
:mod:`speechpipe.pipeline.evaluate.quality.attribution`, the page in
:mod:`speechpipe.pipeline.evaluate.report.page`; docs/evaluation.md documents the method and eval.json.
"""

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("cli", "quality", "runner")  # runner: the deploy golden gate runs an evaluation
