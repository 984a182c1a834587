"""The golden-set gate on a real server: the harmful VAD of issue 10 refused as a canary candidate,
a good candidate admitted.

    python benchmarks/golden.py [--golden DIR] [--files 30]

``--golden``: a golden set (audio with ``.txt`` references), e.g. the test split that
``speechpipe review export`` wrote (``python benchmarks/review.py --export DIR`` makes one: clips
of the segments the primary's VAD cut, with 0.1 s margins). ``--recordings N``: instead, N whole
recordings of about 40 s, LibriSpeech utterances of ../shared/corpus/speech-more (20 speakers)
joined by 1-2.5 s pauses holding real room noise (benchmarks/live_streams.py), what a VAD is
judged on.

For each candidate a fresh ``speechpipe serve`` (a subprocess, as in production) runs a canary
of it over ``default`` with ``[deploy] golden`` set: while the candidate is evaluated on the golden
set the server serves (a stream sent then is timed and must go to the primary); the verdict's
change is read from ``GET /admin/deploy``; then a stream with a client key on the candidate's side
shows where new streams go, and ``speechpipe deploy weight CANDIDATE 0.5`` shows what an admin is
told. Candidates: ``harmful`` (webrtc aggressiveness 3, no pre-roll, 90 ms hangover: issue 10)
``green`` (webrtc at its defaults: it ends few pauses full of room noise, docs/benchmarks.md "VAD in
noisy rooms") and ``base`` (Whisper base, multilingual, in place of tiny.en: a new model version).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import soundfile as sf
from deployment import ADMIN, Server, key_for
from live_streams import RATE, build_stream, noises
from machine import machine_line

from speechpipe.pipeline.clients.client import file_frames, file_start, paced, stream_pcm
from speechpipe.pipeline.protocol import Start
from speechpipe.stages.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
PROBE = CORPUS / "speech" / "jfk_inaugural_ask-not.flac"

CONFIG = """
[deploy]
mode = "canary"
primary = "default"
candidate = "{candidate}"
steps = [0.5, 1.0]
golden = "{golden}"
max_golden_wer_delta = 0.02
[variants.harmful.vad]
backend = "webrtc"
aggressiveness = 3
pre_roll_ms = 0
hangover_ms = 90
[variants.green.vad]
backend = "webrtc"
[variants.base.asr]
model = "base"
"""


def golden_recordings(folder: Path, n: int) -> Path:
    """``n`` whole noisy recordings of speech-more utterances, each a WAV with its reference."""
    speech = CORPUS / "speech-more"
    files = sorted(p for p in speech.iterdir() if p.suffix in (".wav", ".flac") and p.with_suffix(".txt").exists())
    utts = [(load_audio(p)[0], " ".join(p.with_suffix(".txt").read_text().split())) for p in files]
    folder.mkdir()
    noise = noises()
    for k in range(n):
        s = build_stream(500 + k, utts, 40.0, noise, None, mixed_formats=False)
        sf.write(folder / f"recording-{k:02d}.wav", np.clip(s.audio, -1, 1), RATE, subtype="PCM_16")
        (folder / f"recording-{k:02d}.txt").write_text(s.reference + "\n")
    return folder


def probe(server: Server, candidate: str):
    """JFK's 11 s at full speed, with a client key the canary's 50 % would send to the candidate."""
    start = file_start(PROBE)
    start = Start(start.sample_rate, start.encoding, start.channels, client=key_for(candidate, 0.5, True, 0))
    return asyncio.run(stream_pcm(server.url, start, paced(file_frames(PROBE), 0.02, 0)))


def one(candidate: str, golden: Path, workdir: Path) -> dict:
    (workdir / candidate).mkdir()
    t0 = time.monotonic()
    server = Server(CONFIG.format(candidate=candidate, golden=golden), [], workdir / candidate)
    try:
        ready_s = time.monotonic() - t0
        during = probe(server, candidate)
        served_during = time.monotonic() - t0
        while (state := server.admin())["state"] == "gating":
            time.sleep(1.0)
        verdict_s = time.monotonic() - t0
        after = probe(server, candidate)
        cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", server.http, "--admin-token", ADMIN]
        weight = subprocess.run(
            [*cmd, "weight", candidate, "0.5"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    finally:
        server.stop()
    change = next(c for c in reversed(state["history"]) if c["action"] == "golden")
    return {
        "candidate": candidate,
        "state": state["state"],
        "gate": change["gates"][0],
        "reason": change["reason"],
        "ready_s": ready_s,
        "during": (during.ready or {}).get("variant"),
        "served_during_s": served_during,
        "verdict_s": verdict_s,
        "after": (after.ready or {}).get("variant"),
        "weight": weight.stderr.strip() if weight.returncode else "accepted (exit 0)",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--golden", help="a golden set folder (audio with .txt references)")
    ap.add_argument("--recordings", type=int, default=6, help="whole noisy recordings made without --golden")
    ap.add_argument("--candidates", nargs="+", default=["harmful", "green", "base"])
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        golden = Path(args.golden) if args.golden else golden_recordings(workdir / "golden", args.recordings)
        n = sum(1 for p in golden.rglob("*.txt"))
        print(f"golden set: {golden} ({n} references)\n", flush=True)
        rows = [one(c, golden, workdir) for c in args.candidates]
    print(
        "| candidate | golden WER (candidate / default) | difference | verdict | state | stream while evaluating | stream after | verdict after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = r["gate"]
        wer = f"{100 * g['candidate']:.1f} % / {100 * g['primary']:.1f} %" if g["candidate"] is not None else "–"
        diff = f"{100 * g['value']:+.1f} points (limit {100 * g['threshold']:.1f})" if g["value"] is not None else "–"
        verdict = "admitted" if g["passed"] else "refused"
        print(
            f"| {r['candidate']} | {wer} | {diff} | {verdict} | {r['state']} | {r['during']} (done at "
            f"{r['served_during_s']:.0f} s) | {r['after']} | {r['verdict_s']:.0f} s |"
        )
    for r in rows:
        print(
            f"\n{r['candidate']}: history: golden: {r['reason']}\n  speechpipe deploy weight {r['candidate']} 0.5: {r['weight']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
