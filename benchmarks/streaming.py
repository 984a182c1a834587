"""Live streaming benchmark: N concurrent real-time streams against a local ``speechpipe serve``.

Streams are corpus utterances joined by 1.0-2.5 s pauses (see benchmarks/live_streams.py): by
default the pauses hold the corpus noise clips at -45...-30 dBFS, and the same table is printed
for digital silence beside it. The streams come in mixed formats (16 kHz s16, 8 kHz, 48 kHz float
stereo, 44.1 kHz stereo), 20 ms frames at real-time pace, starting staggered over two seconds.

For each N the table gives: streams refused (``server_busy``); finals lost (a ``speech_start``
without a final transcript, or a final sent as lost, or a stream that broke); the final latency
(``latency_s`` as the server reports it: from the arrival of the audio at a segment's end to the
final being sent) p50/p95/max; partials per second; WER of the finals against the references
and the offline WER of exactly the same audio (the same StreamSession, segments packed); the
server's CPU (share of all cores) and its CPU seconds per second of stream audio served; the ASR
work the finals took per second of stream audio (from the server's own /metrics: what its
admission measures); and the Whisper encoder passes of all the level's jobs (partials and
speculative ones included) per final sent (``speechpipe.asr.passes``; "-" for a server older
than issue 24, which does not count them). An overload row offers ``--overload`` streams at once.

    python benchmarks/streaming.py                                  # N = 1 4 8 12 16 + 24 offered
    python benchmarks/streaming.py --streams 1 8 --pauses noise --overload 0
    python benchmarks/streaming.py --streams 4 --set server.speculative=false

The server runs as a subprocess with its defaults (one ASR worker per core) unless ``--set`` or
``--threads`` say otherwise, so its CPU time is measured apart from the clients'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
from live_streams import RATE, ROOT, StreamAudio, build_stream, noises, utterances
from machine import machine_line

from speechpipe.pipeline.clients.client import StreamResult, paced, stream_pcm
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.hooks import FinalTranscript
from speechpipe.pipeline.offline.driver import drive
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.asr import AsrConfig, AsrEngine

FRAME_S = 0.02
FINAL_ASR = re.compile(
    r'^speechpipe_asr_duration_seconds_sum\{[^}]*asr_kind="final"[^}]*\} ([0-9.e+-]+)$', re.MULTILINE
)
#: encoder passes (Whisper windows) of every job, partials included; absent before issue 24
PASSES = re.compile(r"^speechpipe_asr_passes_total\{[^}]*\} ([0-9.e+-]+)$", re.MULTILINE)


@dataclass
class Row:
    label: str
    offered: int
    results: list[StreamResult]
    served: list[int]  # indices of the streams that were not refused
    wall: float
    cpu: float
    asr_per_audio_s: float
    cpu_per_audio_s: float = 0.0  # server CPU seconds per second of stream audio served
    passes: float | None = None  # encoder passes of every job in the level (None: not counted)

    @property
    def refused(self) -> int:
        return self.offered - len(self.served)


def offline_hypothesis(engine: AsrEngine, audio: np.ndarray, config: Config) -> str:
    session = StreamSession(config.vad, pack_s=engine.config.window_s)
    chunks = (audio[i : i + 5 * RATE] for i in range(0, audio.size, 5 * RATE))
    finals = [e for e in drive(session, engine, chunks) if isinstance(e, FinalTranscript)]
    finals.sort(key=lambda f: f.segment.start_sample)
    return " ".join(f.transcript.text for f in finals if f.transcript.text)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def final_asr_seconds(port: int) -> tuple[float, float | None]:
    """The ASR seconds of final jobs so far, and the encoder passes of every job (None: a server
    that does not count them)."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    passes = PASSES.findall(page)
    return sum(float(m) for m in FINAL_ASR.findall(page)), (sum(map(float, passes)) if passes else None)


async def run_level(
    url: str, streams: list[StreamAudio], seed: int, stagger: float
) -> tuple[list[StreamResult], float]:
    rng = random.Random(seed)

    async def one(s: StreamAudio, delay: float) -> StreamResult:
        await asyncio.sleep(delay)
        return await stream_pcm(url, s.fmt.start, paced(s.frames(), FRAME_S, 1.0))

    t0 = time.monotonic()
    delays = [rng.uniform(0, stagger) if len(streams) > 1 else 0.0 for _ in streams]
    results = await asyncio.gather(*(one(s, d) for s, d in zip(streams, delays)))
    return list(results), time.monotonic() - t0


def refused(r: StreamResult) -> bool:
    return any(e.get("code") == "server_busy" for e in r.errors)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_streams: int) -> tuple[subprocess.Popen, int]:
    flags = ["--log-level", "WARNING", "--max-streams", str(max_streams)]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    for o in args.overrides:
        flags += ["--set", o]
    return serve(flags)


def serve(flags: list[str], timeout_s: float = 120.0) -> tuple[subprocess.Popen, int]:
    """``speechpipe serve FLAGS`` on a free port as a subprocess, once ``/readyz`` answers 200."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "speechpipe.pipeline.cli", "serve", "--port", str(port), *flags], cwd=ROOT
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200:
                return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def stop(server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Stop a server started by :func:`serve` as an operator would (SIGTERM: it drains), killed
    if it has not exited within ``timeout_s``."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()


def measure(args, streams: list[StreamAudio], levels: list[tuple[str, int, float]]) -> list[Row]:
    """Run each level (label, streams offered, stagger) against one fresh server."""
    server, port = start_server(args, max(16, *(n for _label, n, _s in levels)))
    url = f"ws://127.0.0.1:{port}/stream"
    rows = []
    try:
        # Warm the model up (first calls are slower) with a short stream.
        warm = StreamAudio(streams[0].audio[: 8 * RATE], "", streams[0].fmt)
        asyncio.run(run_level(url, [warm], 0, 0.0))
        for label, n, stagger in levels:
            c0, (a0, p0) = cpu_seconds(server.pid), final_asr_seconds(port)
            results, wall = asyncio.run(run_level(url, streams[:n], n, stagger))
            cpu_s = cpu_seconds(server.pid) - c0
            cpu = cpu_s / wall / (os.cpu_count() or 1)
            served = [k for k, r in enumerate(results) if not refused(r)]
            audio_s = sum(streams[k].audio.size for k in served) / RATE
            a1, p1 = final_asr_seconds(port)
            asr = (a1 - a0) / audio_s if audio_s else 0.0
            passes = p1 - p0 if p0 is not None and p1 is not None else None
            rows.append(Row(label, n, results, served, wall, cpu, asr, cpu_s / audio_s if audio_s else 0.0, passes))
            lat = [x for r in results for x in r.latencies]
            why = next((e.get("message", "") for r in results for e in r.errors if e.get("code") == "server_busy"), "")
            print(
                f"{label}: {len(served)}/{n} served, {len(lat)} finals, p50 {pct(lat, 50):.2f} s, "
                f"p95 {pct(lat, 95):.2f} s, lost {lost(rows[-1])}, CPU {cpu * 100:.0f}%"
                + (f"; first refusal: {why}" if why else ""),
                file=sys.stderr,
                flush=True,
            )
            time.sleep(3)  # let the admission window see the streams go
    finally:
        stop(server)
    return rows


def lost(row: Row) -> int:
    served = [row.results[k] for k in row.served]
    return sum(r.lost for r in served) + sum(1 for r in served if r.end is None or r.errors)


def table(title: str, rows: list[Row], streams: list[StreamAudio], offline: dict[int, str]) -> None:
    print(f"\n{title}")
    head = (
        f"{'N':>9} {'refused':>7} {'finals':>6} {'lost':>4} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
        f"{'partials/s':>10} {'WER %':>6} {'offline WER %':>13} {'CPU %':>6} {'ASR s/s':>8} "
        f"{'CPU s/s':>8} {'passes/final':>12}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        lat = [x for r in row.results for x in r.latencies]
        served = row.served
        wer = score_corpus((streams[k].reference, row.results[k].text) for k in served) if served else None
        off = (
            f"{score_corpus((streams[k].reference, offline[k]) for k in served).wer * 100:13.2f}"
            if offline and served
            else f"{'-':>13}"
        )
        partials = sum(len(row.results[k].partials) for k in served)
        print(
            f"{row.label:>9} {row.refused:7d} {len(lat):6d} {lost(row):4d} {pct(lat, 50):6.2f} {pct(lat, 95):6.2f} "
            f"{max(lat, default=float('nan')):6.2f} {partials / row.wall:10.2f} "
            f"{(wer.wer * 100 if wer else float('nan')):6.2f} {off} {row.cpu * 100:6.0f} {row.asr_per_audio_s:8.3f} "
            f"{row.cpu_per_audio_s:8.4f} "
            + (f"{row.passes / len(lat):12.2f}" if row.passes is not None and lat else f"{'-':>12}")
        )
    ok = [
        row.offered
        for row in rows
        if row.refused == 0 and pct([x for r in row.results for x in r.latencies], 95) <= 2.0
    ]
    print(f"largest N with p95 <= 2 s and none refused: {max(ok) if ok else 'none'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 12, 16], help="N values (default: 1 4 8 12 16)")
    ap.add_argument("--overload", type=int, default=24, help="streams offered at once in the overload row (0: none)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of audio per stream (default: 60)")
    ap.add_argument(
        "--pauses", nargs="+", choices=["noise", "silence"], default=["noise", "silence"], help="what fills the pauses"
    )
    ap.add_argument("--noise-dbfs", type=float, metavar="DB", help="one noise level instead of -45...-30 dBFS")
    ap.add_argument("--same-format", action="store_true", help="every stream 16 kHz s16 mono")
    ap.add_argument("--threads", type=int, default=0, help="model threads per ASR worker (default: the server's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="server config override")
    ap.add_argument("--no-offline", action="store_true", help="skip the offline WER")
    args = ap.parse_args()
    print(machine_line(), flush=True)

    utts = utterances()
    n_max = max([*args.streams, args.overload])
    engine = None if args.no_offline else AsrEngine(AsrConfig(threads=args.threads or 2))
    for pauses in args.pauses:
        noise = noises() if pauses == "noise" else None
        streams = [
            build_stream(k, utts, args.duration, noise, args.noise_dbfs, not args.same_format) for k in range(n_max)
        ]
        levels = [(str(n), n, 2.0) for n in args.streams]
        if args.overload:
            levels.append((f"{args.overload} at once", args.overload, 0.0))
        rows = measure(args, streams, levels)
        offline = {k: offline_hypothesis(engine, s.audio, Config()) for k, s in enumerate(streams)} if engine else {}
        where = "noise at " + (f"{args.noise_dbfs:g}" if args.noise_dbfs is not None else "-45...-30") + " dBFS"
        table(
            f"speechpipe live, {os.cpu_count()} cores, {args.duration:g} s per stream, pauses: "
            f"{where if noise else 'digital silence'}, formats: {'16k s16' if args.same_format else 'mixed'}"
            + (f"; server overrides: {', '.join(args.overrides)}" if args.overrides else "")
            + f"; load average before: {os.getloadavg()[0]:.2f}",
            rows,
            streams,
            offline,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
