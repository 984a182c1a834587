"""The synchronous driver: a session's jobs run inline on an engine, as soon as the session hands
them out. Offline transcription, the evaluation and the benchmarks drive sessions this way; the
live server drives the same sessions through its scheduler instead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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


def run_job(engine: AsrEngine, job: AsrJob) -> tuple[list[Transcript], AsrRun]:
    """Run one job on an engine synchronously."""
    return run_jobs(engine, [job])[0]


def drive(session: StreamSession, engine: AsrEngine, chunks: Iterable[np.ndarray]) -> Iterator[Event]:
    """Feed ``chunks`` through ``session`` and run its jobs inline. Yields every event in order;
    ends once the stream is finished and drained."""

    def run_ready() -> Iterator[Event]:
        jobs = session.take_jobs()
        for job, result in zip(jobs, run_jobs(engine, jobs)):
            yield from session.complete(job, *result)

    for chunk in chunks:
        yield from session.feed(chunk)
        yield from run_ready()
    yield from session.finish()
    yield from run_ready()
    session.close()
