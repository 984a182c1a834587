"""The offline run's progress bar: seconds of audio done, on a terminal only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from speechpipe.stages.audio import AudioError, header


class FileProgress:
    """A rich progress bar over seconds of audio, shown only on a terminal."""

    def __init__(self, paths: list[Path], enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = None
        if not enabled or not paths:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        total = 0.0
        self._dur: dict[Path, float] = {}
        for path in paths:
            try:
                d = header(path).duration_s  # an estimate for MP3: enough for a progress bar
            except AudioError:
                d = 0.0
            self._dur[path] = d
            total += d
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._bar.add_task("transcribing", total=max(total, 1e-9))
        self._bar.start()

    def start(self, path: Path) -> None:
        if self._bar:
            self._bar.update(self._task, description=path.name[:40])

    def advance(self, path: Path) -> None:
        if self._bar:
            self._bar.advance(self._task, self._dur.get(path, 0.0))

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
