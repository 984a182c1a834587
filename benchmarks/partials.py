"""Live captions as a reader suffers them (issue 27): per N concurrent real-time streams, the time
to a segment's first partial, how much shown text is taken back, and what the finals cost.

Streams: held-out corpus utterances joined by 1-2.5 s pauses holding real room noise
(benchmarks/live_streams.py), 16 kHz, 20 ms frames at real-time pace, N at once. Each row is a
fresh ``speechpipe serve``; the same streams run with ``server.partial_commit = false`` (every
partial the newest hypothesis as it is: the behaviour before issue 27) and ``true`` (committed
words by LocalAgreement-2, never taken back).

Per segment, the text a reader sees is its partials' ``text`` in turn, then the final's. Each
update's **erasure** is the characters of the previous text it does not keep as its start (taken
back or rewritten); the **normalized erasure** of a run is the sum over its segments over the
characters of their finals. The same for ``stable`` alone (the committed words, then the final):
0 when nothing committed was ever taken back, the final included. First partial: from the client's
receipt of ``speech_start`` to that of the segment's first partial (segments without a partial
are counted apart). Final latency: the server's ``latency_s``. WER: the finals against the
references. whisper_streaming's own code is not run here: the policy it names (LocalAgreement-2)
is measured inside this server, on the same audio as the behaviour before it.

    python benchmarks/partials.py                 # N = 1 and 8
    python benchmarks/partials.py --streams 1 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import Server
from live_streams import FRAME_S, RATE, build_stream, noises, utterances
from machine import machine_line
from websockets.asyncio.client import connect

from speechpipe.pipeline.evaluate.quality.wer import score_corpus


async def one(url: str, frames: list[bytes]) -> list[tuple[float, dict]]:
    """One real-time stream: every message with the monotonic time it arrived."""
    got: list[tuple[float, dict]] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "partials": True}))

        async def read() -> None:
            async for raw in ws:
                got.append((time.monotonic(), json.loads(raw)))

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        for k, f in enumerate(frames):
            await ws.send(f)
            await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S - time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        await reader
    return got


def erased(before: str, after: str) -> int:
    """Characters of ``before`` that ``after`` does not keep as its start."""
    k = 0
    while k < min(len(before), len(after)) and before[k] == after[k]:
        k += 1
    return len(before) - k


def figures(runs: list[list[tuple[float, dict]]], refs: list[str]) -> dict:
    firsts, without, partials, segments, latencies = [], 0, 0, 0, []
    shown_erased = stable_erased = taken_back = final_chars = 0
    for got in runs:
        starts = {m["segment"]: t for t, m in got if m["type"] == "speech_start"}
        by_seg: dict[int, list[dict]] = {}
        for t, m in got:
            if m["type"] in ("partial", "final"):
                by_seg.setdefault(m["segment"], []).append(m | {"_t": t})
        for seg, ms in by_seg.items():
            final = next((m for m in ms if m["type"] == "final"), None)
            if final is None or final.get("status") == "lost":
                continue
            segments += 1
            latencies.append(final["latency_s"])
            parts = [m for m in ms if m["type"] == "partial"]
            partials += len(parts)
            if parts and seg in starts:
                firsts.append(parts[0]["_t"] - starts[seg])
            elif not parts:
                without += 1
            shown = [m["text"] for m in parts] + [final["text"]]
            stable = [m.get("stable", "") for m in parts] + [final["text"]]
            for a, b in pairwise(shown):
                e = erased(a, b)
                shown_erased += e
                taken_back += e > 0
            stable_erased += sum(erased(a, b) for a, b in pairwise(stable))
            final_chars += len(final["text"])
    hyps = [" ".join(m["text"] for _, m in got if m["type"] == "final") for got in runs]
    q = statistics.quantiles(firsts, n=20) if len(firsts) >= 2 else [float("nan")] * 19
    lq = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {
        "segments": segments,
        "without": without,
        "partials": partials,
        "first_p50": statistics.median(firsts) if firsts else float("nan"),
        "first_p95": q[18],
        "erasure": shown_erased / max(1, final_chars),
        "stable_erasure": stable_erased / max(1, final_chars),
        "taken_back": taken_back,
        "latency_p50": statistics.median(latencies) if latencies else float("nan"),
        "latency_p95": lq[18],
        "wer": score_corpus(zip(refs, hyps)).wer,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of audio a stream (default 45)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    utts, noise = utterances(), noises()
    print(
        "\n| N | partials | segments (without a partial) | partials per segment | first partial p50 / p95 "
        "| normalized erasure: shown | of stable | updates that took text back | final latency p50 / p95 | WER |"
    )
    print("|---:|---|---:|---:|---|---:|---:|---:|---|---:|")
    for n in args.streams:
        streams = [build_stream(500 + k, utts, args.duration, noise, None, mixed_formats=False) for k in range(n)]
        frames = [s.frames() for s in streams]
        for commit in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                server = Server("", [f"server.partial_commit={str(commit).lower()}"], Path(tmp))
                try:

                    async def all_streams(server=server, frames=frames):
                        return await asyncio.gather(*(one(server.url, f) for f in frames))

                    runs = asyncio.run(all_streams())
                finally:
                    server.stop()
            f = figures(runs, [s.reference for s in streams])
            label = "committed (LocalAgreement-2)" if commit else "as hypothesized (before)"
            stable = f"{f['stable_erasure']:.3f}" if commit else "-"  # nothing is committed before
            print(
                f"| {n} | {label} | {f['segments']} ({f['without']}) | {f['partials'] / max(1, f['segments']):.2f} "
                f"| {f['first_p50']:.2f} / {f['first_p95']:.2f} s | {f['erasure']:.3f} | {stable} "
                f"| {f['taken_back']} | {f['latency_p50']:.2f} / {f['latency_p95']:.2f} s | {f['wer']:.1%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
