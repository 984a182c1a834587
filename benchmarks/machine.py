"""The machine a benchmark ran on, as the first line every script in benchmarks/ prints.

A figure means little without the CPU it came from: the project's machines are shared 2-core
sessions whose CPU model changes from one to the next, and the old figures in docs/benchmarks.md
say "CPU model not recorded" because nothing printed it. Each script prints ``machine_line()``
before it measures anything, so a pasted result carries its machine with it.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's marketing name: Linux's 'model name' line, else whatever the platform reports.

    platform.processor() is only the fallback because on Linux it gives the architecture
    ('x86_64'), not the model, which is the thing that tells two 2-core machines apart."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """One line: CPU model, core count, Python version and the UTC time the run started."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"machine: {cpu_model()}, {os.cpu_count() or '?'} cores; Python {platform.python_version()}; {started}"


if __name__ == "__main__":
    print(machine_line())
