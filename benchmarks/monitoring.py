"""Drift monitoring measured on a real server with real speech, and the live dashboard under load.

    python benchmarks/monitoring.py [--only drift|canary] [--shots DIR]

Baseline: ``speechpipe baseline build`` over clean corpus streams (half of the corpus utterances,
noisy pauses, 16 kHz), written as WAV files with their references. Then, each scenario against its
own fresh ``speechpipe serve --baseline`` (so windows start empty), streams of the *other* half of
the utterances: (a) as they are, (b) as 8 kHz telephone audio, (c) at -20 dB, (d10), (d) and (d0)
in 10, 5 and 0 dB SNR noise beds, (e) as they are through the harmful VAD of issue 10 (webrtc 3,
no pre-roll, 90 ms hangover). ``GET /admin/drift`` is polled to find the segment at which each
feature first alerts; the WER of each scenario's finals against its references says how much the
accuracy really moved (no feedback is sent: the output-confidence features stand in), beside the
WER the server estimated without references over its last window.

Canary: the harmful VAD (webrtc aggressiveness 3, no pre-roll, 90 ms hangover) as a canary
candidate under 4 live streams in real time with feedback, the dashboard open in headless
Chromium; screenshots go to ``--shots``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import ADMIN, Server, key_for
from live_streams import CORPUS, FORMATS, FRAME_S, RATE, StreamAudio, build_stream, noises, pause_audio, rms, utterances
from machine import machine_line

from speechpipe.pipeline.clients.client import paced, stream_pcm
from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.protocol import Start
from speechpipe.stages.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def recordings(clips: bool = False) -> tuple[list, list]:
    """Real speech recordings split in two halves of distinct recordings (baseline, traffic): the
    corpus utterances (with references) and, with ``clips``, the TEN VAD test clips (speech
    without references, recorded in many conditions)."""
    utts = utterances()
    extra = [(load_audio(p)[0], "") for p in sorted((CORPUS / "vad").glob("tenvad_*.wav"))] if clips else []
    return utts[0::2] + extra[0::2], utts[1::2] + extra[1::2]


def streams(utts, first: int, n: int, duration_s: float, noise) -> list[StreamAudio]:
    return [build_stream(first + k, utts, duration_s, noise, None, mixed_formats=False) for k in range(n)]


def build_baseline(recs, noise, workdir: Path, window: int, least: int, copies: int = 3) -> Path:
    """``speechpipe baseline build`` over one file per recording (the recording ``copies`` times,
    between noisy pauses): the baseline's thresholds are learned from windows of whole files, so they see
    how much recordings differ from one another."""
    folder = workdir / "baseline-recordings"
    folder.mkdir()
    rng = random.Random(7)
    for k, (audio, ref) in enumerate(recs):
        parts = [pause_audio(int(rng.uniform(0.5, 1.5) * RATE), rng, noise, None)]
        for _ in range(copies):
            parts += [audio, pause_audio(int(rng.uniform(1.0, 2.5) * RATE), rng, noise, None)]
        sf.write(folder / f"rec-{k:02d}.wav", np.clip(np.concatenate(parts), -1, 1), RATE, subtype="PCM_16")
        if ref:
            (folder / f"rec-{k:02d}.txt").write_text(" ".join([ref] * copies) + "\n")
    out = workdir / "baseline.json"
    cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "baseline", "build", str(folder), "-o", str(out)]
    cmd += ["--window-segments", str(window), "--min-segments", str(least)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    print("\n".join(line for line in proc.stderr.splitlines() if "segments" in line))
    return out


def telephone(s: StreamAudio) -> StreamAudio:
    return StreamAudio(s.audio, s.reference, FORMATS[1])


def quieter(s: StreamAudio) -> StreamAudio:
    return StreamAudio((s.audio * 0.1).astype(np.float32), s.reference, s.fmt)


def noise_bed(noise: list[np.ndarray], snr_db: float):
    def bed(s: StreamAudio) -> StreamAudio:
        b = np.resize(noise[(len(s.reference) + 2) % len(noise)], s.audio.size)
        speech = s.audio[np.abs(s.audio) > 1e-4]
        scaled = b / rms(b) * rms(speech) * 10 ** (-snr_db / 20)
        return StreamAudio(np.clip(s.audio + scaled, -1, 1).astype(np.float32), s.reference, s.fmt)

    return bed


#: streams refused by admission (and sent again) in the current scenario
REFUSED: list[int] = []


class DriftWatch(threading.Thread):
    """Polls ``GET /admin/drift``: the window size at which each feature first alerted."""

    def __init__(self, server: Server, variant: str = "default") -> None:
        super().__init__(daemon=True)
        self.server, self.variant = server, variant
        self.first: dict[str, int] = {}
        self.last: dict = {}
        self.alerts: list[dict] = []
        self.most = 0
        self.stop = threading.Event()

    def fetch(self) -> dict:
        req = urllib.request.Request(f"{self.server.http}/admin/drift", headers={"Authorization": f"Bearer {ADMIN}"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.poll()

    def poll(self) -> None:
        whole = self.fetch()
        self.alerts = whole.get("alerts", [])
        doc = whole["variants"].get(self.variant)
        if not doc:
            return
        self.last = doc
        for name, f in doc["features"].items():
            self.most = max(self.most, f["n"])
            if f["alert"] and name not in self.first:
                self.first[name] = f["n"]


async def send_all(server: Server, items: list[StreamAudio], parallel: int, speed: float, feedback: bool):
    results = []
    for i in range(0, len(items), parallel):
        batch = items[i : i + parallel]
        results += await asyncio.gather(*(one(server, s, None, speed, feedback) for s in batch))
    return results


async def one(server: Server, s: StreamAudio, client: str | None, speed: float, feedback: bool, tries: int = 6):
    """One stream; refused by admission (streams sent faster than real time cost more than live
    ones), it comes back after the server's ``retry_after_s``, as a client should."""
    st = s.fmt.start
    for _ in range(tries):
        result = await stream_pcm(
            server.url,
            Start(st.sample_rate, st.encoding, st.channels, client=client),
            paced(s.frames(), FRAME_S, speed),
        )
        busy = [e for e in result.errors if e.get("code") == "server_busy"]
        if not busy:
            break
        REFUSED.append(1)
        await asyncio.sleep(busy[0].get("retry_after_s", 5.0))
    if feedback and result.ready is not None:
        await asyncio.to_thread(server.feedback, result.ready["session"], s.reference)
    return result


def drift(args, workdir: Path) -> None:
    noise = noises()
    base, traffic = recordings()
    baseline = build_baseline(base, noise, workdir, args.window, args.min)
    held_out = streams(traffic, 100, 12, 45.0, noise)
    again = streams(base, 300, 12, 45.0, noise)
    scenarios = [
        ("(a0) the baseline's recordings, other orders and noise", again),
        ("(a) same kind, other recordings", held_out),
        ("(b) 8 kHz telephone", [telephone(s) for s in held_out]),
        ("(c) -20 dB gain", [quieter(s) for s in held_out]),
        ("(d10) 10 dB SNR noise bed", [noise_bed(noise, 10.0)(s) for s in held_out]),
        ("(d) 5 dB SNR noise bed", [noise_bed(noise, 5.0)(s) for s in held_out]),
        ("(d0) 0 dB SNR noise bed", [noise_bed(noise, 0.0)(s) for s in held_out]),
        ("(e) the harmful VAD", held_out),
    ]
    harmful = ["vad.backend=webrtc", "vad.aggressiveness=3", "vad.pre_roll_ms=0", "vad.hangover_ms=90"]
    print(
        f"\nwindow {args.window} segments, judged from {args.min}; 12 streams of 45 s per scenario, "
        f"2 at a time at {args.speed:g}x real time\n"
    )
    print(
        "| scenario | WER | estimated WER [90 %] | segments | refused, sent again | first alert at segment (feature) "
        "| alerts raised | alerting at the end: score / threshold | accuracy stand-in |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|---|")
    if args.scenarios:
        scenarios = [sc for sc in scenarios if sc[0].split()[0].strip("()") in args.scenarios]
    for label, items in scenarios:
        server = Server(
            f'[monitoring]\nbaseline = "{baseline}"\n',
            [f"monitoring.window_segments={args.window}", f"monitoring.min_segments={args.min}"]
            + (harmful if label.startswith("(e)") else []),
            workdir,
        )
        watch = DriftWatch(server)
        watch.start()
        REFUSED.clear()
        try:
            results = asyncio.run(send_all(server, items, 2, args.speed, False))
            time.sleep(2.0)  # a tick judges the last segments
            watch.stop.set()
            watch.join()
            watch.poll()
        finally:
            server.stop()
        segments = sum(len(r.finals) for r in results)
        first = ", ".join(f"{n} ({f})" for f, n in sorted(watch.first.items(), key=lambda kv: kv[1])) or "none"
        end = ", ".join(
            f"{f} {v['score']:.3g} / {v['threshold']:.3g}" for f, v in watch.last["features"].items() if v["alert"]
        )
        concept = watch.last.get("concept") or {}
        wer = score_corpus((s.reference, " ".join(f["text"] for f in r.finals)) for s, r in zip(items, results))
        raised = sum(1 for a in watch.alerts if a["raised"] and a["variant"] == watch.variant)
        accuracy = f"{concept.get('source')}: " + (
            "ALERT on " + ", ".join(concept.get("stand_ins", [])) if concept.get("alert") else "calm"
        )
        q = watch.last.get("quality") or {}
        est = (
            f"{q['estimated_wer']:.1%} [{q['low']:.1%}, {q['high']:.1%}]" if q.get("estimated_wer") is not None else "-"
        )
        print(
            f"| {label} | {wer.wer:.1%} | {est} | {segments} | {len(REFUSED)} | {first} | {raised} | {end or 'none'} "
            f"| {accuracy} |"
        )


CANARY = """
[monitoring]
baseline = "{baseline}"
window_segments = 20
min_segments = 10
[deploy]
mode = "canary"
primary = "default"
candidate = "harmful"
steps = [0.5, 1.0]
step_min_streams = 4
step_min_s = 20
[deploy.gates]
min_finals = 4
min_feedback_words = 20
[variants.harmful.vad]
backend = "webrtc"
aggressiveness = 3
pre_roll_ms = 0
hangover_ms = 90
"""


def canary(args, workdir: Path, baseline: Path) -> None:
    from playwright.sync_api import sync_playwright

    noise = noises()
    live = streams(recordings()[1], 200, 8, 45.0, noise)
    server = Server(CANARY.format(baseline=baseline), [], workdir)
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)

    def clients() -> None:
        keys = [key_for("harmful", 0.5, side, k) for k, side in enumerate((True, False, True, False) * 2)]

        async def run():
            await asyncio.gather(*(one(server, s, key, 1.0, True) for s, key in zip(live[:4], keys[:4])))
            await asyncio.gather(*(one(server, s, key, 1.0, True) for s, key in zip(live[4:], keys[4:])))

        asyncio.run(run())

    t = threading.Thread(target=clients)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(f"{server.http}/dashboard?token={ADMIN}")
            t0 = time.monotonic()
            t.start()
            taken = []
            for at in (25, 50):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                path = shots / f"canary-{at:03d}s.png"
                page.screenshot(path=str(path), full_page=True)
                taken.append(path)
            t.join()
            time.sleep(2.0)
            path = shots / "canary-end.png"
            page.screenshot(path=str(path), full_page=True)
            taken.append(path)
            browser.close()
        state = server.admin()
        drift_doc = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(f"{server.http}/admin/drift", headers={"Authorization": f"Bearer {ADMIN}"}),
                timeout=10,
            ).read()
        )
    finally:
        server.stop()
    print(f"\ncanary of the harmful VAD: {state['state']}; screenshots: {', '.join(map(str, taken))}\n")
    t_start = state["history"][0]["at"]
    for ch in state["history"]:
        print(f"- +{ch['at'] - t_start:.0f} s {ch['action']}: {ch['reason']}")
    print("\n| variant | alerting features (score / threshold) | accuracy |")
    print("|---|---|---|")
    for name, v in drift_doc["variants"].items():
        alerting = ", ".join(
            f"{f} {d['score']:.2f}/{d['threshold']:.2f}" for f, d in v["features"].items() if d["alert"]
        )
        c = v.get("concept") or {}
        acc = (
            f"{c.get('source')}: WER {c['wer']:.1%} vs baseline {c['baseline_wer']:.1%}"
            if c.get("wer") is not None and c.get("baseline_wer") is not None
            else c.get("source")
        )
        print(f"| {name} | {alerting or 'none'} | {acc} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("drift", "canary"))
    ap.add_argument("--window", type=int, default=30, help="monitoring.window_segments of the drift scenarios")
    ap.add_argument("--min", type=int, default=30, help="monitoring.min_segments of the drift scenarios")
    ap.add_argument("--speed", type=float, default=4.0, help="pace of the drift scenarios (x real time)")
    ap.add_argument("--shots", default="out/monitoring", help="folder of the dashboard screenshots")
    ap.add_argument("--scenarios", nargs="+", help="only these drift scenarios (a0 a b c d10 d d0 e)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only != "canary":
            drift(args, workdir)
        if args.only != "drift":
            # the canary's windows are smaller (a candidate at 50 % of 4 streams sees few segments)
            (workdir / "canary").mkdir()
            baseline = build_baseline(recordings()[0], noises(), workdir / "canary", 20, 10)
            canary(args, workdir, baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
