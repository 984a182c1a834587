"""The offline run's progress bar: seconds of audio done, on a terminal only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from speechpipe.stages.audio import AudioError, header

if TYPE_CHECKING:
    from speechpipe.pipeline.offline import InputFile
    from speechpipe.pipeline.outputs import FileResult


class FileProgress:
    """A rich progress bar over seconds of audio, shown only on a terminal."""

    def __init__(self, inputs: list[InputFile], enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = None
        if not enabled or not inputs:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        total = 0.0
        self._dur: dict[Path, float] = {}
        for item in inputs:
            try:
                d = header(item.path).duration_s  # an estimate for MP3: enough for a progress bar
            except AudioError:
                d = 0.0
            self._dur[item.path] = d
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

    def start(self, item: InputFile) -> None:
        if self._bar:
            self._bar.update(self._task, description=item.path.name[:40])

    def advance(self, item: InputFile, result: FileResult | None = None) -> None:
        if self._bar:
            self._bar.advance(self._task, self._dur.get(item.path, 0.0))

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
