"""What observers cost, as observable counters: the errors they raised and the events they missed
(``speechpipe.observer.errors`` and ``speechpipe.observer.dropped``, by ``observer``).

The fan-outs count into an :class:`~speechpipe.pipeline.hooks.ObserverFaults` tally; this reads
it at each collection. So a failing observer is counted even when it is telemetry itself, and
the pipeline never calls up into telemetry to report one.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.metrics import CallbackOptions, Observation

from speechpipe.pipeline.hooks import ObserverFaults
from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_specs import METRICS_BY_NAME


def register_observer_metrics(meter, faults: ObserverFaults, attributes: Callable[[], dict[str, str]]) -> None:
    """Observe ``faults`` on ``meter``; every point carries ``attributes()`` and its ``observer``."""

    def points(counts: Callable[[], dict[str, int]]):
        def observe(_options: CallbackOptions) -> list[Observation]:
            base = attributes()
            return [Observation(count, {**base, n.OBSERVER: name}) for name, count in sorted(counts().items())]

        return observe

    for name, counts in ((n.OBSERVER_ERRORS, faults.errors), (n.OBSERVER_DROPPED, faults.dropped)):
        spec = METRICS_BY_NAME[name]
        meter.create_observable_counter(spec.name, [points(counts)], spec.unit, spec.description)
