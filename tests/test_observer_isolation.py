"""Observers cannot hurt a stream: a real server on 127.0.0.1, the real model, corpus audio.

For each event type a stream reports, one observer raises on it (from its second occurrence on,
or its first for the events a stream reports once) beside a healthy recorder and the real stream
telemetry. The client must get exactly one final (made, lost or discarded) per ``speech_start``
and a normal end, never ``internal_error``; the healthy recorder every event; the error must show
in ``speechpipe.observer.errors`` under the failing observer's name. A blocking observer must not
hold finals back: what its queue cannot take is dropped and counted in
``speechpipe.observer.dropped``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import SPEECH
from livehelp import ObserversPart, ServerThread
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from websockets.exceptions import InvalidStatus

from speechpipe.pipeline import hooks as h
from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.clients.client import StreamResult, stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.observability import instrumentation_for
from speechpipe.pipeline.server.parts import Part
from speechpipe.stages.vad import SpeechStarted
from speechpipe.telemetry import names as n
from speechpipe.telemetry.snapshot import metrics_to_dict

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
ONCE = (h.StreamStarted, h.StreamEnded, h.FinalLost)  # raised on at their first occurrence
#: every event a stream's session reports (StreamRejected is the server's, tested apart)
STREAM_EVENTS = tuple(k for k in h.Event.__args__ if k is not h.StreamRejected)


class Recorder:
    def __init__(self, name: str = "healthy") -> None:
        self.name = name
        self.events: list = []

    def on_event(self, event) -> None:
        self.events.append(event)

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class RaisesOn(Recorder):
    """Records every event it is given, then raises on ``kind`` from its ``nth`` occurrence on."""

    def __init__(self, kind: type, nth: int) -> None:
        super().__init__(f"raises-on-{kind.__name__}")
        self.kind, self.nth, self.seen, self.raised = kind, nth, 0, 0

    def on_event(self, event) -> None:
        super().on_event(event)
        if isinstance(event, self.kind):
            self.seen += 1
            if self.seen >= self.nth:
                self.raised += 1
                raise RuntimeError(f"{self.name}: broken on purpose")


class Telemetry:
    """Real stream telemetry on an in-memory metric reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.inst = instrumentation_for(
            Config(), TracerProvider(), self.meter_provider, mode="live", process_metrics=False
        )

    def points(self, name: str) -> list[dict]:
        return metrics_to_dict(self.reader.get_metrics_data()).get(name, {"points": []})["points"]

    def by_observer(self, name: str) -> dict[str, float]:
        return {p["attributes"][n.OBSERVER]: p["value"] for p in self.points(name)}

    def total(self, name: str) -> float:
        return sum(p.get("value", p.get("count", 0)) for p in self.points(name))


def one_outcome_per_speech_start(result: StreamResult) -> None:
    """Exactly one final (made or lost) or ``discarded`` per ``speech_start``, never an error."""
    assert result.ready is not None and not result.errors
    outcomes = [m["segment"] for m in result.finals] + [m["segment"] for m in result.discarded]
    assert sorted(outcomes) == [m["segment"] for m in result.speech_starts]
    assert result.end is not None and result.close_code in (P.CLOSE_NORMAL, P.CLOSE_GOING_AWAY)


def every_event(rec: Recorder, result: StreamResult) -> None:
    """The healthy recorder's account of the stream matches what the client saw, event by event."""
    assert isinstance(rec.events[0], h.StreamStarted) and isinstance(rec.events[-1], h.StreamEnded)
    assert len(rec.of(h.StreamStarted)) == len(rec.of(h.StreamEnded)) == 1
    started = [e for e in rec.of(h.VadOutput) if isinstance(e.event, SpeechStarted)]
    assert len(started) == len(result.speech_starts)
    made = [m for m in result.finals if m.get("status") != "lost"]
    assert [e.segment.index for e in rec.of(h.FinalTranscript)] == [m["segment"] for m in made]
    lost = [m["segment"] for m in result.finals if m.get("status") == "lost"]
    assert [e.segment.index for e in rec.of(h.FinalLost)] == lost
    queued = sorted(e.job.job_id for e in rec.of(h.AsrQueued))
    assert queued and queued == sorted(e.job.job_id for e in rec.of(h.AsrDequeued))
    assert len(rec.of(h.AsrCompleted)) >= len(made)


def serve(engine, observers, **settings):
    """A server whose one stream gets ``observers`` (beside those of the server's own parts)."""
    return ServerThread(engine, parts=[ObserversPart(lambda _stream: observers)], **settings)


class ServerEvents(Part):
    """A part whose observer is told the server's own events."""

    name = "server-events"

    def __init__(self, observer) -> None:
        self.observer = observer

    def server_observers(self) -> list:
        return [self.observer]


@pytest.mark.parametrize("kind", [k for k in STREAM_EVENTS if k is not h.FinalLost], ids=lambda k: k.__name__)
def test_an_observer_raising_on_an_event_changes_nothing_for_the_client(engine, kind):
    failing, healthy, tel = RaisesOn(kind, 1 if kind in ONCE else 2), Recorder(), Telemetry()
    with serve(engine, [failing, healthy, tel.inst.stream_observer(mode="live")]) as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
    one_outcome_per_speech_start(result)
    assert result.end["reason"] == "stop" and result.close_code == P.CLOSE_NORMAL
    assert result.finals and all(m.get("status") != "lost" for m in result.finals)
    every_event(healthy, result)
    assert len(healthy.of(h.AudioFed)) == len(result.sends)  # every frame sent was reported
    assert failing.events == healthy.events  # the failing one was given each event too, in order
    assert failing.raised >= 1
    assert tel.by_observer(n.OBSERVER_ERRORS)[failing.name] == failing.raised
    assert tel.total(n.FINAL_LATENCY) == len(result.finals)  # the telemetry beside it went on
    assert tel.total(n.STREAMS_ACTIVE) == 0


def test_an_observer_raising_on_lost_finals_changes_nothing_for_the_client(engine):
    """Finals are lost when the server stops before they are ready: here it stops (drain time
    1 ms) as soon as the client was shown a partial, so the open segment's final cannot be made."""
    failing, healthy, tel = RaisesOn(h.FinalLost, 1), Recorder(), Telemetry()
    observers = [failing, healthy, tel.inst.stream_observer(mode="live")]
    with serve(engine, observers, drain_timeout_s=0.001, speculative=False) as srv:
        stopping: list = []

        def on_message(msg: dict) -> None:
            if msg["type"] == "partial" and not stopping:
                stopping.append(asyncio.run_coroutine_threadsafe(srv.server.shutdown(), srv.loop))

        result = asyncio.run(stream_file(srv.url, JFK, speed=1, on_message=on_message))
        stopping[0].result(30)
    one_outcome_per_speech_start(result)
    assert result.end["reason"] == "shutdown" and result.close_code == P.CLOSE_GOING_AWAY
    assert [m["reason"] for m in result.finals if m.get("status") == "lost"][:1] == ["drain_timeout"]
    every_event(healthy, result)
    assert failing.events == healthy.events and failing.raised == len(healthy.of(h.FinalLost)) >= 1
    assert tel.by_observer(n.OBSERVER_ERRORS)[failing.name] == failing.raised


def test_a_server_observer_raising_on_a_rejection_changes_nothing(engine):
    failing, tel = RaisesOn(h.StreamRejected, 1), Telemetry()
    with ServerThread(engine, token="secret", parts=[ServerEvents(failing)]) as srv:
        with pytest.raises(InvalidStatus):
            asyncio.run(stream_file(srv.url, JFK, speed=0))  # no token: turned away as before
        result = asyncio.run(stream_file(srv.url, JFK, speed=0, token="secret"))
    one_outcome_per_speech_start(result)
    assert [e.reason for e in failing.of(h.StreamRejected)] == ["unauthorized"] and failing.raised == 1
    assert srv.server.counters.rejected == 1
    assert tel.by_observer(n.OBSERVER_ERRORS)[failing.name] == 1


class Gate(Recorder):
    """A blocking observer: it takes no event until the test opens it."""

    def __init__(self) -> None:
        super().__init__("gate")
        self.open = threading.Event()
        self.entered = threading.Event()

    def on_event(self, event) -> None:
        self.entered.set()
        assert self.open.wait(60)
        super().on_event(event)


def test_a_blocked_observer_holds_no_final_back_and_what_it_misses_is_counted(engine):
    gate, healthy, tel = Gate(), Recorder("beside-gate"), Telemetry()
    with serve(engine, [gate, healthy], observer_queue=16) as srv:
        try:
            result = asyncio.run(stream_file(srv.url, JFK, speed=0))
            # The whole stream was served while the observer still held its first event.
            assert gate.entered.is_set() and gate.events == []
            one_outcome_per_speech_start(result)
            assert result.end["reason"] == "stop" and result.finals
            dropped = tel.by_observer(n.OBSERVER_DROPPED)
            assert dropped[gate.name] == dropped[healthy.name] > 0  # one queue: both missed the same
        finally:
            gate.open.set()  # the stream's end waits in the queue; the server drains it on its way out
    # What overflowed was audio and ASR events; the stream's start, finals and end were all kept.
    assert gate.events == healthy.events
    made = [m["segment"] for m in result.finals if m.get("status") != "lost"]
    assert [e.segment.index for e in healthy.of(h.FinalTranscript)] == made
    assert isinstance(healthy.events[0], h.StreamStarted) and isinstance(healthy.events[-1], h.StreamEnded)
    assert len(healthy.events) + tel.by_observer(n.OBSERVER_DROPPED)[healthy.name] > len(result.sends)


class CannotMakeObservers(Part):
    """A part whose observers cannot be made: its ``observers()`` raises for every stream."""

    name = "cannot-make-observers"

    def observers(self, stream) -> list:
        raise RuntimeError(f"{self.name}: broken on purpose")


def test_a_part_that_cannot_make_its_observers_costs_only_its_own(engine):
    healthy, tel = Recorder(), Telemetry()
    parts = [CannotMakeObservers(), ObserversPart(lambda _stream: [healthy, tel.inst.stream_observer(mode="live")])]
    with ServerThread(engine, parts=parts) as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
    one_outcome_per_speech_start(result)
    assert result.finals and all(m.get("status") != "lost" for m in result.finals)
    every_event(healthy, result)  # the other part's observers were made and got every event
    assert tel.by_observer(n.OBSERVER_ERRORS)[CannotMakeObservers.name] == 1
