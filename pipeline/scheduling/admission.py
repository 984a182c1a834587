"""Admission by capacity: does one more live stream, or one more upload, fit in what the ASR
workers can do?

The work a server has promised is the ASR calls for finals, a speculative job's call among them
once its segment closed as predicted (partials, and speculative calls whose speech went on, only
use spare time: finals are picked first). :class:`Admission` measures it as the server runs: the
worker-seconds those calls took over the last ``window_s``, per stream served meanwhile, and
admits a new stream only while the streams, one more included, stay under ``max_load`` of the
workers' capacity. Until a window's worth has been measured it assumes ``prior_cost`` per stream.

Uploads (files fed as fast as they are read) are work of another kind: each is a known amount
(its windows), run below the live finals on at most ``workers - 1`` workers (the scheduler keeps
one for the live streams), and never measured as a live stream's cost. The live streams come
first: an upload is admitted (:meth:`Admission.upload_verdict`) only while the live streams leave
the upload worker its share, so uploads cannot push live finals past their budget, and while the
upload work already waiting (its windows at their measured cost) would be done within
``max_upload_wait_s``; a live stream is never refused because uploads are running (they yield).
Time is passed in; the lock only makes it safe to record from the worker threads.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from speechpipe.pipeline.protocol import ProtocolError


@dataclass(frozen=True)
class Verdict:
    """Whether a stream is admitted, and the figures it was decided on."""

    admitted: bool
    load: float  # share of the workers' capacity the streams would use, this one included
    cost: float  # worker-seconds of promised ASR work per second of one stream
    #: why an upload was refused ("" : admitted, or not an upload)
    reason: str = ""


class Admission:
    """See the module docstring.

    Args:
        workers: ASR calls that run at the same time (capacity: ``workers`` worker-seconds per s).
        max_load: the share of that capacity the promised work may use; above it queueing pushes
            finals past the latency budget.
        prior_cost: promised ASR work per stream, worker-seconds per second, until measured.
        window_s: how far back the measurement looks.
    """

    def __init__(self, workers: int, max_load: float, prior_cost: float, window_s: float = 60.0) -> None:
        self.workers = workers
        self.max_load = max_load
        self.prior_cost = prior_cost
        self.window_s = window_s
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, float]] = deque()  # (end time, worker-seconds)
        self._streams: deque[tuple[float, int]] = deque()  # (time, streams served then)
        self._since: float | None = None  # when the first stream was served

    def record_call(self, now: float, seconds: float) -> None:
        """A call for promised work (finals) ended at ``now`` after ``seconds``."""
        with self._lock:
            self._calls.append((now, seconds))
            self._trim(now)

    def record_streams(self, now: float, streams: int) -> None:
        """``streams`` are being served at ``now`` (called whenever the count changes)."""
        with self._lock:
            if streams and self._since is None:
                self._since = now
            self._streams.append((now, streams))
            self._trim(now)

    def cost(self, now: float) -> float:
        """Measured promised work per stream (worker-seconds per second), or the prior while less
        than a window of serving has been seen."""
        with self._lock:
            self._trim(now)
            if self._since is None or now - self._since < self.window_s:
                return self.prior_cost
            busy = sum(s for _t, s in self._calls)
            mean_streams = self._mean_streams(now)
            return busy / self.window_s / mean_streams if mean_streams > 0 else self.prior_cost

    def verdict(self, now: float, streams: int) -> Verdict:
        """Would ``streams + 1`` live streams fit?"""
        cost = self.cost(now)
        load = (streams + 1) * cost / self.workers
        return Verdict(load <= self.max_load, load, cost)

    def upload_verdict(self, now: float, streams: int, backlog_s: float, max_wait_s: float) -> Verdict:
        """Would one more upload fit, with ``streams`` live streams served and ``backlog_s``
        worker-seconds of upload windows queued or running? The live streams must stay under
        ``max_load`` of the workers left to them while an upload holds one (all of them with a
        single worker: uploads then only take what the live finals leave), and the waiting
        upload work must be done within ``max_wait_s`` on the upload workers."""
        cost = self.cost(now)
        # the workers uploads may take, and (the same count) those an upload leaves the live
        # streams: all but one, or the single one, which uploads then only share
        spare = max(1, self.workers - 1)
        load = streams * cost / spare
        if load > self.max_load:
            why = f"its {streams} live streams need {load:.0%} of the ASR workers an upload would leave them"
            return Verdict(False, load, cost, why)
        wait = backlog_s / spare
        if wait > max_wait_s:
            why = f"the uploads already queued need about {wait:.0f} s of ASR work (limit {max_wait_s:g} s)"
            return Verdict(False, load, cost, why)
        return Verdict(True, load, cost)

    def _mean_streams(self, now: float) -> float:
        """Time-weighted number of streams served over the window."""
        start = now - self.window_s
        points = list(self._streams)
        total, prev_t, prev_n = 0.0, start, None
        for t, k in points:
            if prev_n is not None:
                total += prev_n * (max(t, start) - max(prev_t, start))
            prev_t, prev_n = t, k
        if prev_n is not None:
            total += prev_n * (now - max(prev_t, start))
        return total / self.window_s

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        while self._calls and self._calls[0][0] < start:
            self._calls.popleft()
        # Keep the last count from before the window: it holds at the window's start.
        while len(self._streams) > 1 and self._streams[1][0] <= start:
            self._streams.popleft()


def refusal(
    draining: bool, ready: bool, streams: int, max_streams: int, verdict: Verdict | None, retry_after_s: float
) -> tuple[str | None, ProtocolError | None]:
    """Why a new stream is turned away (the reason counted, the error sent), or ``(None, None)``:
    the server is stopping, the model is loading, every stream slot is taken, or ``verdict`` says
    one more stream would not fit the ASR workers."""
    if draining:
        return "shutting_down", ProtocolError("shutting_down", "the server is shutting down")
    if not ready:
        return "not_ready", ProtocolError("not_ready", "the model is still loading; retry shortly")
    if streams >= max_streams:
        text = f"all {max_streams} streams are in use; retry in {retry_after_s:g} s"
        return "busy", ProtocolError("server_busy", text)
    if verdict is not None and not verdict.admitted and verdict.reason:
        text = f"the server cannot take another upload now: {verdict.reason}; retry in {retry_after_s:g} s"
        return "upload_capacity", ProtocolError("server_busy", text)
    if verdict is not None and not verdict.admitted:
        text = (
            f"the server is at capacity: {streams + 1} streams would need {verdict.load:.0%} of its "
            f"ASR workers; retry in {retry_after_s:g} s"
        )
        return "capacity", ProtocolError("server_busy", text)
    return None, None
