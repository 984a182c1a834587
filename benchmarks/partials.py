"""Live captions as a reader suffers them (issue 27): per N concurrent real-time streams, the time
to a segment's first partial, how much shown text is taken back, and what the finals cost.

Streams: held-out corpus utterances joined by 1-2.5 s pauses holding real room noise
(benchmarks/live_streams.py), 16 kHz, 20 ms frames at real-time pace, N at once, after an
unmeasured 4 s warm-up stream. Each row is a fresh ``speechpipe serve`` on the same streams, in
each mode of :data:`MODES`: the behaviour before issue 27 (every partial the newest hypothesis,
finals decoded afresh), LocalAgreement-2 with the committed words as the partials' prefix and the
finals kept to them, and the defaults (first partials sooner, the unstable tail held back).

Per segment, the text a reader sees is its partials' ``text`` in turn, then the final's. Each
update's **erasure** is the characters of the previous text it does not keep as its start (taken
back or rewritten); the **normalized erasure** of a run is the sum over its segments over the
characters of their finals. The same for ``stable`` alone (the committed words, then the final):
0 when nothing committed was ever taken back, the final included. **Shown before the final**: the
last partial's length over the final's (what the reader had before the final; the price of
showing less). First partial: from the client's receipt of ``speech_start`` to that of the
segment's first partial (segments without a partial are counted apart). Final latency: the
server's ``latency_s``. WER: the finals against the references.

``--whisper-streaming PYTHON`` adds a row for the PyPI ``whisper-streaming`` package (a rework of
ÚFAL's whisper_streaming, LocalAgreement over a growing buffer) on the first stream at N = 1,
through benchmarks/whisper_streaming_driver.py in an environment of its own (it pins
faster-whisper 1.1.1; docs/benchmarks.md says how to make one). ÚFAL's own repository is not on a
package registry and is not run.

    python benchmarks/partials.py                 # N = 1 and 8
    python benchmarks/partials.py --streams 1 --duration 30
    python benchmarks/partials.py --whisper-streaming /path/to/ws-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from deployment import Server
from live_streams import FRAME_S, RATE, build_stream, noises, utterances
from machine import machine_line
from websockets.asyncio.client import connect

from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.live.captions import erased


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


def figures(runs: list[list[tuple[float, dict]]], refs: list[str]) -> dict:
    firsts, without, partials, segments, latencies = [], 0, 0, 0, []
    shown_erased = stable_erased = taken_back = final_chars = last_chars = 0
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
            last_chars += len(parts[-1]["text"]) if parts else 0
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
        "shown_before": last_chars / max(1, final_chars),
        "taken_back": taken_back,
        "latency_p50": statistics.median(latencies) if latencies else float("nan"),
        "latency_p95": lq[18],
        "wer": score_corpus(zip(refs, hyps)).wer,
    }


#: each mode's server overrides and label: the behaviour before issue 27, LocalAgreement-2 with the
#: committed words as the decoder's prefix showing the whole tail, and the defaults (first partials
#: sooner, the tail held back: its last word, and from its first word under 0.5 probability)
MODES = {
    "before": (
        [
            "server.partial_commit=false",
            "server.partial_first_interval_s=1.0",
            "server.partial_hold_words=0",
            "server.partial_min_probability=0",
            "server.partial_tail_words=0",
        ],
        "as hypothesized (before)",
    ),
    "agreement": (
        [
            "server.partial_first_interval_s=1.0",
            "server.partial_hold_words=0",
            "server.partial_min_probability=0",
            "server.partial_tail_words=0",
        ],
        "LocalAgreement-2 + prefix, whole tail",
    ),
    "committed": ([], "+ first sooner, tail held (default)"),
}


async def warm_up(url: str, frames: list[bytes]) -> None:
    """A few seconds of one stream, unmeasured: the first Whisper calls of a fresh server are slow."""
    await one(url, frames[: round(4.0 / FRAME_S)])


def whisper_streaming_row(python: str, stream, ours: list[tuple[float, dict]]) -> dict:
    """whisper_streaming (PyPI ``whisper-streaming``: LocalAgreement over a growing buffer, 1 s
    chunks, only committed words shown) on the same stream, through ``python`` (an environment of
    its own: benchmarks/whisper_streaming_driver.py). Its first words are timed from the moment
    speechpipe's VAD told our client ``speech_start`` in the same stream (the segment's start
    plus the 0.5 s pre-roll the VAD keeps before its trigger), to the first word it emitted that
    lies in that segment; its finalization, from a segment's end to the emission of its last word.
    It shows committed words only, so nothing it shows is ever taken back."""
    from speechpipe.stages.asr.config import DEFAULT_MODEL
    from speechpipe.stages.asr.model import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "streams.npz"
        np.savez(npz, s0=stream.audio.astype(np.float32))
        driver = Path(__file__).with_name("whisper_streaming_driver.py")
        out = subprocess.run(
            [python, str(driver), str(npz), resolve_model(DEFAULT_MODEL)], capture_output=True, text=True, check=True
        )
    words = json.loads(out.stdout)[0]
    segments = [(m["start"], m["end"]) for _t, m in ours if m["type"] == "final" and m.get("status") == "ok"]
    firsts, finals = [], []
    for start, end in segments:
        inside = [w for w in words if start - 0.1 <= w["start"] < end]
        if inside:
            firsts.append(inside[0]["emitted"] - (start + 0.5))
            finals.append(max(w["emitted"] for w in inside) - end)
    hyp = "".join(w["text"] for w in words)
    q = statistics.quantiles(firsts, n=20) if len(firsts) >= 2 else [float("nan")] * 19
    lq = statistics.quantiles(finals, n=20) if len(finals) >= 2 else [float("nan")] * 19
    return {
        "segments": len(segments),
        "without": len(segments) - len(firsts),
        "updates": len(words),
        "first_p50": statistics.median(firsts) if firsts else float("nan"),
        "first_p95": q[18],
        "latency_p50": statistics.median(finals) if finals else float("nan"),
        "latency_p95": lq[18],
        "wer": score_corpus([(stream.reference, hyp)]).wer,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of audio a stream (default 45)")
    ap.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    ap.add_argument(
        "--whisper-streaming",
        metavar="PYTHON",
        help="also run the PyPI whisper-streaming package on the first stream at N = 1, with this interpreter "
        "(an environment of its own, docs/benchmarks.md)",
    )
    ap.add_argument("--dump", type=Path, help="write every run's messages (with arrival times) to this JSON file")
    args = ap.parse_args()
    dumped: dict[str, list] = {}
    print(machine_line(), flush=True)
    utts, noise = utterances(), noises()
    print(
        "\n| N | partials | segments (without a partial) | partials per segment | first partial p50 / p95 "
        "| normalized erasure: shown | of stable | shown before the final | updates that took text back "
        "| final latency p50 / p95 | WER |"
    )
    print("|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|")
    for n in args.streams:
        streams = [build_stream(500 + k, utts, args.duration, noise, None, mixed_formats=False) for k in range(n)]
        frames = [s.frames() for s in streams]
        for mode in args.modes:
            overrides, label = MODES[mode]
            with tempfile.TemporaryDirectory() as tmp:
                server = Server("", overrides, Path(tmp))
                try:

                    async def all_streams(server=server, frames=frames):
                        await warm_up(server.url, frames[0])
                        return await asyncio.gather(*(one(server.url, f) for f in frames))

                    runs = asyncio.run(all_streams())
                finally:
                    server.stop()
            f = figures(runs, [s.reference for s in streams])
            if args.dump:
                dumped[f"{n}-{mode}"] = runs
                args.dump.write_text(json.dumps(dumped))
            stable = f"{f['stable_erasure']:.3f}" if mode != "before" else "-"  # nothing is committed before
            print(
                f"| {n} | {label} | {f['segments']} ({f['without']}) | {f['partials'] / max(1, f['segments']):.2f} "
                f"| {f['first_p50']:.2f} / {f['first_p95']:.2f} s | {f['erasure']:.3f} | {stable} "
                f"| {f['shown_before']:.2f} "
                f"| {f['taken_back']} | {f['latency_p50']:.2f} / {f['latency_p95']:.2f} s | {f['wer']:.1%} |",
                flush=True,
            )
        if args.whisper_streaming and n == 1:
            w = whisper_streaming_row(args.whisper_streaming, streams[0], runs[0])
            print(
                f"| 1 | whisper-streaming (LocalAgreement, 1 s chunks, committed only) | {w['segments']} "
                f"({w['without']}) | {w['updates'] / max(1, w['segments']):.2f} | {w['first_p50']:.2f} / "
                f"{w['first_p95']:.2f} s | 0 | 0 | - | 0 | {w['latency_p50']:.2f} / {w['latency_p95']:.2f} s "
                f"(last word) | {w['wer']:.1%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
