"""This process's CPU and memory as observable metrics (psutil: the standard library only offers
peak RSS, or Linux-only /proc parsing)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from opentelemetry.metrics import CallbackOptions, Observation

from speechpipe.telemetry import names as n
from speechpipe.telemetry.metric_specs import METRICS_BY_NAME


def register_process_metrics(meter, attributes: Callable[[], dict[str, str]]) -> None:
    """Observe process CPU time, CPU utilisation and resident memory on ``meter``; every point
    carries ``attributes()`` (read at each collection)."""
    import psutil

    proc = psutil.Process(os.getpid())
    cores = psutil.cpu_count() or 1
    last = {"wall": proc.create_time(), "cpu": 0.0}
    lock = threading.Lock()

    def cpu_time(_options: CallbackOptions):
        t = proc.cpu_times()
        base = attributes()
        return [
            Observation(t.user, {**base, n.CPU_MODE: "user"}),
            Observation(t.system, {**base, n.CPU_MODE: "system"}),
        ]

    def cpu_utilization(_options: CallbackOptions):
        t = proc.cpu_times()
        cpu, wall = t.user + t.system, time.time()
        with lock:
            d_cpu, d_wall = cpu - last["cpu"], wall - last["wall"]
            last["cpu"], last["wall"] = cpu, wall
        value = d_cpu / (d_wall * cores) if d_wall > 0 else 0.0
        return [Observation(max(0.0, value), attributes())]

    def memory(_options: CallbackOptions):
        return [Observation(proc.memory_info().rss, attributes())]

    specs = METRICS_BY_NAME
    s = specs[n.PROCESS_CPU_TIME]
    meter.create_observable_counter(s.name, [cpu_time], s.unit, s.description)
    s = specs[n.PROCESS_CPU_UTILIZATION]
    meter.create_observable_gauge(s.name, [cpu_utilization], s.unit, s.description)
    s = specs[n.PROCESS_MEMORY_USAGE]
    meter.create_observable_up_down_counter(s.name, [memory], s.unit, s.description)
