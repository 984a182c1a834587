"""A folder run as whole processes: ``speechpipe transcribe`` here against ``--ray`` (a local Ray
instance, N actors of one CPU each), on the same files.

    python benchmarks/folder.py [--actors 2] [--repeat 1]

The folder: every corpus utterance with its reference, the 62 s recording, and one deliberately
corrupt file. Prints the wall time of each process (model loading, Ray's start and the actors'
models included), whether every transcript is identical, and the failed files of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def build_folder(dest: Path) -> int:
    files = [p for p in sorted((CORPUS / "speech").iterdir()) if p.suffix in (".wav", ".flac")]
    files = [p for p in files if p.with_suffix(".txt").exists()] + sorted((CORPUS / "long").glob("*.mp3"))
    for p in files:
        (dest / p.name).symlink_to(p)
        (dest / p.with_suffix(".txt").name).symlink_to(p.with_suffix(".txt"))
    (dest / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000))
    return len(files) + 1


def transcribe(folder: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "transcribe", str(folder), "-o", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd + ["-q", "--no-progress", "--force", *extra], cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - t0, json.loads((out / "summary.json").read_text())


def texts(out: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["text"] for p in out.glob("*.json") if p.name != "summary.json"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        n = build_folder(folder)
        modes = [
            ("local, one file at a time", ["--jobs", "1"]),
            ("local, files in parallel (default)", []),
            (f"ray, {args.actors} actors", ["--ray", "--ray-actors", str(args.actors)]),
        ]
        runs: dict[str, list[float]] = {name: [] for name, _ in modes}
        summaries = {}
        for _ in range(args.repeat):  # interleaved
            for k, (name, extra) in enumerate(modes):
                wall, summary = transcribe(folder, Path(tmp) / f"out{k}", extra)
                runs[name].append(wall)
                summaries[name] = summary
        outs = [texts(Path(tmp) / f"out{k}") for k in range(len(modes))]
        same = all(o == outs[0] for o in outs)
        audio_s = summaries[modes[0][0]]["audio_s"]
    print(f"\n{n} files ({audio_s:.0f} s of audio), median of {args.repeat}; transcripts identical: {same}\n")
    print("| run | wall s | transcribed | failed |")
    print("|---|---:|---:|---|")
    for name, walls in runs.items():
        s = summaries[name]
        failed = ", ".join(Path(f["file"]).name for f in s["failed"])
        print(f"| {name} | {statistics.median(walls):.1f} | {s['transcribed']} | {failed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
