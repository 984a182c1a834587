"""The synchronous driver: a session's jobs run inline on an engine, as soon as the session hands
them out. Offline transcription, the evaluation and the benchmarks drive sessions this way; the
live server drives the same sessions through its scheduler instead.

Observers run inline here, on the caller's thread: the driver is the only consumer of its hot
path, and an offline run wants every event. They are isolated all the same (the session's
:class:`~speechpipe.pipeline.hooks.Observers` counts and logs what they raise), so a broken
observer never costs a file its transcript."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future

import numpy as np

from speechpipe.pipeline.hooks import AsrJob
from speechpipe.pipeline.session import Event, StreamSession
from speechpipe.stages.asr import AsrEngine, AsrRun, Transcript


def run_jobs(engine: AsrEngine, jobs: list[AsrJob]) -> list[tuple[list[Transcript], AsrRun]]:
    """Run several jobs (of one session: one prompt and temperature) in one engine call, so their
    windows can be decoded in batches; the wall time of the call is shared by all of them."""
    if not jobs:
        return []
    return engine.run([job.pieces for job in jobs], jobs[0].decoding)


def drive(
    session: StreamSession,
    engine: AsrEngine,
    chunks: Iterable[np.ndarray],
    pool: Executor | None = None,
    per_call: int = 2,
) -> Iterator[Event]:
    """Feed ``chunks`` through ``session`` and run its jobs. Yields every event in order; ends once
    the stream is finished and drained.

    Released jobs run ``per_call`` at a time, so that a call's windows are decoded as one batch
    (the last call of the stream may have fewer). Without ``pool`` the calls run inline. With a
    pool (threads on as many CTranslate2 replicas of the model) they go to the pool and the audio
    keeps being decoded and segmented meanwhile; results are handed back in job order. On 2
    cores, 2 replicas of 1 thread with 2 windows a call took 7.5 s on the 408 s benchmark file
    where one window a call took 8.4 s, with the same transcript.
    """
    released: list[AsrJob] = []  # waiting for company: a call's windows are decoded as one batch

    def calls(ended: bool = False) -> list[list[AsrJob]]:
        released.extend(session.take_jobs())
        groups = []
        while len(released) >= per_call or (ended and released):
            groups.append(released[:per_call])
            del released[:per_call]
        return groups

    if pool is None:

        def run_ready(ended: bool = False) -> Iterator[Event]:
            for group in calls(ended):
                for job, result in zip(group, run_jobs(engine, group)):
                    yield from session.complete(job, *result)

        for chunk in chunks:
            yield from session.feed(chunk)
            yield from run_ready()
        yield from session.finish()
        yield from run_ready(ended=True)
        session.close()
        return

    pending: deque[tuple[list[AsrJob], Future]] = deque()

    def submit(ended: bool = False) -> None:
        for group in calls(ended):
            pending.append((group, pool.submit(run_jobs, engine, group)))

    def collect(wait: bool) -> Iterator[Event]:
        while pending and (wait or pending[0][1].done()):
            group, future = pending.popleft()
            for job, result in zip(group, future.result()):
                yield from session.complete(job, *result)

    try:
        for chunk in chunks:
            yield from session.feed(chunk)
            submit()
            yield from collect(wait=False)
        yield from session.finish()
        submit(ended=True)
        yield from collect(wait=True)
    finally:
        for _group, future in pending:  # a failure left work queued: do not run it for nothing
            future.cancel()
    session.close()
