"""The observer protocol: every observer gets every event, whatever the others do, and a real
stream reports each kind of event to all of its observers. The fan-out keeps an observer's errors
to itself (counted, logged once), and the background queue delivers in order, drops (counted)
rather than blocks, and drains on stop."""

from __future__ import annotations

import asyncio
import logging
import threading
import typing

import numpy as np
import pytest
from conftest import SAMPLES
from livehelp import ObserversPart, ServerThread

from speechpipe.pipeline import hooks as h
from speechpipe.pipeline.clients.client import stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.stages.asr import AsrRun, AudioPiece, Transcript
from speechpipe.stages.vad import SpeechStarted

JFK = SAMPLES / "jfk_inaugural_ask-not.flac"
EVENT_TYPES = typing.get_args(h.Event)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list = []
        self.fail = fail

    def on_event(self, event) -> None:
        self.events.append(event)
        if self.fail:
            raise RuntimeError("a broken observer")

    def kinds(self) -> set[type]:
        return {type(e) for e in self.events}


def one_of_each() -> list:
    """An instance of every event type of the protocol."""
    job = h.AsrJob("s", h.JobKind.FINAL, [AudioPiece(0, 0, np.zeros(160, np.float32))])
    tr = Transcript(0, 0.0, 0.01, "", [], 0.0, 1.0, 0.0)
    seg_event = SpeechStarted(0, 0, "cfg")
    made = {
        h.StreamStarted: h.StreamStarted("s", 16000, 1, "cfg"),
        h.AudioFed: h.AudioFed("s", np.zeros(160, np.float32), 16000, 1),
        h.VadOutput: h.VadOutput("s", seg_event),
        h.AsrQueued: h.AsrQueued("s", job),
        h.AsrDequeued: h.AsrDequeued("s", job),
        h.AsrCompleted: h.AsrCompleted("s", job, [tr], AsrRun(0, 1)),
        h.FinalTranscript: h.FinalTranscript("s", None, tr, 0.5),
        h.FinalLost: h.FinalLost("s", None, "drain_timeout"),
        h.SegmentCaptioned: h.SegmentCaptioned("s", 0, 2, 0.4, 3, 0, 20, True),
        h.StreamEnded: h.StreamEnded("s", True, None, 0, 1),
        h.StreamRejected: h.StreamRejected("busy"),
    }
    assert set(made) == set(EVENT_TYPES), "a new event type needs a line here"
    return list(made.values())


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_fan_out_delivers_every_event_to_every_observer(event, caplog):
    first, broken, last = Recorder(), Recorder(fail=True), Recorder()
    faults = h.ObserverFaults()
    fan = h.Observers([first, None, broken, last], faults)
    with caplog.at_level(logging.ERROR, logger="speechpipe.observers"):
        fan.on_event(event)  # the error stays in the fan-out...
    assert faults.errors() == {"Recorder": 1}  # ...but is not swallowed: counted, and logged
    assert "broken observer" in caplog.text and "Recorder" in caplog.text
    assert first.events == broken.events == last.events == [event]  # ...nor does it stop the others


def test_fan_out_of_fan_outs():
    inner, outer = Recorder(), Recorder()
    fan = h.Observers([h.Observers([inner]), outer])
    for event in one_of_each():
        fan.on_event(event)
    assert inner.events == outer.events and len(inner.events) == len(EVENT_TYPES)


def test_an_offline_file_reports_every_stream_event_to_each_observer(engine):
    a, b = Recorder(), Recorder()
    transcribe_file(JFK, Config(), engine, observers=[a, b])
    expected = {h.StreamStarted, h.AudioFed, h.VadOutput, h.AsrCompleted, h.FinalTranscript, h.StreamEnded}
    assert a.kinds() == b.kinds() == expected  # the inline driver queues nothing
    assert [type(e) for e in a.events] == [type(e) for e in b.events]
    assert isinstance(a.events[0], h.StreamStarted) and isinstance(a.events[-1], h.StreamEnded)


def test_an_offline_file_is_isolated_from_its_observers_errors(engine):
    """Offline, observers run inline (the driver is the hot path's only consumer), isolated too:
    one that raises on every event leaves the transcript and the other observers as they were."""
    plain, beside = Recorder(), Recorder()
    expected = transcribe_file(JFK, Config(), engine, observers=[plain])
    broken = Named("offline-broken", fail=True)
    got = transcribe_file(JFK, Config(), engine, observers=[broken, beside])
    assert got.text == expected.text and got.text
    assert [type(e) for e in beside.events] == [type(e) for e in plain.events]
    assert h.FAULTS.errors()["offline-broken"] == len(broken.events) == len(beside.events)


def test_a_live_stream_reports_queue_events_too(engine):
    a, b = Recorder(), Recorder()
    with ServerThread(engine, parts=[ObserversPart(lambda _stream: [a, b])]) as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
    assert result.finals and not result.errors
    expected = {h.StreamStarted, h.AudioFed, h.VadOutput, h.AsrQueued, h.AsrDequeued, h.AsrCompleted}
    # the client asked for partials: each final also reports what its captions cost
    assert expected | {h.FinalTranscript, h.SegmentCaptioned, h.StreamEnded} == a.kinds() == b.kinds()
    queued = [e.job.job_id for e in a.events if isinstance(e, h.AsrQueued)]
    dequeued = [e.job.job_id for e in a.events if isinstance(e, h.AsrDequeued)]
    assert sorted(queued) == sorted(dequeued)  # every job queued left the queue
    finals = [e for e in a.events if isinstance(e, h.FinalTranscript)]
    # One final latency: the one exported is the one the client was sent (which is rounded to ms).
    assert [round(f.latency_s, 3) for f in finals] == [m["latency_s"] for m in result.finals]


class Named(Recorder):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(fail)
        self.name = name


def test_an_error_is_counted_every_time_and_logged_once_per_observer_and_kind(caplog):
    faults = h.ObserverFaults()
    fan = h.Observers([Named("flaky", fail=True), Named("fine")], faults)
    events = one_of_each()
    with caplog.at_level(logging.ERROR, logger="speechpipe.observers"):
        for _ in range(3):
            for event in events:
                fan.on_event(event)
    assert faults.errors() == {"flaky": 3 * len(events)}
    logged = [r for r in caplog.records if r.name == "speechpipe.observers"]
    assert len(logged) == len(EVENT_TYPES)  # one line per event kind, not one per event
    assert all(r.exc_info and "flaky" in r.getMessage() for r in logged)


def test_an_observer_is_named_by_its_name_attribute_or_its_class():
    assert h.observer_name(Named("telemetry")) == "telemetry"
    assert h.observer_name(Recorder()) == "Recorder"
    assert h.observer_name(Named("")) == "Named"


class Gate:
    """An observer that blocks on each event until the test opens it (a slow exporter)."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.events: list = []

    def on_event(self, event) -> None:
        self.entered.set()
        self.open.wait(30)
        self.events.append(event)


def test_background_observers_deliver_in_order_off_the_callers_thread():
    faults = h.ObserverFaults()
    runner = h.BackgroundObservers(100, faults=faults)
    threads: list[str] = []

    class Where(Recorder):
        def on_event(self, event) -> None:
            threads.append(threading.current_thread().name)
            super().on_event(event)

    a, b, broken = Where(), Recorder(), Named("broken", fail=True)
    queued = runner.wrap([a, broken, b])
    runner.start()
    events = one_of_each() * 5
    for event in events:
        queued.on_event(event)
    assert runner.stop(10)
    assert a.events == b.events == broken.events == events  # every event, in order, to each
    assert set(threads) == {runner.name}  # delivered by the runner's worker, not by the caller
    assert faults.errors() == {"broken": len(events)} and faults.dropped() == {}


def test_a_full_queue_drops_what_it_can_never_blocks_and_drains_on_stop():
    faults = h.ObserverFaults()
    runner = h.BackgroundObservers(3, faults=faults)
    gate, fast = Gate(), Named("fast")
    queued = runner.wrap([gate, fast])
    runner.start()
    started, fed = one_of_each()[:2]
    ended = next(e for e in one_of_each() if isinstance(e, h.StreamEnded))
    assert isinstance(started, h.StreamStarted) and isinstance(ended, h.StreamEnded)
    queued.on_event(started)
    assert gate.entered.wait(10)  # the worker holds the first event: 3 places left in the queue
    for _ in range(10):
        queued.on_event(fed)  # returns at once although the gate is shut
    queued.on_event(ended)  # a stream's end is queued even when the queue is full
    assert faults.dropped() == {"gate": 7, "fast": 7}
    assert runner.pending == 5  # the one being delivered, 3 audio events, the end
    gate.open.set()
    assert runner.stop(10)
    assert gate.events == fast.events == [started, fed, fed, fed, ended]


def test_events_before_start_wait_and_after_stop_are_delivered_at_once():
    rec = Recorder()
    runner = h.BackgroundObservers(10, faults=h.ObserverFaults())
    queued = runner.wrap([rec])
    first, second = one_of_each()[:2]
    queued.on_event(first)
    assert rec.events == []  # waits for the worker
    runner.start()
    assert runner.flush(10) and rec.events == [first]
    assert runner.stop(10)
    queued.on_event(second)  # the stream's last word after the end: not lost
    assert rec.events == [first, second]


def test_a_stuck_observer_does_not_hold_stop_forever():
    gate = Gate()
    runner = h.BackgroundObservers(10, faults=h.ObserverFaults())
    runner.wrap([gate]).on_event(one_of_each()[0])
    runner.start()
    assert gate.entered.wait(10)
    assert not runner.stop(0.05)  # gives up, says so
    gate.open.set()
    assert runner.flush(10) and len(gate.events) == 1
