"""Levels of automation measured on a real server with real speech and reviews simulated from the
references: what share goes to people, and what WER clients end up with.

    python benchmarks/review.py [--streams 8] [--thresholds 0.7 0.8 0.9] [--shots DIR]
                                [--export DIR [--hf-python PY]]

Streams: corpus utterances joined by pauses with real room noise (benchmarks/live_streams.py),
sent at 2x real time, two at a time; each client stays connected until the revisions it was
promised have come. The simulated reviewer claims every item and submits the reference words
that lie in the segment (each utterance's reference forced-aligned to its audio with the model's
cross-attention, stages/align.py): a perfect human. What a client ends up with is its finals with
each revision in place of its final.

``--audit``: the VAD audited as the ASR is (issue 26), the default VAD against the harmful one of
issue 10 (webrtc 3, no pre-roll, 90 ms hangover), each at level assist with every stretch of
rejected audio audited (``review.vad_audit_share = 1``): the simulated reviewer types the words
of the segment, apart those of the clip's margins (VAD cuts), and those of audited rejected audio
(VAD misses); ``/v1/review/stats``'s ``by_stage`` gives each stage's errors per 100 segments.

Rows: ``full`` (no review), ``partial`` at each threshold, ``assist`` (everything reviewed: the
threshold tool's data, then ``speechpipe review threshold --target-errors 0.8`` on it) and
``shadow`` (the AI hidden and scored: its human-vs-AI WER on ``/metrics`` and, with ``--shots``,
on the dashboard in headless Chromium).

``--export DIR``: after the levels ran, ``speechpipe review export --splits 0.5,0.25,0.25`` of
the assist run's store (every segment reviewed) into DIR, as a training set: its summary (the
counts per split, what was left out), the first lines of the test split's manifest, and with
``--hf-python PY`` (a python with Hugging Face ``datasets``, see benchmarks/load_export.py) the
dataset loaded back from DIR. (A run's sessions are its streams, a few: 0.8,0.1,0.1 would often
leave dev and test empty.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import ADMIN, Server
from live_streams import FRAME_S, RATE, StreamAudio, build_stream, noises, utterances
from machine import machine_line
from websockets.asyncio.client import connect

from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.review.threshold import curve, pick
from speechpipe.stages.align import ForcedAligner
from speechpipe.stages.asr import AsrConfig, load_model

ROOT = Path(__file__).resolve().parents[1]
REVIEWER = "bench-reviewer-token"
CHROMIUM = "/usr/bin/chromium"


def reference_words(streams: list[StreamAudio]) -> list[list[tuple[float, str]]]:
    """Every reference word of each stream with the stream time of its middle."""
    aligner = ForcedAligner(load_model(AsrConfig()))
    out = []
    for s in streams:
        words = []
        for start, end, ref in s.spans:
            audio = s.audio[start:end]
            if audio.size > 30 * RATE:  # longer than one Whisper window: spread evenly
                tokens = ref.split()
                words += [(start / RATE + (i + 0.5) * audio.size / RATE / len(tokens), w) for i, w in enumerate(tokens)]
                continue
            words += [((w.start + w.end) / 2, w.word.strip()) for w in aligner.align(audio, ref, start / RATE)]
        out.append(words)
    return out


def call(server: Server, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.http + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {REVIEWER}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, None


def said(words: list[tuple[float, str]], a: float, b: float) -> str:
    """The reference words whose time lies in ``[a, b)``."""
    return " ".join(w for t, w in words if a <= t < b)


class Reviewer(threading.Thread):
    """Claims every item and submits the reference words of its segment, and apart those of its
    clip's margins before and after it (the VAD's cuts, as a reviewer hears them)."""

    def __init__(self, server: Server, words: list[list[tuple[float, str]]], sessions: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.server, self.words, self.sessions = server, words, sessions
        self.stop = threading.Event()
        self.done = 0

    def run(self) -> None:
        while not self.stop.is_set():
            status, item = call(self.server, "POST", "/v1/review/claim", {"reviewer": "simulated"})
            if status != 200 or item["session"] not in self.sessions:
                if status == 200:  # a session whose client has not said its id yet: later
                    call(self.server, "POST", f"/v1/review/{item['id']}/release", {"claim": item["claim"]})
                time.sleep(0.2)
                continue
            words = self.words[self.sessions[item["session"]]]
            start, end = item["start"], item["end"]
            before, after = item.get("margin_before_s") or 0.0, item.get("margin_after_s") or 0.0
            body = {"text": said(words, start, end)}
            if item["reason"] != "vad_audit":  # an audit's clip is all rejected audio: no margins
                body |= {"before": said(words, start - before, start), "after": said(words, end, end + after)}
            call(self.server, "POST", f"/v1/review/{item['id']}", body | {"claim": item["claim"]})
            self.done += 1


async def client(server: Server, k: int, s: StreamAudio, sessions: dict[str, int], speed: float) -> list[dict]:
    """One stream; stays until every final and every promised revision has come."""
    messages: list[dict] = []
    async with connect(server.url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "partials": False}))
        messages.append(json.loads(await ws.recv()))
        sessions[messages[0]["session"]] = k
        frames = s.frames() + [bytes(int(FRAME_S * RATE) * 2)] * 100  # 2 s of silence after the speech
        reader = asyncio.create_task(_read(ws, messages))
        for f in frames:
            await ws.send(f)
            await asyncio.sleep(FRAME_S / speed)
        while True:
            await asyncio.sleep(1.0)
            kinds = [m["type"] for m in messages]
            finals = [m for m in messages if m["type"] == "final"]
            promised = sum(1 for m in finals if m.get("review") != "none")
            if len(finals) + kinds.count("discarded") == kinds.count("speech_start") and (
                kinds.count("revision") >= promised
            ):
                break
        await ws.send(json.dumps({"type": "stop"}))
        await reader
    return messages


async def _read(ws, messages: list[dict]) -> None:
    async for raw in ws:
        messages.append(json.loads(raw))


def run(name: str, overrides: list[str], streams, words, workdir: Path, speed: float) -> dict:
    db = workdir / f"{name}.db"
    server = Server("", [*overrides, f'review.db="{db}"'], workdir, flags=("--reviewer-token", REVIEWER))
    sessions: dict[str, int] = {}
    reviewer = Reviewer(server, words, sessions)
    reviewer.start()
    try:

        async def all_streams():
            out = []
            for i in range(0, len(streams), 2):
                out += await asyncio.gather(
                    *(client(server, k, streams[k], sessions, speed) for k in range(i, min(i + 2, len(streams))))
                )
            return out

        results = asyncio.run(all_streams())
        time.sleep(2.5)  # the review figures refresh every 2 s
        metrics = urllib.request.urlopen(server.http + "/metrics", timeout=10).read().decode()
        _, stats = call(server, "GET", "/v1/review/stats")
        shot = None
        if name == "shadow" and ARGS.shots:
            shot = dashboard_shot(server, Path(ARGS.shots))
    finally:
        reviewer.stop.set()
        server.stop()
    finals = [m for r in results for m in r if m["type"] == "final"]
    ended_with, ai_only = [], []
    for s, messages in zip(streams, results):
        revised = {m["segment"]: m["text"] for m in messages if m["type"] == "revision"}
        ordered = [m for m in messages if m["type"] == "final"]
        ended_with.append((s.reference, " ".join(revised.get(f["segment"], f["text"]) for f in ordered)))
        ai_only.append((s.reference, " ".join(f["text"] for f in ordered)))
    lines = [x for x in metrics.splitlines() if x.startswith("speechpipe_review_ai_wer{")]
    return {
        "name": name,
        "db": db,
        "finals": len(finals),
        "sent": stats["done"],
        "client_wer": score_corpus(ended_with).wer,
        "ai_wer": score_corpus(ai_only).wer,
        "stats": stats,
        "metrics": lines,
        "shot": shot,
        "messages": results,
    }


def confidence_comparison(messages: list[list[dict]], target: float = 0.8) -> list[tuple[str, float, float]]:
    """Which confidence sorts segments by their errors better: for mean word probability and for
    Whisper's avg_logprob, the share of segments a threshold must send to catch ``target`` of the
    word errors the reviewers corrected (less is better), and the share at 90 %."""
    rows = []
    for stream in messages:
        revised = {m["segment"]: m["text"] for m in stream if m["type"] == "revision"}
        for f in stream:
            if f["type"] != "final" or f["segment"] not in revised or not f["words"]:
                continue
            s = score_corpus([(revised[f["segment"]], f["text"])])
            word_p = sum(w["probability"] for w in f["words"]) / len(f["words"])
            rows.append(
                {"word_probability": word_p, "avg_logprob": f["avg_logprob"], "errors": s.errors, "words": s.ref_words}
            )
    out = []
    for key in ("word_probability", "avg_logprob"):
        points = curve([{"confidence": r[key], "errors": r["errors"], "words": r["words"]} for r in rows])
        out.append((key, pick(points, target).sent, pick(points, 0.9).sent))
    return out


def print_audit(rows: list[dict], streams: list[StreamAudio]) -> None:
    total = sum(len(s.reference.split()) for s in streams)
    print(
        f"\n{len(streams)} streams of 30 s, {total} reference words; reviews simulated from the forced-aligned "
        "references (a word belongs where its middle lies)\n"
    )
    print(
        "| VAD | segments reviewed | ASR errors / reference words (WER) | ASR errors per 100 segments | VAD cuts: words "
        "(segments with a cut) | cuts per 100 segments | rejected stretches audited | VAD misses: words (stretches) "
        "| misses per 100 segments | WER clients end up with before review |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        by = next(iter((r["stats"].get("by_stage") or {}).values()), None)
        if by is None:
            print(f"| {r['name']} | no review scored by stage |")
            continue
        n = by["segments"] or 1
        wer = f"{by['asr_errors']} / {by['ref_words']} ({by['asr_wer']:.1%})" if by["asr_wer"] is not None else "-"
        print(
            f"| {r['name'].removeprefix('audit-')} | {by['segments']} | {wer} | {100 * by['asr_errors'] / n:.1f} "
            f"| {by['vad_cuts']} ({by['vad_cut_segments']}) | {100 * by['vad_cuts'] / n:.1f} | {by['vad_audits']} "
            f"| {by['vad_misses']} ({by['vad_miss_items']}) | {100 * by['vad_misses'] / n:.1f} | {r['ai_wer']:.1%} |"
        )
    print("\nby_stage: " + json.dumps({r["name"]: r["stats"].get("by_stage") for r in rows}))


def export(db: Path, out: Path) -> str:
    """``speechpipe review export`` of ``db`` into ``out``, and what it wrote: its summary, the
    first lines of the test manifest (of the first split with segments where the test split has
    none), and the dataset loaded back (with ``--hf-python``). A run has a few sessions only (one
    per stream), so the splits' shares are 0.5,0.25,0.25 here, to see all three filled."""
    command = [sys.executable, "-m", "speechpipe.pipeline.cli", "review", "export", "--db", str(db), "-o", str(out)]
    command += ["--splits", "0.5,0.25,0.25"]
    t0 = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t0
    shown = " ".join(["speechpipe", *command[3:]])
    text = f"\n{shown} (the assist run's store, {took:.1f} s):\n{done.stdout}{done.stderr}"
    manifest = next((m for s in ("test", "dev", "train") if (m := out / s / "metadata.jsonl").exists()), None)
    if manifest is not None:
        head = manifest.read_text(encoding="utf-8").splitlines()[:3]
        text += f"\n{manifest} (first {len(head)} lines):\n" + "\n".join(head) + "\n"
    if ARGS.hf_python:
        script = [ARGS.hf_python, str(ROOT / "benchmarks" / "load_export.py"), str(out)]
        loaded = subprocess.run(script, check=False, capture_output=True, text=True)
        text += f"\nloaded back with Hugging Face datasets ({ARGS.hf_python}):\n{loaded.stdout}"
        if loaded.returncode:
            text += loaded.stderr[-2000:]
    return text


def dashboard_shot(server: Server, shots: Path) -> str:
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    path = shots / "review-shadow-dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1900})
        page.goto(f"{server.http}/dashboard?token={ADMIN}")
        page.wait_for_selector("#review-body:not([hidden]) #rv-variants tr")
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    return str(path)


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--thresholds", type=float, nargs=3, default=[0.7, 0.8, 0.9])
    ap.add_argument("--speed", type=float, default=2.0)
    ap.add_argument("--shots", help="folder for a dashboard screenshot at level shadow")
    ap.add_argument("--only", nargs="+", help="only these rows (full, partial, assist, shadow)")
    ap.add_argument("--audit", action="store_true", help="only the VAD audit: the default VAD against the harmful one")
    ap.add_argument("--export", metavar="DIR", help="speechpipe review export of the assist run's store into DIR")
    ap.add_argument("--hf-python", metavar="PY", help="with --export: load DIR back with this python's datasets")
    ARGS = ap.parse_args()
    if ARGS.export and ARGS.only and "assist" not in ARGS.only:
        ap.error("--export exports the assist run's store: keep assist in --only")
    print(machine_line(), flush=True)
    utts, noise = utterances(), noises()
    streams = [build_stream(200 + k, utts, 30.0, noise, None, mixed_formats=False) for k in range(ARGS.streams)]
    words = reference_words(streams)
    runs = [("full", ["automation.level=full", "automation.audit_share=0"])]
    runs += [(f"partial {t:g}", ["automation.level=partial", f"automation.review_below={t}"]) for t in ARGS.thresholds]
    runs += [("assist", ["automation.level=assist"]), ("shadow", ["automation.level=shadow"])]
    if ARGS.only:
        runs = [r for r in runs if r[0].split()[0] in ARGS.only]
    if ARGS.audit:
        audit = ["automation.level=assist", "review.vad_audit_share=1"]
        harmful = ["vad.backend=webrtc", "vad.aggressiveness=3", "vad.pre_roll_ms=0", "vad.hangover_ms=90"]
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                run(name, overrides, streams, words, Path(tmp), ARGS.speed)
                for name, overrides in (("audit-default", audit), ("audit-harmful", audit + harmful))
            ]
        print_audit(rows, streams)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in runs:
            rows.append(run(name.replace(" ", "-"), overrides, streams, words, Path(tmp), ARGS.speed))
            print(f"{name}: done", file=sys.stderr, flush=True)
        assist = next((r for r in rows if r["name"] == "assist"), None)
        tool = (
            None
            if assist is None
            else subprocess.run(
                [sys.executable, "-m", "speechpipe.pipeline.cli", "review", "threshold", "--db", str(assist["db"])],
                check=False,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
        )
        exported = export(assist["db"], Path(ARGS.export)) if ARGS.export and assist is not None else None
    total_words = sum(len(s.reference.split()) for s in streams)
    print(f"\n{len(streams)} streams of 30 s, {total_words} reference words, reviews simulated from the references\n")
    print("| level | finals | sent to review | WER clients end up with | WER of the AI's finals |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        ai = "hidden" if r["name"] == "shadow" else f"{r['ai_wer']:.1%}"
        share = r["sent"] / r["finals"] if r["finals"] else 0.0
        print(f"| {r['name']} | {r['finals']} | {r['sent']} ({share:.0%}) | {r['client_wer']:.1%} | {ai} |")
    if assist is not None:
        print(
            f"\nspeechpipe review threshold --target-errors 0.8 (on the assist run's store):\n{tool.stdout}{tool.stderr}"
        )
        print("| confidence | share sent to catch 80 % of the errors | to catch 90 % |")
        print("|---|---:|---:|")
        for key, at80, at90 in confidence_comparison(assist["messages"]):
            print(f"| {key} | {at80:.0%} | {at90:.0%} |")
    if exported is not None:
        print(exported)
    shadow = next((r for r in rows if r["name"] == "shadow"), None)
    if shadow is not None:
        print("\nshadow level, /metrics:\n" + "\n".join(shadow["metrics"]))
        print(f"shadow level, /v1/review/stats variants: {json.dumps(shadow['stats']['variants'])}")
        print(f"shadow level, each stage's errors (by_stage): {json.dumps(shadow['stats'].get('by_stage'))}")
        if shadow["shot"]:
            print(f"dashboard: {shadow['shot']}")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    raise SystemExit(main())
