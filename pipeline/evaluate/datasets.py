"""Datasets of an evaluation: audio files with their ``.txt`` references and
``<id>.segments.txt`` VAD labels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speechpipe.pipeline.evaluate.quality.vad_metrics import read_segments
from speechpipe.pipeline.offline.runner import find_inputs, read_reference


@dataclass
class DatasetItem:
    """One audio file of a dataset, with what is known about it."""

    file_id: str
    path: Path
    reference: str | None
    labels: list[tuple[float, float]] | None


def discover(datasets: Iterable[str | Path]) -> tuple[list[DatasetItem], list[dict]]:
    """Audio files of the datasets (folders recursively, or single files), their ``.txt``
    references and ``<id>.segments.txt`` labels. File ids are ``<folder name>/<relative path>``."""
    items: list[DatasetItem] = []
    failures: list[dict] = []
    seen: set[str] = set()
    for ds in datasets:
        inputs, missing = find_inputs([ds])
        failures += [{"file": f.file, "error": f.error} for f in missing]
        for inp in inputs:
            root = Path(inp.root)
            rel = inp.path.relative_to(root).as_posix()
            file_id = f"{root.resolve().name}/{rel}" if Path(ds).is_dir() else rel
            if file_id in seen:
                continue
            seen.add(file_id)
            labels_path = inp.path.with_suffix(".segments.txt")
            labels = None
            if labels_path.is_file():
                try:
                    labels = read_segments(labels_path)
                except ValueError as exc:
                    failures.append({"file": str(labels_path), "error": str(exc)})
                    continue
            items.append(DatasetItem(file_id, inp.path, read_reference(inp), labels))
    return items, failures
