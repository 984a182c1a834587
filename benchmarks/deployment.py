"""Deployment patterns measured on a real server with real speech: canary rollback and promotion,
blue/green switches under live streams, and a Whisper base shadow beside tiny.en.

    python benchmarks/deployment.py [--only canary|bluegreen|shadow]

Streams are corpus utterances joined by noisy pauses (benchmarks/live_streams.py), sent in real
time; after each stream its reference is posted to ``/v1/feedback``, so the canary's WER gate and
the shadow's scores have human ground truth. Each scenario starts its own ``speechpipe serve``
(a subprocess, as in production) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_streams import FRAME_S, RATE, StreamAudio, build_stream, noises, utterances
from machine import machine_line
from streaming import pct, serve

from speechpipe.pipeline.clients.client import StreamResult, paced, stream_pcm
from speechpipe.pipeline.deploy import share_of
from speechpipe.pipeline.protocol import Start

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin-token"


class Server:
    """``speechpipe serve`` with a config file and overrides, on a free port."""

    def __init__(self, config_text: str, overrides: list[str], workdir: Path, flags: tuple[str, ...] = ()) -> None:
        cfg = workdir / "deploy.toml"
        cfg.write_text(config_text)
        flags = ["--config", str(cfg), "--log-level", "WARNING", "--admin-token", ADMIN, *flags]
        for o in overrides:
            flags += ["--set", o]
        self.proc, self.port = serve(flags, timeout_s=300)  # two models may load

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def admin(self, action: dict | None = None) -> dict:
        data = None if action is None else json.dumps(action).encode()
        req = urllib.request.Request(
            f"{self.http}/admin/deploy",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def feedback(self, session: str, text: str) -> dict:
        req = urllib.request.Request(
            f"{self.http}/v1/feedback",
            data=json.dumps({"session": session, "text": text}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def metrics(self) -> str:
        return urllib.request.urlopen(f"{self.http}/metrics", timeout=30).read().decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def send(server: Server, s: StreamAudio, client: str | None = None, feedback: bool = True) -> StreamResult:
    start = s.fmt.start
    start = Start(start.sample_rate, start.encoding, start.channels, client=client)
    result = await stream_pcm(server.url, start, paced(s.frames(), FRAME_S, 1.0))
    if feedback and result.ready is not None:
        await asyncio.to_thread(server.feedback, result.ready["session"], s.reference)
    return result


def corpus_streams(n: int, duration_s: float, seed: int = 0) -> list[StreamAudio]:
    utts, noise = utterances(), noises()
    return [build_stream(seed + k, utts, duration_s, noise, mixed_formats=True) for k in range(n)]


def lost(results: list[StreamResult]) -> int:
    return sum(r.lost for r in results) + sum(1 for r in results if r.end is None or r.errors)


# -- canary ---------------------------------------------------------------------------------------

CANARY = """
[deploy]
mode = "canary"
primary = "default"
candidate = "{candidate}"
steps = [0.25, 0.5, 1.0]
step_min_streams = 2
step_min_s = 20
[deploy.gates]
min_finals = 4
min_feedback_words = 20
[variants.harmful.vad]
backend = "webrtc"
aggressiveness = 3
pre_roll_ms = 0
hangover_ms = 90
[variants.good.vad]
"""


def key_for(candidate: str, weight: float, on_candidate: bool, skip: int) -> str:
    """The ``skip``-th client key the canary routes to the candidate (or not) at ``weight``."""
    found = 0
    for k in range(100_000):
        key = f"client-{k}"
        if (share_of(f"client:{key}", candidate) < weight) == on_candidate:
            if found == skip:
                return key
            found += 1
    raise SystemExit("no client key found")


async def canary_run(candidate: str, streams: list[StreamAudio], workdir: Path) -> tuple[dict, int, list]:
    """Rounds of concurrent streams, two on each side of the canary (keys picked so; at 100 %
    every key is the candidate's), each stream's reference posted as feedback; until the canary
    is promoted or rolled back."""
    server = Server(CANARY.format(candidate=candidate), [], workdir)
    results: list[StreamResult] = []
    try:
        k = 0
        while k + 4 <= len(streams):
            state = server.admin()
            if state["state"] in ("rolled_back", "promoted"):
                break
            weight = state["variants"][candidate]["weight"]
            sides = (True, True, False, False) if weight < 1.0 else (True, True, True, True)
            keys = [key_for(candidate, weight, side, k + i) for i, side in enumerate(sides)]
            batch = streams[k : k + 4]
            results += await asyncio.gather(*(send(server, s, key) for s, key in zip(batch, keys)))
            k += len(batch)
            await asyncio.sleep(2.5)  # deploy ticks see the last feedback
        return server.admin(), k, results
    finally:
        server.stop()


def canary_table(name: str, state: dict, sent: int, results: list[StreamResult]) -> None:
    print(f"\n### canary of `{name}`: {state['state']} after {sent} streams, lost finals {lost(results)}\n")
    print("| time | action | reason | weights | step |")
    print("|---|---|---|---|---|")
    t0 = state["history"][0]["at"] if state["history"] else 0
    for ch in state["history"]:
        weights = ", ".join(f"{k} {v:.0%}" for k, v in ch.get("weights", {}).items())
        print(f"| +{ch['at'] - t0:.0f} s | {ch['action']} | {ch['reason']} | {weights} | {ch.get('step')} |")
    for ch in state["history"]:
        for g in ch.get("gates", []):
            if ch["action"] in ("rollback", "advance", "promote"):
                print(
                    f"|   gate | {g['name']} | passed={g['passed']} | candidate {g['candidate']} vs primary "
                    f"{g['primary']} | threshold {g['threshold']} |"
                )


# -- blue/green -----------------------------------------------------------------------------------

BLUEGREEN = """
[deploy]
mode = "bluegreen"
primary = "default"
candidate = "green"
[variants.green.vad]
backend = "webrtc"
"""


async def bluegreen(streams: list[StreamAudio], workdir: Path) -> None:
    server = Server(BLUEGREEN, [], workdir)
    try:
        tasks = [asyncio.create_task(send(server, s, feedback=False)) for s in streams[:4]]
        await asyncio.sleep(8)
        t_switch = time.monotonic()
        await asyncio.to_thread(server.admin, {"action": "switch", "active": "green"})
        effect = await first_stream_on(server, "green", t_switch)
        await asyncio.sleep(6)
        t_back = time.monotonic()
        await asyncio.to_thread(server.admin, {"action": "rollback"})
        back = await first_stream_on(server, "default", t_back)
        results = await asyncio.gather(*tasks)
        variants = [r.ready["variant"] if r.ready else None for r in results]
        finals_variants = {f.get("variant") for r in results for f in r.finals}
        print("\n### blue/green: switch and rollback while 4 live streams run\n")
        print(
            "| streams | dropped | finals | lost | their variant (ready / finals) | switch -> new stream on green | rollback -> on default |"
        )
        print("|---|---|---|---|---|---|---|")
        dropped = sum(1 for r in results if r.end is None or r.close_code not in (1000,))
        print(
            f"| 4 | {dropped} | {sum(len(r.finals) for r in results)} | {lost(results)} | {set(variants)} / "
            f"{finals_variants} | {effect * 1000:.0f} ms | {back * 1000:.0f} ms |"
        )
    finally:
        server.stop()


async def first_stream_on(server: Server, variant: str, since: float) -> float:
    """Seconds from ``since`` until a new stream's ready names ``variant`` (the switch in effect)."""
    short = StreamAudio(np.zeros(int(0.2 * RATE), np.float32), "", corpus_streams(1, 5)[0].fmt)
    while True:
        r = await stream_pcm(server.url, short.fmt.start, paced(short.frames(), FRAME_S, 0.0))
        if r.ready and r.ready["variant"] == variant:
            return time.monotonic() - since
        if time.monotonic() - since > 30:
            raise SystemExit(f"no stream reached {variant} within 30 s")


# -- shadow ---------------------------------------------------------------------------------------

SHADOW = """
[deploy]
mode = "{mode}"
primary = "default"
candidate = "base"
[variants.base.asr]
model = "base"
"""


async def shadow_level(mode: str, n: int, streams: list[StreamAudio], workdir: Path, queue: int) -> dict:
    server = Server(SHADOW.format(mode=mode), [f"server.shadow_max_queued={queue}"], workdir)
    try:
        warm = StreamAudio(streams[0].audio[: 6 * RATE], "", streams[0].fmt)
        await send(server, warm, feedback=False)
        results = await asyncio.gather(*(send(server, s) for s in streams[:n]))
        await asyncio.sleep(20 if mode == "shadow" else 0)  # shadow work finishes after the streams
        page = server.metrics()
        return {"results": results, "metrics": page}
    finally:
        server.stop()


def metric_sum(page: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in page.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def shadow(streams: list[StreamAudio], workdir: Path, levels: list[int], queue: int) -> None:
    print(f"\n### shadow: Whisper base beside tiny.en (primary), server.shadow_max_queued = {queue}\n")
    print(
        "| streams | mode | primary p50 | primary p95 | lost | shadow done | shadow shed | agreement (mean) | "
        "WER tiny.en | WER base |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in levels:
        for mode in ("single", "shadow"):
            out = await shadow_level(mode, n, streams, workdir, queue)
            results, page = out["results"], out["metrics"]
            lat = [x for r in results for x in r.latencies]
            done = metric_sum(page, "speechpipe_shadow_segments_total", shadow_outcome="done")
            shed = metric_sum(page, "speechpipe_shadow_segments_total", shadow_outcome="shed")
            agree_n = metric_sum(page, "speechpipe_shadow_agreement_count")
            agree = metric_sum(page, "speechpipe_shadow_agreement_sum") / agree_n if agree_n else float("nan")
            wer = {}
            for v in ("default", "base"):
                words = metric_sum(page, "speechpipe_feedback_words_total", pipeline_variant=v)
                errors = metric_sum(page, "speechpipe_feedback_errors_total", pipeline_variant=v)
                wer[v] = f"{errors / words:.1%}" if words else "-"
            print(
                f"| {n} | {mode} | {pct(lat, 50):.2f} s | {pct(lat, 95):.2f} s | {lost(results)} | {done:.0f} | "
                f"{shed:.0f} | {agree:.3f} | {wer['default']} | {wer['base']} |",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("canary", "bluegreen", "shadow"))
    ap.add_argument("--streams", type=int, default=32, help="canary streams at most per run")
    ap.add_argument("--shadow-streams", type=int, nargs="+", default=[2, 4], help="shadow rows (streams at once)")
    ap.add_argument("--shadow-queue", type=int, default=32, help="server.shadow_max_queued of the shadow rows")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    os.environ.setdefault("OTEL_SDK_DISABLED", "false")
    streams = corpus_streams(max(args.streams, 4), 30.0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "canary"):
            for name in ("harmful", "good"):
                state, sent, results = asyncio.run(canary_run(name, streams[: args.streams], work))
                canary_table(name, state, sent, results)
        if args.only in (None, "bluegreen"):
            asyncio.run(bluegreen(corpus_streams(4, 30.0, seed=40), work))
        if args.only in (None, "shadow"):
            n = max(args.shadow_streams)
            asyncio.run(shadow(corpus_streams(n, 30.0, seed=80), work, args.shadow_streams, args.shadow_queue))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
