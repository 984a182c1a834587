"""Live streaming benchmark: N concurrent real-time streams against a local ``speechpipe serve``.

Each stream is a sequence of corpus utterances (../shared/corpus/speech) joined by pauses of
1.0-2.5 s (seeded), in a different order per stream: digital silence, or with ``--noise-dbfs`` the
corpus noise clips (../shared/corpus/noise: fans, taps, dishes, traffic) levelled to that RMS, sent as 16 kHz s16le frames of
20 ms at real-time pace; streams start staggered over the first two seconds. For each N the table
gives the final latency (``latency_s`` as the server reports it: from the arrival of the audio at a
segment's end to the final being sent), finals lost (segments that got a ``speech_start`` but no
final), partials per second, WER of the finals against the references, and the server process's
CPU use (share of all cores) during the run.

The offline WER is that of ``speechpipe``'s offline path (the same StreamSession, segments packed
into 30 s windows) on exactly the audio of the same streams.

    python benchmarks/streaming.py                       # N = 1 2 4 8 12, 75 s per stream
    python benchmarks/streaming.py --streams 1 8 --duration 40 --set server.speculative=false
    python benchmarks/streaming.py --streams 1 4 --noise-dbfs -35     # a room between sentences

The server runs as a subprocess with the flags given after ``--server-args`` (default: tiny.en,
2 threads), so its CPU time is measured apart from the clients'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechpipe.pipeline.client import StreamResult, paced, pcm_s16le, stream_pcm
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.driver import drive
from speechpipe.pipeline.hooks import FinalTranscript
from speechpipe.pipeline.protocol import Start
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.asr import AsrConfig, AsrEngine
from speechpipe.stages.audio import load_audio
from speechpipe.telemetry.wer import score_corpus

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "corpus" / "speech"
NOISE = ROOT.parent / "shared" / "corpus" / "noise"
RATE = 16000
FRAME_S = 0.02


@dataclass
class StreamAudio:
    audio: np.ndarray
    reference: str


def utterances() -> list[tuple[np.ndarray, str]]:
    files = sorted(p for p in SPEECH.iterdir() if p.suffix in (".wav", ".flac") and p.with_suffix(".txt").exists())
    return [(load_audio(p)[0], " ".join(p.with_suffix(".txt").read_text().split())) for p in files]


def noises() -> list[np.ndarray]:
    return [load_audio(p)[0] for p in sorted(NOISE.glob("*.wav"))]


def pause_audio(n: int, rng: random.Random, noise: list[np.ndarray] | None, dbfs: float) -> np.ndarray:
    """``n`` samples of pause: digital silence, or a random stretch of a noise clip at ``dbfs`` RMS."""
    if not noise:
        return np.zeros(n, np.float32)
    src = noise[rng.randrange(len(noise))]
    if src.size < n:
        src = np.tile(src, n // src.size + 1)
    off = rng.randrange(src.size - n + 1)
    chunk = src[off : off + n].astype(np.float32)
    rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) or 1e-9
    return (chunk * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def build_stream(
    k: int, utts: list, duration_s: float, noise: list[np.ndarray] | None = None, dbfs: float = -35.0
) -> StreamAudio:
    """Stream ``k``: utterances in a k-seeded order with 1.0-2.5 s pauses, about ``duration_s`` long."""
    rng = random.Random(1000 + k)
    order = list(range(len(utts)))
    rng.shuffle(order)
    parts = [pause_audio(int(rng.uniform(0.3, 1.0) * RATE), rng, noise, dbfs)]
    refs = []
    total = parts[0].size
    for i in order:
        audio, ref = utts[i]
        if total / RATE > duration_s - 2:
            break
        pause = pause_audio(int(rng.uniform(1.0, 2.5) * RATE), rng, noise, dbfs)
        parts += [audio, pause]
        refs.append(ref)
        total += audio.size + pause.size
    return StreamAudio(np.concatenate(parts), " ".join(refs))


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


async def run_level(url: str, streams: list[StreamAudio], seed: int) -> tuple[list[StreamResult], float]:
    rng = random.Random(seed)

    async def one(s: StreamAudio, delay: float) -> StreamResult:
        await asyncio.sleep(delay)
        n = int(FRAME_S * RATE)
        frames = (pcm_s16le(s.audio[i : i + n]) for i in range(0, s.audio.size, n))
        return await stream_pcm(url, Start(sample_rate=RATE), paced(frames, FRAME_S, 1.0))

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(s, rng.uniform(0, 2.0) if len(streams) > 1 else 0) for s in streams))
    return list(results), time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 12], help="N values (default: 1 2 4 8 12)")
    ap.add_argument("--duration", type=float, default=75.0, help="seconds of audio per stream (default: 75)")
    ap.add_argument(
        "--threads", type=int, default=0, help="model threads per ASR worker (default: the server's choice)"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="server config override, e.g. server.speculative=false",
    )
    ap.add_argument(
        "--noise-dbfs",
        type=float,
        metavar="DB",
        help="fill the pauses with the corpus noise clips at this RMS level (e.g. -35); default: digital silence",
    )
    ap.add_argument("--no-offline", action="store_true", help="skip the offline WER")
    ap.add_argument("--dump", metavar="JSON", help="write each stream's reference, live and offline text here")
    args = ap.parse_args()

    utts = utterances()
    noise = noises() if args.noise_dbfs is not None else None
    streams = [build_stream(k, utts, args.duration, noise, args.noise_dbfs or 0.0) for k in range(max(args.streams))]
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "speechpipe.pipeline.cli",
        "serve",
        "--port",
        str(port),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--log-level", "WARNING", "--max-streams", str(max(args.streams))]
    for o in args.overrides:
        cmd += ["--set", o]
    server = subprocess.Popen(cmd, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        url = f"ws://127.0.0.1:{port}/stream"
        # Warm the model up (first calls are slower) with a short stream.
        asyncio.run(run_level(url, [StreamAudio(streams[0].audio[: 8 * RATE], "")], 0))

        rows = []
        for n in args.streams:
            c0 = cpu_seconds(server.pid)
            results, wall = asyncio.run(run_level(url, streams[:n], n))
            cpu = (cpu_seconds(server.pid) - c0) / wall / (os.cpu_count() or 1)
            lat = [x for r in results for x in r.latencies]
            lost = sum(r.lost for r in results) + sum(1 for r in results if r.end is None or r.errors)
            partials = sum(len(r.partials) for r in results)
            wer = score_corpus((s.reference, r.text) for s, r in zip(streams[:n], results))
            rows.append((n, results, wall, cpu, lat, lost, partials, wer))
            print(
                f"N={n:2d}: {len(lat)} finals, p50 {pct(lat, 50):.2f} s, p95 {pct(lat, 95):.2f} s, "
                f"max {max(lat):.2f} s, lost {lost}, WER {wer.wer * 100:.2f}%, CPU {cpu * 100:.0f}%",
                file=sys.stderr,
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()

    offline = {}
    if not args.no_offline:
        engine = AsrEngine(AsrConfig(threads=args.threads or 2))
        config = Config()
        for k, s in enumerate(streams):
            offline[k] = offline_hypothesis(engine, s.audio, config)

    if args.dump:
        import json

        last = rows[-1][1]
        Path(args.dump).write_text(
            json.dumps(
                [
                    {"stream": k, "reference": s.reference, "live": r.text, "offline": offline.get(k)}
                    for k, (s, r) in enumerate(zip(streams, last))
                ],
                indent=1,
            )
        )
    print()
    print(
        f"speechpipe live streaming, tiny.en int8, {os.cpu_count()} cores, "
        f"{args.duration:g} s per stream; pauses: "
        + (f"corpus noise at {args.noise_dbfs:g} dBFS" if noise else "digital silence")
        + f"; load average before: {os.getloadavg()[0]:.2f}"
    )
    if args.overrides:
        print("server overrides: " + ", ".join(args.overrides))
    head = (
        f"{'N':>3} {'audio s':>8} {'finals':>6} {'lost':>4} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
        f"{'partials/s':>10} {'WER %':>6} {'offline WER %':>13} {'CPU %':>6}"
    )
    print(head)
    print("-" * len(head))
    for n, results, wall, cpu, lat, lost, partials, wer in rows:
        off = (
            f"{score_corpus((s.reference, offline[k]) for k, s in enumerate(streams[:n])).wer * 100:13.2f}"
            if offline
            else f"{'-':>13}"
        )
        audio_s = sum(s.audio.size for s in streams[:n]) / RATE
        print(
            f"{n:>3} {audio_s:8.0f} {len(lat):6d} {lost:4d} {pct(lat, 50):6.2f} {pct(lat, 95):6.2f} {max(lat):6.2f} "
            f"{partials / wall:10.2f} {wer.wer * 100:6.2f} {off} {cpu * 100:6.0f}"
        )
    ok = [n for n, *_rest in rows if pct(_rest[3], 95) <= 2.0]
    print(f"largest N with p95 <= 2 s: {max(ok) if ok else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
