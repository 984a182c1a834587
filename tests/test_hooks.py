"""The observer protocol: every observer gets every event, whatever the others do, and a real
stream reports each kind of event to all of its observers."""

from __future__ import annotations

import asyncio
import typing

import numpy as np
import pytest
from conftest import SAMPLES
from livehelp import ServerThread

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
        h.StreamEnded: h.StreamEnded("s", True, None, 0, 1),
        h.StreamRejected: h.StreamRejected("busy"),
    }
    assert set(made) == set(EVENT_TYPES), "a new event type needs a line here"
    return list(made.values())


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_fan_out_delivers_every_event_to_every_observer(event):
    first, broken, last = Recorder(), Recorder(fail=True), Recorder()
    fan = h.Observers([first, None, broken, last])
    with pytest.raises(RuntimeError, match="broken observer"):
        fan.on_event(event)  # the error is not swallowed...
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


def test_a_live_stream_reports_queue_events_too(engine):
    a, b = Recorder(), Recorder()
    with ServerThread(engine) as srv:
        srv.server.stream_observers = lambda sid, attrs, *_variant: [a, b]
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
    assert result.finals and not result.errors
    expected = {h.StreamStarted, h.AudioFed, h.VadOutput, h.AsrQueued, h.AsrDequeued, h.AsrCompleted}
    assert expected | {h.FinalTranscript, h.StreamEnded} == a.kinds() == b.kinds()
    queued = [e.job.job_id for e in a.events if isinstance(e, h.AsrQueued)]
    dequeued = [e.job.job_id for e in a.events if isinstance(e, h.AsrDequeued)]
    assert sorted(queued) == sorted(dequeued)  # every job queued left the queue
    finals = [e for e in a.events if isinstance(e, h.FinalTranscript)]
    # One final latency: the one exported is the one the client was sent (which is rounded to ms).
    assert [round(f.latency_s, 3) for f in finals] == [m["latency_s"] for m in result.finals]
