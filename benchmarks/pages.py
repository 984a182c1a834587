"""The three pages in use, on a real server with real speech: screenshots for docs/screenshots.

    python benchmarks/pages.py [--out docs/screenshots]

A ``speechpipe serve`` (a subprocess, as in production) with a drift baseline, automation level
``partial`` (a review queue) and a canary of ``green`` (the webrtc VAD at aggressiveness 2) over
the primary at 50 %. Live streams of corpus utterances between noisy pauses (benchmarks/
live_streams.py) run in real time, each followed by its reference as feedback; meanwhile headless
Debian Chromium opens the dashboard, the microphone page (its microphone plays a noisy stream of
other utterances) and the review page. Screenshots during the canary; then the candidate is
promoted through the admin API, more streams run, a screenshot; then ``speechpipe deploy revert``
(the CLI) sends new streams back to the previous primary, more streams run, screenshots again.
Prints the deploy history and which variant served the streams after each change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import ADMIN, Server, key_for
from live_streams import RATE, build_stream, noises
from machine import machine_line
from monitoring import build_baseline, one, recordings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
REVIEWER = "bench-reviewer-token"

CONFIG = """
[monitoring]
baseline = "{baseline}"
window_segments = 20
min_segments = 10
[automation]
level = "partial"
review_below = 0.9
[review]
db = "{db}"
[deploy]
mode = "canary"
primary = "default"
candidate = "green"
steps = [0.5, 1.0]
step_min_streams = 20
step_min_s = 60
[deploy.gates]
min_finals = 4
min_feedback_words = 20
[variants.green.vad]
backend = "webrtc"
aggressiveness = 2
"""


def traffic(server: Server, streams, weight: float, parallel: int) -> list:
    """``streams`` in real time, ``parallel`` at a time, each followed by its reference as
    feedback; client keys spread over both sides of ``weight``."""

    async def run() -> list:
        out = []
        for i in range(0, len(streams), parallel):
            batch = list(enumerate(streams[i : i + parallel], start=i))
            keys = [key_for("green", weight, k % 2 == 0, k) if 0 < weight < 1 else None for k, _ in batch]
            out += await asyncio.gather(*(one(server, s, key, 1.0, True) for (_, s), key in zip(batch, keys)))
        return out

    # in a thread of its own: Playwright's sync API keeps an event loop in the caller's
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def review_api(server: Server, method: str, path: str, body: dict | None = None) -> dict | None:
    req = urllib.request.Request(
        server.http + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {REVIEWER}", "Content-Type": "application/json", "X-Reviewer": "bob"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return None if r.status == 204 else json.loads(r.read())


def correct(server: Server, session: str, spans, tries: int = 20) -> int:
    """A person reviews the microphone page's segments waiting for review: each gets the corpus
    reference of the utterance it overlaps most (what was said). Other items are given back.
    Returns how many were submitted."""
    done, given = 0, []
    for _ in range(tries):
        item = review_api(server, "POST", "/v1/review/claim", {"reviewer": "bob"})
        if item is None:
            break
        if item["session"] != session or item.get("reason") == "vad_audit":
            given.append(item)
            continue
        start, end = item["start"] * RATE, item["end"] * RATE
        overlap = [(min(end, b) - max(start, a), ref) for a, b, ref in spans]
        best = max(overlap)
        text = best[1] if best[0] > 0 else ""
        review_api(
            server, "POST", f"/v1/review/{item['id']}", {"text": text, "claim": item["claim"], "reviewer": "bob"}
        )
        done += 1
    for item in given:
        review_api(server, "POST", f"/v1/review/{item['id']}/release", {"claim": item["claim"]})
    return done


def served(results) -> str:
    return ", ".join(
        f"{v}: {sum(1 for r in results if r.ready and r.ready['variant'] == v)}" for v in ("default", "green")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/screenshots", help="folder of the screenshots")
    ap.add_argument("--streams", type=int, default=6, help="streams of the canary phase")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(), flush=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        baseline_recs, live_recs = recordings()
        noise = noises()
        baseline = build_baseline(baseline_recs, noise, workdir, 20, 10)
        live = [
            build_stream(300 + k, live_recs, 40.0, noise, None, mixed_formats=False) for k in range(args.streams + 4)
        ]
        mic = build_stream(400, live_recs, 40.0, noise, None, mixed_formats=False)
        mic_wav = workdir / "microphone.wav"
        sf.write(mic_wav, np.clip(mic.audio, -1, 1), RATE, subtype="PCM_16")
        text = CONFIG.format(baseline=baseline, db=workdir / "reviews.db")
        server = Server(text, [], workdir, flags=("--reviewer-token", REVIEWER))
        taken: list[Path] = []
        try:
            with sync_playwright() as p:
                plain = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                with_mic = p.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=[
                        "--no-sandbox",
                        "--use-fake-ui-for-media-stream",
                        "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
                        "--autoplay-policy=no-user-gesture-required",
                    ],
                )

                def shot(page, name: str, full: bool = True) -> None:
                    path = out / f"{name}.png"
                    page.screenshot(path=str(path), full_page=full)
                    taken.append(path)

                board = plain.new_page(viewport={"width": 1280, "height": 1000})
                board.goto(f"{server.http}/dashboard?token={ADMIN}")
                canary: list = []
                clients = threading.Thread(target=lambda: canary.extend(traffic(server, live[: args.streams], 0.5, 3)))
                clients.start()
                page = with_mic.new_page(viewport={"width": 1000, "height": 800})
                page.goto(f"{server.http}/")
                page.click("#start")
                page.wait_for_function("document.querySelectorAll('#transcript p.final').length >= 3", timeout=90_000)
                session = page.evaluate("window.speechpipe.session")
                fixed = correct(server, session, mic.spans)
                print(f"segments of the microphone page reviewed: {fixed}")
                if fixed:
                    page.wait_for_selector("#transcript p.revised", timeout=30_000)
                reviewer = plain.new_page(viewport={"width": 1280, "height": 900})
                reviewer.goto(f"{server.http}/review?token={REVIEWER}")
                reviewer.fill("#reviewer", "ann")
                reviewer.wait_for_selector("#item:not([hidden])", timeout=90_000)
                reviewer.wait_for_timeout(1500)  # the waveform is drawn
                shot(page, "microphone-canary")
                shot(reviewer, "review-canary", full=False)
                clients.join()
                board.wait_for_timeout(3000)
                shot(board, "dashboard-canary")
                print(f"canary at 50 %: {len(canary)} streams ({served(canary)})")

                server.admin({"action": "promote", "reason": "screenshots: the candidate looked good"})
                promoted = traffic(server, live[args.streams : args.streams + 2], 1.0, 2)
                board.wait_for_timeout(3000)
                shot(board, "dashboard-promoted")
                print(f"after promote: {len(promoted)} streams ({served(promoted)})")

                cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", server.http]
                cmd += ["--admin-token", ADMIN, "revert", "--reason", "screenshots: back to the old VAD"]
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                print("speechpipe deploy revert:", proc.stdout.split("\n", 12)[:12])
                reverted = traffic(server, live[args.streams + 2 : args.streams + 4], 1.0, 2)
                board.wait_for_timeout(3000)
                shot(board, "dashboard-reverted")
                print(f"after revert: {len(reverted)} streams ({served(reverted)})")
                fresh = with_mic.new_page(viewport={"width": 1000, "height": 800})
                fresh.goto(f"{server.http}/")
                fresh.click("#start")
                fresh.wait_for_selector("#status:has-text('Listening')", timeout=30_000)
                fresh.wait_for_timeout(2000)
                shot(fresh, "microphone-reverted")
                page.click("#stop")
                fresh.click("#stop")
                plain.close()
                with_mic.close()
            state = server.admin()
        finally:
            server.stop()
    t0 = state["history"][0]["at"]
    print("\n| at | action | from → to | shares | reason |\n|---|---|---|---|---|")
    for c in state["history"]:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in c["weights"].items())
        print(
            f"| +{c['at'] - t0:.0f} s | {c['action']} | {c['from_state']} → {c['to_state']} | {shares} | {c['reason']} |"
        )
    print("\nscreenshots: " + ", ".join(str(p) for p in taken))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
