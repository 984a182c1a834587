"""``speechpipe eval --ray``: an evaluation's heavy work on Ray actors.

Two kinds of work leave this machine: the reference timing of each file (a whole-file decode and a
forced alignment, :class:`~speechpipe.pipeline.evaluate.reference_timing.ReferenceTimer`), whose
results come back to fill the local cache, and each variant's run of each file through the offline
path with an :class:`~speechpipe.pipeline.evaluate.collector.EvalCollector`, whose
:class:`~speechpipe.pipeline.evaluate.quality.evaluation.FileRun` comes back to be scored here. Scoring, the
report and the ``eval.utterance`` spans stay local; the pipeline's own spans of each file stay on
the actors, and observers given by ``observers_factory`` are not called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.collector import EvalCollector
from speechpipe.pipeline.evaluate.datasets import DatasetItem
from speechpipe.pipeline.evaluate.quality import evaluation as ev
from speechpipe.pipeline.evaluate.quality.wer import normalized_words
from speechpipe.pipeline.evaluate.reference_timing import ReferenceTimer
from speechpipe.pipeline.offline.ray_runner import Job, RayPool
from speechpipe.pipeline.offline.runner import FILE_ERRORS, Failure, transcribe_file
from speechpipe.pipeline.variants import Variant


@dataclass
class FileOutcome:
    """One variant's run of one file on an actor: what the collector saw, or why it failed."""

    file_run: ev.FileRun | None
    error: str = ""


@dataclass
class FileTask:
    path: Path
    file_id: str
    reference: str | None
    duration: float
    stream_id: str


def run_file(task: FileTask, config: Config, engine) -> FileOutcome:
    """On an actor: the file through the offline path, as the local evaluation runs it."""
    collector = EvalCollector()
    try:
        result = transcribe_file(
            task.path, config, engine, observers=[collector], reference=task.reference, stream_id=task.stream_id
        )
    except FILE_ERRORS as exc:
        return FileOutcome(None, str(exc) or type(exc).__name__)
    return FileOutcome(collector.file_run(task.file_id, task.duration, result.text))


def time_reference(task: tuple[Path, str], config: Config, engine) -> dict:
    """On an actor: the reference timing of one file (not cached there)."""
    path, reference = task
    return ReferenceTimer(engine).timing(path, reference)


def prefill_timings(
    pool: RayPool, items: list[DatasetItem], timer: ReferenceTimer, config: Config, log: Callable[[str], None]
) -> None:
    """Time on the actors every reference the local cache does not hold yet, and store the
    results in it; files that fail are left to the local pass, which reports them."""
    todo = [
        it
        for it in items
        if it.reference is not None and normalized_words(it.reference) and not timer.has(it.path, it.reference)
    ]
    jobs = [Job(it.file_id, time_reference, (it.path, it.reference), config) for it in todo]
    for i, doc in pool.map(jobs):
        if isinstance(doc, Failure):
            log(f"reference timing of {todo[i].file_id} on Ray failed ({doc.error}); timing it here")
            continue
        timer.store(todo[i].path, todo[i].reference, doc)
        log(f"reference timing {i + 1}/{len(todo)} (Ray): {todo[i].file_id}")


def run_variant(pool: RayPool, variant: Variant, items: list[DatasetItem], truths: dict) -> list[FileOutcome]:
    """Every file of one variant on the actors; outcomes in the order of ``items``."""
    jobs = [
        Job(
            f"{variant.name}/{it.file_id}",
            run_file,
            FileTask(it.path, it.file_id, it.reference, truths[it.file_id].duration, f"{variant.name}/{it.file_id}"),
            variant.config,
        )
        for it in items
    ]
    out: list[FileOutcome] = [FileOutcome(None, "not run")] * len(items)
    for i, result in pool.map(jobs):
        out[i] = FileOutcome(None, result.error) if isinstance(result, Failure) else result
    return out
