"""Uploads beside live streams (issue 24): the same file gives the same text every time, and
uploads do not push the live streams' finals past their budget.

Against a real ``speechpipe serve`` (defaults, a subprocess), with the official ``openai`` SDK:

1. **repeat**: the 62 s recording (../shared/corpus/long) uploaded ``--repeat`` times at once:
   how many different texts came back;
2. **live alone**: ``--live`` real-time streams (corpus speech, noise in the pauses, mixed formats:
   benchmarks/live_streams.py), their final latency p50/p95;
3. **live + uploads**: the same live streams, and ``--uploads`` uploads of the recording sent at
   once 5 s into them: the live finals' latency p50/p95 again, how many uploads were served and
   how many refused (503 ``server_busy`` with ``Retry-After``), and the uploads' wall time.

    python benchmarks/uploads.py [--repeat 5] [--live 2] [--uploads 6] [--duration 45]

To compare two commits side by side, run it with ``PYTHONPATH`` pointing at the other commit's
packages (the server subprocess inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_streams import CORPUS, build_stream, noises, utterances
from machine import machine_line
from streaming import FRAME_S, pct, run_level, serve, stop

from speechpipe.pipeline.evaluate.quality.wer import score_corpus

LONG = CORPUS / "long" / "ted_bill-gates_next-epidemic_first-62s.mp3"


def upload(api: openai.OpenAI) -> tuple[str | None, float, str]:
    """One upload of the recording: (its text or None, wall seconds, "served" or why not)."""
    t0 = time.perf_counter()
    try:
        with LONG.open("rb") as f:
            text = api.audio.transcriptions.create(file=f, model="whisper-1").text
        return text, time.perf_counter() - t0, "served"
    except openai.APIStatusError as exc:
        retry = exc.response.headers.get("retry-after", "-")
        return None, time.perf_counter() - t0, f"{exc.status_code} {exc.body.get('code', '')} retry-after {retry}"


async def uploads_at_once(api: openai.OpenAI, n: int, delay_s: float = 0.0) -> list[tuple[str | None, float, str]]:
    await asyncio.sleep(delay_s)
    return list(await asyncio.gather(*(asyncio.to_thread(upload, api) for _ in range(n))))


def latencies(results) -> list[float]:
    return [x for r in results for x in r.latencies]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="uploads of the same file at once (default 5)")
    ap.add_argument("--live", type=int, default=2, help="live streams (default 2)")
    ap.add_argument("--uploads", type=int, default=6, help="uploads beside the live streams (default 6)")
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of audio per live stream")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="server config override")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    flags = ["--log-level", "WARNING"] + [x for o in args.overrides for x in ("--set", o)]
    server, port = serve(flags)
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    url = f"ws://127.0.0.1:{port}/stream"
    streams = [build_stream(k, utterances(), args.duration, noises()) for k in range(args.live)]
    try:
        upload(api)  # warm-up
        repeat = asyncio.run(uploads_at_once(api, args.repeat))
        time.sleep(2)
        alone, _wall = asyncio.run(run_level(url, streams, 1, 2.0))
        time.sleep(3)

        async def beside():
            live = asyncio.create_task(run_level(url, streams, 1, 2.0))
            ups = await uploads_at_once(api, args.uploads, delay_s=5.0)
            return (await live)[0], ups

        with_uploads, ups = asyncio.run(beside())
    finally:
        stop(server)
    texts = [t for t, _w, _s in repeat if t is not None]
    reference = LONG.with_suffix(".txt").read_text()
    wers = sorted({round(score_corpus([(reference, t)]).wer * 100, 2) for t in texts})
    print(f"\n{os.cpu_count()} cores; server overrides: {', '.join(args.overrides) or 'none'}\n")
    print("| what | figure |")
    print("|---|---|")
    print(f"| {args.repeat} uploads of the 62 s recording at once | {len(set(texts))} different text(s) "
          f"of {len(texts)} served; WER % {', '.join(f'{w:.2f}' for w in wers)} |")  # fmt: skip
    for label, results in (
        (f"{args.live} live alone", alone),
        (f"{args.live} live + {args.uploads} uploads", with_uploads),
    ):
        lat = latencies(results)
        lost = sum(r.lost for r in results) + sum(1 for r in results if r.end is None or r.errors)
        print(f"| {label}: finals, p50 / p95 / max s, lost | {len(lat)}, {pct(lat, 50):.2f} / {pct(lat, 95):.2f} / "
              f"{max(lat, default=float('nan')):.2f}, {lost} |")  # fmt: skip
    served = [w for t, w, _s in ups if t is not None]
    refused = [s for t, _w, s in ups if t is None]
    print(f"| uploads beside live: served, refused | {len(served)}, {len(refused)}"
          + (f" ({refused[0]})" if refused else "") + " |")  # fmt: skip
    if served:
        print(
            f"| served uploads' wall s, min / median / max | {min(served):.1f} / {np.median(served):.1f} / {max(served):.1f} |"
        )
    print(f"\nframes of {FRAME_S * 1000:.0f} ms at real time; uploads sent 5 s into the live streams")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
