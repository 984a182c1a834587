"""Folders beyond one machine: an offline run's files on Ray actors that each hold a model.

``speechpipe transcribe PATH... --ray [ADDRESS]`` gives :func:`ray_transcriber` to
:func:`speechpipe.pipeline.offline.run`, which keeps everything else of a local run: resume
(complete JSON is skipped), atomic writes of every output (on the machine that runs the command),
failed files reported and the summary. The actors only transcribe: each runs
:func:`~speechpipe.pipeline.offline.transcribe_item` on the path it is given and returns the
result, so every node must see the input files at the same paths (a shared file system, as a
cluster's data is) and have speechpipe installed.

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

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.offline import Failure, InputFile, Transcriber, load_engine, transcribe_item
from speechpipe.pipeline.outputs import FileResult

log = logging.getLogger("speechpipe.ray")

#: what an actor runs on one input (the offline path's own; tests give one that crashes).
ItemFn = Callable[[InputFile, Config, object], FileResult | Failure]


class _Worker:
    """One actor: a model, and the files handed to it one at a time."""

    def __init__(self, config: Config, run_item: ItemFn) -> None:
        self.config = config
        self.run_item = run_item
        self.engine = load_engine(config)

    def transcribe(self, item: InputFile) -> FileResult | Failure:
        return self.run_item(item, self.config, self.engine)


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


def ray_transcriber(config: Config, settings: RaySettings, run_item: ItemFn = transcribe_item) -> Transcriber:
    """A :data:`~speechpipe.pipeline.offline.Transcriber` that runs the files on Ray actors."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'speechpipe[ray]'") from None

    threads = config.asr.threads or max(1, int(settings.cpus_per_actor))
    config = dataclasses.replace(config, asr=dataclasses.replace(config.asr, threads=threads, workers=1))

    def run_all(items: list[InputFile], started: Callable[[InputFile], None]) -> Iterator:
        if not items:
            return
        ours = not ray.is_initialized()
        if ours:
            if settings.address is None:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=settings.address, logging_level=logging.WARNING)
        try:
            yield from _schedule(ray, config, settings, run_item, items, started)
        finally:
            if ours:
                ray.shutdown()

    return run_all


def _schedule(ray, config: Config, settings: RaySettings, run_item: ItemFn, items, started) -> Iterator:
    """Keep every actor busy with one file until all are done; retry a crashed file once."""
    remote = ray.remote(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor, max_restarts=0)(_Worker)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    n = settings.actors or max(1, int(cpus // settings.cpus_per_actor))
    n = min(n, len(items))
    idle = [remote.remote(config, run_item) for _ in range(n)]
    queue: list[tuple[InputFile, int]] = [(item, 0) for item in items]
    pending: dict = {}  # ObjectRef -> (item, attempt, actor)
    try:
        while queue or pending:
            while queue and idle:
                item, attempt = queue.pop(0)
                actor = idle.pop()
                if attempt == 0:
                    started(item)
                pending[actor.transcribe.remote(item)] = (item, attempt, actor)
            [done], _ = ray.wait(list(pending), num_returns=1)
            item, attempt, actor = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayActorError as exc:  # the actor died with the file
                ray.kill(actor)
                idle.append(remote.remote(config, run_item))
                if attempt == 0:
                    log.warning("ray: %s crashed its worker; retrying it once on another", item.path)
                    queue.append((item, 1))
                    continue
                yield item, Failure(str(item.path), f"crashed a Ray worker twice: {_first_line(exc)}")
                continue
            except ray.exceptions.RayTaskError as exc:  # a bug on the worker: this file only
                idle.append(actor)
                yield item, Failure(str(item.path), f"failed on a Ray worker: {_first_line(exc)}")
                continue
            idle.append(actor)
            yield item, result
    finally:
        for actor in idle + [a for _i, _n, a in pending.values()]:
            ray.kill(actor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
