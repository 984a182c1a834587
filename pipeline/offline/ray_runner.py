"""Folders beyond one machine: an offline run's files (and an evaluation's) on Ray actors that
each hold a model.

``speechpipe transcribe PATH... --ray [ADDRESS]`` gives :func:`ray_transcriber` to
:func:`speechpipe.pipeline.offline.runner.run`, which keeps everything else of a local run: resume
(complete JSON is skipped), atomic writes of every output (on the machine that runs the command),
failed files reported and the summary. The actors only transcribe: each runs
:func:`~speechpipe.pipeline.offline.runner.transcribe_item` on the path it is given and returns the
result, so every node must see the input files at the same paths (a shared file system, as a
cluster's data is) and have speechpipe installed. ``speechpipe eval --ray`` runs its variants'
files and reference timings on the same :class:`RayPool`.

A file that kills its actor (a crash of the native code, the node lost) is retried once on a new
actor and reported after a second crash; the run goes on either way. A file that cannot be decoded
fails as it does locally, without a retry.

``ADDRESS``: none starts a local Ray instance on this machine's cores; ``auto`` joins the cluster
this machine belongs to; ``ray://HOST:10001`` connects a client to a remote one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Self

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.offline.allocator import tune_allocator
from speechpipe.pipeline.offline.outputs import FileResult
from speechpipe.pipeline.offline.runner import Failure, InputFile, Transcriber, load_engine, transcribe_item

log = logging.getLogger("speechpipe.ray")

#: what an actor runs on one input (the offline path's own; tests give one that crashes).
ItemFn = Callable[[InputFile, Config, object], FileResult | Failure]
#: any work for an actor: called with the task, the config and the actor's engine for that config.
TaskFn = Callable[[Any, Config, object], Any]


@dataclasses.dataclass
class Job:
    """One piece of work for the pool: ``fn(task, config, engine)`` on some actor; ``label`` names
    it in failures (the file)."""

    label: str
    fn: TaskFn
    task: Any
    config: Config


class _Worker:
    """One actor: a model per ASR config it has been given work for, one job at a time."""

    def __init__(self, threads: int) -> None:
        tune_allocator()  # before any model is loaded here (see speechpipe.pipeline.offline.allocator)
        self.threads = threads
        self.engines: dict = {}

    def run(self, job: Job) -> Any:
        asr = dataclasses.replace(job.config.asr, threads=job.config.asr.threads or self.threads, workers=1)
        config = dataclasses.replace(job.config, asr=asr)
        if asr not in self.engines:
            self.engines[asr] = load_engine(config)
        return job.fn(job.task, config, self.engines[asr])


@dataclasses.dataclass
class RaySettings:
    """How a run spreads over Ray.

    Attributes:
        address: None (a local instance on this machine's cores), ``auto`` or ``ray://...``.
        actors: actors, each holding a model (0: as many as the CPUs allow at ``cpus_per_actor``).
        cpus_per_actor: CPUs reserved per actor; the model runs that many CTranslate2 threads
            unless ``asr.threads`` says otherwise.
        gpus_per_actor: GPUs per actor (0: CPU actors); with GPUs, ``asr.device`` should be cuda.
    """

    address: str | None = None
    actors: int = 0
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


class RayPool:
    """Actors on Ray for the length of a ``with`` block: Ray is started (or joined) on entry
    unless it already runs in this process, and left on exit as it was found."""

    def __init__(self, settings: RaySettings) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'speechpipe[ray]'") from None
        self.ray = ray
        self.settings = settings
        self._ours = False
        self._remote = None
        self._idle: list = []

    def __enter__(self) -> Self:
        ray, s = self.ray, self.settings
        if not ray.is_initialized():
            self._ours = True
            if s.address is None:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=s.address, logging_level=logging.WARNING)
        self._remote = ray.remote(num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor, max_restarts=0)(_Worker)
        return self

    def __exit__(self, *exc) -> None:
        for actor in self._idle:
            self.ray.kill(actor)
        self._idle = []
        if self._ours:
            self.ray.shutdown()

    def _spawn(self):
        return self._remote.remote(max(1, int(self.settings.cpus_per_actor)))

    def map(self, jobs: list[Job], started: Callable[[int], None] | None = None) -> Iterator[tuple[int, Any]]:
        """Run ``jobs`` on the actors, every actor kept busy with one job; yields (index, result)
        as they finish, a :class:`~speechpipe.pipeline.offline.runner.Failure` for a job whose actor
        died twice or whose function raised. ``started(index)`` as each job first goes out."""
        ray, s = self.ray, self.settings
        if not jobs:
            return
        cpus = ray.cluster_resources().get("CPU", 1.0)
        wanted = min(s.actors or max(1, int(cpus // s.cpus_per_actor)), len(jobs))
        while len(self._idle) < wanted:
            self._idle.append(self._spawn())
        queue: list[tuple[int, int]] = [(i, 0) for i in range(len(jobs))]
        pending: dict = {}  # ObjectRef -> (index, attempt, actor)
        try:
            while queue or pending:
                while queue and self._idle:
                    i, attempt = queue.pop(0)
                    actor = self._idle.pop()
                    if attempt == 0 and started is not None:
                        started(i)
                    pending[actor.run.remote(jobs[i])] = (i, attempt, actor)
                [done], _ = ray.wait(list(pending), num_returns=1)
                i, attempt, actor = pending.pop(done)
                try:
                    result = ray.get(done)
                except ray.exceptions.RayActorError as exc:  # the actor died with the job
                    ray.kill(actor)
                    self._idle.append(self._spawn())
                    if attempt == 0:
                        log.warning("ray: %s crashed its worker; retrying it once on another", jobs[i].label)
                        queue.append((i, 1))
                        continue
                    yield i, Failure(jobs[i].label, f"crashed a Ray worker twice: {_first_line(exc)}")
                    continue
                except ray.exceptions.RayTaskError as exc:  # a bug on the worker: this job only
                    self._idle.append(actor)
                    yield i, Failure(jobs[i].label, f"failed on a Ray worker: {_first_line(exc)}")
                    continue
                self._idle.append(actor)
                yield i, result
        finally:
            for _i, _n, actor in pending.values():  # given up: do not leave them working
                ray.kill(actor)


def ray_transcriber(config: Config, settings: RaySettings, run_item: ItemFn = transcribe_item) -> Transcriber:
    """A :data:`~speechpipe.pipeline.offline.runner.Transcriber` that runs the files on Ray actors."""
    pool = RayPool(settings)  # fails here, before any file, where Ray is not installed

    def run_all(items: list[InputFile], started: Callable[[InputFile], None]) -> Iterator:
        if not items:
            return
        jobs = [Job(str(item.path), run_item, item, config) for item in items]
        with pool:
            for i, result in pool.map(jobs, lambda i: started(items[i])):
                yield items[i], result

    return run_all


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
