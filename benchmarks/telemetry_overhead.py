"""Offline throughput with telemetry fully on versus off, measured side by side in one run.

"on" = every span exported over OTLP (HTTP or gRPC) to a real receiver on 127.0.0.1 that decodes
each request, metrics pushed over OTLP every second, a Prometheus reader, the in-memory reader that
feeds summary.json, and process CPU/memory observers; each pass ends with a flush of all of it.
"off" = no hooks at all. Passes alternate (off/on, then on/off...) so that drift in machine load
falls on both sides alike; the overhead is the median of the per-pair ratios.

    python benchmarks/telemetry_overhead.py [--reps 7] [--protocol http|grpc] [--threads 2]

Target: overhead <= 3 %.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def default_files() -> list[Path]:
    speech = sorted(p for p in (CORPUS / "speech").iterdir() if p.suffix in (".wav", ".flac"))
    return [CORPUS / "long" / "ted_bill-gates_next-epidemic_first-62s.mp3", *speech[::4]]


class Timed:
    """An observer around another that sums the time spent inside it (on the pipeline's thread)."""

    def __init__(self, inner, total: list[int]) -> None:
        self.inner = inner
        self.total = total

    def on_event(self, event) -> None:
        t = time.perf_counter_ns()
        try:
            self.inner.on_event(event)
        finally:
            self.total[0] += time.perf_counter_ns() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="audio files (default: the 62 s corpus talk + 10 utterances)")
    ap.add_argument("--reps", type=int, default=7, help="passes per mode (default 7)")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the model (default 2)")
    args = ap.parse_args()
    print(machine_line(), flush=True)

    from speechpipe.pipeline.config import Config
    from speechpipe.pipeline.observability import start_telemetry
    from speechpipe.pipeline.offline.runner import transcribe_file
    from speechpipe.stages.asr import AsrEngine
    from speechpipe.stages.audio import probe

    files = args.files or default_files()
    audio_s = sum(probe(f).duration_s for f in files)
    base = Config()
    base = replace(base, asr=replace(base.asr, threads=args.threads))
    engine = AsrEngine(base.asr)
    # The receiver runs in a process of its own, as a collector would: its decoding work is not ours.
    rx = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "otlp_receiver.py"), "--protocol", args.protocol],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    endpoint = rx.stdout.readline().strip()
    cfg = replace(
        base,
        telemetry=replace(
            base.telemetry,
            otlp_endpoint=endpoint,
            otlp_protocol=args.protocol,
            metrics_interval_s=1.0,
            prometheus_port=0,
        ),
    )
    tel = start_telemetry(cfg, environ={}, announce=False)

    inline_ns = [0]

    def one_pass(on: bool) -> tuple[float, float]:
        """Wall and CPU seconds (all threads of this process, exporters included) of one pass."""
        t0, c0 = time.perf_counter(), time.process_time()
        for f in files:
            observers = [Timed(tel.stream_observer(file=str(f)), inline_ns)] if on else []
            transcribe_file(f, cfg, engine, observers=observers)
        if on:
            tel.tracer_provider.force_flush()
            tel.meter_provider.force_flush()
        return time.perf_counter() - t0, time.process_time() - c0

    print(
        f"{len(files)} files, {audio_s:.1f} s of audio per pass; {args.reps} passes per mode; "
        f"OTLP/{args.protocol} to {endpoint}; model tiny.en int8, {args.threads} threads",
        file=sys.stderr,
    )
    one_pass(False)  # warm-up: model, caches, decoders
    one_pass(True)
    inline_ns[0] = 0
    walls: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(args.reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for on in order:
            w, c = one_pass(on)
            mode = "on" if on else "off"
            walls[mode].append(w)
            cpus[mode].append(c)
            print(f"  pass {rep + 1} {mode:3s}  wall {w:6.2f} s  cpu {c:6.2f} s", file=sys.stderr)
    # The background work, measured alone: one metric collection + OTLP export.
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(20):
        tel.meter_provider.force_flush()
    export_cpu_ms, export_wall_ms = (time.process_time() - c0) / 20 * 1e3, (time.perf_counter() - w0) / 20 * 1e3
    tel.shutdown()
    received, _ = rx.communicate("")  # EOF on stdin: the receiver prints its counts and exits

    def overhead(d: dict[str, list[float]]) -> tuple[float, list[float]]:
        ratios = [b / a for a, b in zip(d["off"], d["on"])]
        return (statistics.median(ratios) - 1.0) * 100.0, ratios

    wall_oh, wall_r = overhead(walls)
    cpu_oh, cpu_r = overhead(cpus)
    print()
    print(
        "| telemetry | passes | audio s/pass | median wall s | min wall s | x realtime | median CPU s | "
        "wall overhead | CPU overhead |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in ("off", "on"):
        w, c = walls[mode], cpus[mode]
        med = statistics.median(w)
        oh = ("-", "-") if mode == "off" else (f"{wall_oh:+.1f} %", f"{cpu_oh:+.1f} %")
        label = "off" if mode == "off" else f"on (OTLP/{args.protocol} spans + metrics 1 s + Prometheus)"
        print(
            f"| {label} | {len(w)} | {audio_s:.1f} | {med:.2f} | {min(w):.2f} | {audio_s / med:.1f} | "
            f"{statistics.median(c):.2f} | {oh[0]} | {oh[1]} |"
        )
    print()
    inline_ms = inline_ns[0] / 1e6 / args.reps
    print(
        f"time spent in the telemetry hooks on the pipeline thread: {inline_ms:.1f} ms per pass = "
        f"{100 * inline_ms / 1000 / statistics.median(walls['off']):.2f} % of the median 'off' wall time"
    )
    print(
        f"one metric collection + OTLP export: {export_cpu_ms:.1f} ms CPU, {export_wall_ms:.1f} ms wall "
        f"(every 1 s here, every 10 s by default)"
    )
    print("overhead = median over the interleaved pairs of (on / off) - 1")
    print(f"  wall ratios: {', '.join(f'{r:.3f}' for r in wall_r)}")
    print(f"  CPU ratios:  {', '.join(f'{r:.3f}' for r in cpu_r)}")
    print(f"receiver: {received.strip().splitlines()[-1]}; telemetry problems: {tel.problems() or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
