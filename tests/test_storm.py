"""A storm of malformed and hostile traffic beside a healthy stream, on a real server on 127.0.0.1:
no internal error, no final of the healthy stream lost, every file descriptor given back."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
from baselines import live_wer_ceiling
from conftest import SPEECH
from livehelp import ServerThread
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speechpipe.pipeline.clients.client import stream_file
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score
from speechpipe.pipeline.offline.runner import transcribe_file

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
START = {"type": "start"}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def talk(url: str, messages: list, *, abort: bool = False, read: bool = True) -> list[dict]:
    """Send ``messages`` (dicts as JSON, str as text, bytes as binary) and collect what comes back."""
    got: list[dict] = []
    try:
        async with connect(url, max_size=None) as ws:
            for m in messages:
                await ws.send(json.dumps(m) if isinstance(m, dict) else m)
            if abort:
                ws.transport.abort()
                return got
            if read:
                async for raw in ws:
                    got.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return got


def noise_frames(seconds: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(int(seconds * 16000)) * 0.3).clip(-1, 1)
    return [(x[i : i + 320] * 32767).astype("<i2").tobytes() for i in range(0, x.size, 320)]


def hostile(round_: int) -> list[tuple[list, dict, str | None]]:
    """One round of the storm: (messages, options, the error it must get) per connection."""
    nan = np.full(320, np.nan, np.float32)
    return [
        (["{not json"], {}, "bad_json"),
        (["[1, 2]"], {}, "bad_message"),
        ([{"type": "hello"}], {}, "unknown_type"),
        ([b"\x00\x01" * 160], {}, "binary_before_start"),
        (['{"type": "start", "sample_rate": ' + "9" * 4000 + "}"], {}, "bad_message"),
        ([START, b"\x00" * 321], {}, "bad_audio"),
        ([START, b"\x00" * (256 * 1024 + 2)], {}, "frame_too_large"),
        ([START, START], {}, "already_started"),
        ([{"type": "start", "encoding": "pcm_f32le"}, *([nan.tobytes()] * 50), {"type": "stop"}], {}, None),
        ([START, *noise_frames(2.0, round_)], {"abort": True}, None),  # a flood of noise, then the client vanishes
        ([], {"abort": True}, None),  # connect and vanish
    ]


def test_a_storm_beside_a_healthy_stream(engine):
    offline = score(JFK.with_suffix(".txt").read_text(), transcribe_file(JFK, Config(), engine).text).wer
    # Room for every connection of a round: this is about bad traffic, not capacity.
    with ServerThread(engine, max_streams=16, stream_load=0.01, idle_timeout_s=5.0) as srv:
        fds_before = open_fds()

        async def scenario():
            healthy = asyncio.create_task(stream_file(srv.url, JFK, speed=1))
            answers = []
            k = 0
            while not healthy.done():
                round_ = hostile(k)
                got = await asyncio.gather(*(talk(srv.url, m, **o) for m, o, _ in round_))
                answers += [(expected, g) for (_m, _o, expected), g in zip(round_, got)]
                k += 1
            return await healthy, answers, k

        result, answers, rounds = asyncio.run(scenario())
        assert rounds >= 3
        for expected, got in answers:
            codes = [m["code"] for m in got if m["type"] == "error"]
            assert codes == ([expected] if expected else []), (expected, got)  # never internal_error
        # The healthy stream keeps its promise: every segment its final, all of its words.
        assert result.errors == [] and result.lost == 0 and result.finals
        assert result.end["reason"] == "stop" and result.end["segments"] == len(result.finals)
        assert all(f["status"] == "ok" for f in result.finals)
        assert score(JFK.with_suffix(".txt").read_text(), result.text).wer <= live_wer_ceiling(offline)

        def settled() -> bool:
            return srv.server.streams == {} and srv.server.scheduler.idle and open_fds() <= fds_before

        deadline = time.monotonic() + 15  # vanished clients are noticed, their streams released
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert settled(), (srv.server.streams, open_fds(), fds_before)
