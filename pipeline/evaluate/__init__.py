"""``speechpipe eval``: pipeline variants over labelled datasets, and why their results differ.

``variants`` (named configs, sweeps), ``datasets`` (files, references, labels), ``collector`` (what
each stream's session reports), ``reference_timing`` (reference word times, once per file),
``runner`` (the run and eval.json), ``cli`` (the command). The figures are computed in
:mod:`speechpipe.telemetry.evaluation` and :mod:`speechpipe.telemetry.attribution`, the page in
:mod:`speechpipe.telemetry.report`; docs/evaluation.md documents the method and eval.json.
"""
