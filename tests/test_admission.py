"""Admission by capacity, alone (time passed in) and in a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import SAMPLES
from livehelp import ServerThread
from websockets.asyncio.client import connect

from speechpipe.pipeline.clients.client import stream_file
from speechpipe.pipeline.scheduling.admission import Admission


def test_the_prior_holds_until_a_window_was_served_then_the_measurement():
    adm = Admission(workers=2, max_load=0.75, prior_cost=0.25, window_s=60.0)
    assert adm.verdict(0.0, 0).admitted and adm.verdict(0.0, 5).admitted  # 6 x 0.25 / 2 = 0.75
    assert not adm.verdict(0.0, 6).admitted  # 7 x 0.25 / 2 = 0.875
    adm.record_streams(0.0, 4)
    for k in range(60):  # 4 streams for a minute, 0.4 worker-s of promised work each second
        adm.record_call(float(k), 0.4)
    assert adm.cost(59.0) == pytest.approx(0.25)  # still the prior: less than a window served
    assert adm.cost(61.0) == pytest.approx(0.4 * 59 / 60 / 4, rel=1e-6)  # measured: 0.0983 per stream
    v = adm.verdict(61.0, 4)
    assert v.admitted and v.load == pytest.approx(5 * v.cost / 2)
    assert adm.verdict(61.0, 15).admitted is False  # 16 x 0.098 / 2 = 0.79 > 0.75


def test_mean_streams_weights_time():
    adm = Admission(workers=1, max_load=1.0, prior_cost=1.0, window_s=10.0)
    adm.record_streams(0.0, 2)
    adm.record_streams(15.0, 4)  # 2 streams for 5 s of the window, then 4 for 5 s
    for t in range(11, 21):
        adm.record_call(float(t), 0.3)
    assert adm.cost(20.0) == pytest.approx(3.0 / 10.0 / 3.0)


def test_an_upload_waits_for_the_worker_live_streams_leave_and_for_the_uploads_queued():
    """Two workers: an upload runs on one of them, below the live finals. A new upload is refused
    while the live streams would need more than the worker an upload leaves them, or while the
    uploads already queued would take longer than the limit; a live stream is judged on the live
    streams alone (uploads yield to it)."""
    adm = Admission(workers=2, max_load=0.6, prior_cost=0.125, window_s=60.0)
    assert adm.upload_verdict(0.0, 4, backlog_s=0.0, max_wait_s=30.0).admitted  # 4 x 0.125 / 1 = 0.5
    crowded = adm.upload_verdict(0.0, 5, backlog_s=0.0, max_wait_s=30.0)  # 0.625 of the one worker left
    assert not crowded.admitted and "5 live streams need 62%" in crowded.reason
    queued = adm.upload_verdict(0.0, 0, backlog_s=31.0, max_wait_s=30.0)
    assert not queued.admitted and "about 31 s" in queued.reason
    assert adm.upload_verdict(0.0, 0, backlog_s=29.0, max_wait_s=30.0).admitted
    assert adm.verdict(0.0, 8).admitted and not adm.verdict(0.0, 9).admitted  # 9 x 0.125 / 2, 10 x
    one = Admission(workers=1, max_load=0.6, prior_cost=0.125)  # one worker: uploads take what is left
    assert one.upload_verdict(0.0, 4, backlog_s=0.0, max_wait_s=30.0).admitted
    assert not one.upload_verdict(0.0, 5, backlog_s=0.0, max_wait_s=30.0).admitted


@pytest.mark.corpus
def test_a_server_at_capacity_refuses_with_server_busy(engine):
    # One worker, a stream assumed to need half of it: a second stream would take it to 100 %.
    with ServerThread(engine, max_load=0.75, stream_load=0.5, retry_after_s=2) as srv:

        async def scenario():
            ready = asyncio.Event()
            first = asyncio.create_task(
                stream_file(srv.url, SAMPLES / "ljspeech_LJ001-0002.wav", speed=1, on_message=lambda m: ready.set())
            )
            await asyncio.wait_for(ready.wait(), 30)
            async with connect(srv.url) as ws:  # turned away before it could send anything
                refused = json.loads(await ws.recv())
                await ws.wait_closed()
                code = ws.close_code
            return await first, refused, code

        first, refused, code = asyncio.run(scenario())
    assert refused["code"] == "server_busy" and refused["retry_after_s"] == 2.0 and "capacity" in refused["message"]
    assert code == 1013
    assert first.finals and first.lost == 0 and not first.errors  # the accepted stream keeps its promise
