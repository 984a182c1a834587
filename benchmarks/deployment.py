"""Deployment patterns measured on a real server with real speech: canary rollback and promotion,
blue/green switches under live streams, and a Whisper base shadow beside tiny.en.

    python benchmarks/deployment.py [--only canary|bluegreen|shadow]
    python benchmarks/deployment.py --only canary --repeat 4 [--seed 0] [--issue-setting]

Streams are corpus utterances joined by noisy pauses (benchmarks/live_streams.py), sent in real
time; after each stream its reference is posted to ``/v1/feedback``, so the canary's WER gate and
the shadow's scores have human ground truth. Each scenario starts its own ``speechpipe serve``
(a subprocess, as in production) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_streams import FRAME_S, RATE, StreamAudio, build_stream, noises, utterances
from machine import machine_line
from streaming import pct, serve, stop

from speechpipe.pipeline.clients.client import StreamResult, paced, stream_pcm
from speechpipe.pipeline.deploy import share_of
from speechpipe.pipeline.protocol import Start

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin-token"


class Server:
    """``speechpipe serve`` with a config file and overrides, on a free port."""

    def __init__(self, config_text: str, overrides: list[str], workdir: Path, flags: tuple[str, ...] = ()) -> None:
        cfg = workdir / "deploy.toml"
        cfg.write_text(config_text)
        flags = ["--config", str(cfg), "--log-level", "WARNING", "--admin-token", ADMIN, *flags]
        for o in overrides:
            flags += ["--set", o]
        self.proc, self.port = serve(flags, timeout_s=300)  # two models may load

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def admin(self, action: dict | None = None) -> dict:
        data = None if action is None else json.dumps(action).encode()
        req = urllib.request.Request(
            f"{self.http}/admin/deploy",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def feedback(self, session: str, text: str) -> dict:
        req = urllib.request.Request(
            f"{self.http}/v1/feedback",
            data=json.dumps({"session": session, "text": text}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def metrics(self) -> str:
        return urllib.request.urlopen(f"{self.http}/metrics", timeout=30).read().decode()

    def stop(self) -> None:
        stop(self.proc, 90.0)


async def send(server: Server, s: StreamAudio, client: str | None = None, feedback: bool = True) -> StreamResult:
    start = s.fmt.start
    start = Start(start.sample_rate, start.encoding, start.channels, client=client)
    result = await stream_pcm(server.url, start, paced(s.frames(), FRAME_S, 1.0))
    if feedback and result.ready is not None:
        await asyncio.to_thread(server.feedback, result.ready["session"], s.reference)
    return result


@dataclass
class Timed:
    """A stream's result with the wall-clock times (the deploy history's clock) it ran between;
    ``ended`` is after its feedback was posted, when the gates could first see all of it."""

    result: StreamResult
    started: float
    ended: float

    @property
    def variant(self) -> str | None:
        return self.result.ready["variant"] if self.result.ready else None


async def send_timed(server: Server, s: StreamAudio, client: str, feedback: bool = True) -> Timed:
    started = time.time()
    result = await send(server, s, client, feedback)
    return Timed(result, started, time.time())


def corpus_streams(n: int, duration_s: float, seed: int = 0) -> list[StreamAudio]:
    utts, noise = utterances(), noises()
    return [build_stream(seed + k, utts, duration_s, noise, mixed_formats=True) for k in range(n)]


def lost(results: list[StreamResult]) -> int:
    return sum(r.lost for r in results) + sum(1 for r in results if r.end is None or r.errors)


# -- canary ---------------------------------------------------------------------------------------

CANARY = """
[deploy]
mode = "canary"
primary = "default"
candidate = "{candidate}"
steps = {steps}
step_min_streams = {step_min_streams}
step_min_s = 20
[deploy.gates]
min_finals = 4
min_feedback_words = 20
[variants.harmful.vad]
backend = "webrtc"
aggressiveness = 3
pre_roll_ms = 0
hangover_ms = 90
[variants.good.vad]
"""


def key_for(candidate: str, weight: float, on_candidate: bool, skip: int) -> str:
    """The ``skip``-th client key the canary routes to the candidate (or not) at ``weight``."""
    found = 0
    for k in range(100_000):
        key = f"client-{k}"
        if (share_of(f"client:{key}", candidate) < weight) == on_candidate:
            if found == skip:
                return key
            found += 1
    raise SystemExit("no client key found")


@dataclass
class CanarySetting:
    """What one canary run is: the steps, streams a round on each side, and stream length.

    ``default``: steps [0.25, 0.5, 1.0], rounds of two candidate and two primary streams of 30 s.
    ``issue``: issue 23's run, steps [0.5, 1.0], ``step_min_streams = 2``, streams of about 20 s
    two at a time (one a side while the candidate is below 100 %), 8 streams at most."""

    name: str
    steps: tuple[float, ...]
    step_min_streams: int
    per_side: int
    duration_s: float
    max_streams: int
    #: a baseline profile for the server (``--baseline``): with a calibration, the estimated-WER gate
    baseline: str = ""
    #: post each stream's reference as feedback (False: the gates judge with no feedback at all)
    feedback: bool = True

    def config(self, candidate: str) -> str:
        return CANARY.format(candidate=candidate, steps=list(self.steps), step_min_streams=self.step_min_streams)


DEFAULT_SETTING = CanarySetting("default", (0.25, 0.5, 1.0), 2, 2, 30.0, 32)
ISSUE_SETTING = CanarySetting("issue", (0.5, 1.0), 2, 1, 20.0, 8)


async def canary_run(
    candidate: str, streams: list[StreamAudio], workdir: Path, setting: CanarySetting = DEFAULT_SETTING
) -> tuple[dict, int, list[Timed], list[str]]:
    """Rounds of concurrent streams, ``setting.per_side`` on each side of the canary (keys picked
    so; at 100 % every key is the candidate's), each stream's reference posted as feedback; until
    the canary is promoted or rolled back, or the streams run out. Also returns, for each round
    after which a gate held the step (not yet sure), ``"round r: gate"``."""
    flags = ("--baseline", setting.baseline) if setting.baseline else ()
    server = Server(setting.config(candidate), [], workdir, flags)
    results: list[Timed] = []
    holds: list[str] = []
    per_round = 2 * setting.per_side
    try:
        k = 0
        while k + per_round <= len(streams):
            state = server.admin()
            if state["state"] in ("rolled_back", "promoted"):
                break
            held = [g["name"] for g in state["window"]["gates"] if g.get("held")]
            holds += [f"round {k // per_round}: {name}" for name in held if k]
            weight = state["variants"][candidate]["weight"]
            sides = (True,) * setting.per_side + (False,) * setting.per_side if weight < 1.0 else (True,) * per_round
            keys = [key_for(candidate, weight, side, k + i) for i, side in enumerate(sides)]
            batch = streams[k : k + per_round]
            results += await asyncio.gather(
                *(send_timed(server, s, key, setting.feedback) for s, key in zip(batch, keys))
            )
            k += len(batch)
            await asyncio.sleep(2.5)  # deploy ticks see the last feedback
        state = server.admin()
        holds += [f"round {k // per_round}: {g['name']}" for g in state["window"]["gates"] if g.get("held")]
        return state, k, results, holds
    finally:
        server.stop()


def canary_table(name: str, state: dict, sent: int, timed: list[Timed]) -> None:
    results = [t.result for t in timed]
    print(f"\n### canary of `{name}`: {state['state']} after {sent} streams, lost finals {lost(results)}\n")
    print("| time | action | reason | weights | step |")
    print("|---|---|---|---|---|")
    t0 = state["history"][0]["at"] if state["history"] else 0
    for ch in state["history"]:
        weights = ", ".join(f"{k} {v:.0%}" for k, v in ch.get("weights", {}).items())
        print(f"| +{ch['at'] - t0:.0f} s | {ch['action']} | {ch['reason']} | {weights} | {ch.get('step')} |")
    for ch in state["history"]:
        for g in ch.get("gates", []):
            if ch["action"] in ("rollback", "advance", "promote"):
                print(
                    f"|   gate | {g['name']} | passed={g['passed']} | candidate {g['candidate']} vs primary "
                    f"{g['primary']} | threshold {g['threshold']} |"
                )


# -- repeated canaries -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One canary run, summed up: how it ended, and for a rollback how soon."""

    candidate: str
    seed: int
    state: str
    streams: int  # streams sent in the run, both sides
    on_candidate: int  # of which the candidate served
    until: int | None  # candidate streams ended (feedback posted) before the rollback
    seconds: float | None  # from the first stream's start to the rollback
    failed: list[str]  # gates that failed at the rollback
    reason: str
    lost: int
    load: str
    holds: list[str]


def outcome_of(
    candidate: str, seed: int, state: dict, sent: int, timed: list[Timed], load: str, holds: list[str]
) -> Outcome:
    back = next((ch for ch in state["history"] if ch["action"] == "rollback"), None)
    until = seconds = None
    failed: list[str] = []
    t0 = min((t.started for t in timed), default=0.0)
    if back is not None:
        until = sum(1 for t in timed if t.variant == candidate and t.ended <= back["at"])
        seconds = back["at"] - t0
        failed = [g["name"] for g in back.get("gates", []) if g.get("passed") is False]
    reason = back["reason"] if back else ""
    if state["state"] == "progressing":  # why it was held: the gates not yet decided, at which weight
        pending = [
            f"{g['name']} ({'held: not yet sure' if g.get('held') else 'too little data'})"
            for g in state.get("window", {}).get("gates", [])
            if g.get("passed") is None
        ]
        weight = state["variants"][candidate]["weight"]
        reason = f"held at {weight:.0%} (step {state['step']}); undecided: {', '.join(pending) or 'none'}"
    return Outcome(
        candidate,
        seed,
        state["state"],
        sent,
        sum(1 for t in timed if t.variant == candidate),
        until,
        seconds,
        failed,
        reason,
        lost([t.result for t in timed]),
        load,
        holds,
    )


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def repeated_canaries(setting: CanarySetting, repeat: int, seed: int, workdir: Path) -> list[Outcome]:
    """``repeat`` harmful and ``repeat`` good canaries, run ``i`` on the streams of seed
    ``seed + 100 * i`` (a different order of utterances each run), alternating harmful and good
    so that a change of machine load falls on both."""
    outcomes = []
    for i in range(repeat):
        run_seed = seed + 100 * i
        streams = corpus_streams(setting.max_streams, setting.duration_s, seed=run_seed)
        for name in ("harmful", "good"):
            before = load_average()
            state, sent, timed, holds = asyncio.run(canary_run(name, streams, workdir, setting))
            o = outcome_of(name, run_seed, state, sent, timed, f"{before} -> {load_average()}", holds)
            outcomes.append(o)
            print(f"run {i + 1}/{repeat} {name}: {o.state} {o.failed or ''} {o.reason}", flush=True)
    return outcomes


def repeated_table(setting: CanarySetting, outcomes: list[Outcome]) -> None:
    print(
        f"\n### canary, {setting.name} setting, repeated: steps {list(setting.steps)}, step_min_streams "
        f"{setting.step_min_streams}, {setting.per_side} stream(s) a side at once, ~{setting.duration_s:.0f} s "
        f"each, {setting.max_streams} at most a run\n"
    )
    print(
        "| run | candidate | seed | load 1/5/15 min (start -> end) | end state | streams (on candidate) | "
        "candidate streams until rollback | s until rollback | failed gates | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, o in enumerate(outcomes):
        until = "-" if o.until is None else str(o.until)
        secs = "-" if o.seconds is None else f"{o.seconds:.0f}"
        print(
            f"| {i // 2 + 1} | {o.candidate} | {o.seed} | {o.load} | {o.state} | {o.streams} ({o.on_candidate}) | "
            f"{until} | {secs} | {', '.join(o.failed) or '-'} | {o.lost} |"
        )
    bad = [o for o in outcomes if o.candidate == "harmful"]
    good = [o for o in outcomes if o.candidate == "good"]
    backs = [o for o in bad if o.state == "rolled_back"]
    untils = [o.until for o in backs if o.until is not None]
    secs = [o.seconds for o in backs if o.seconds is not None]
    spread = (
        f"median {np.median(untils):g}, max {max(untils)} candidate streams; median {np.median(secs):.0f} s, "
        f"max {max(secs):.0f} s"
        if untils
        else "-"
    )
    counts = {s: sum(1 for o in good if o.state == s) for s in ("promoted", "progressing", "rolled_back")}
    print(
        f"\n**Summary**: harmful rolled back {len(backs)} of {len(bad)} ({spread}); good promoted "
        f"{counts['promoted']}, held (still progressing) {counts['progressing']}, wrongly rolled back "
        f"{counts['rolled_back']} of {len(good)}."
    )
    for o in bad + good:
        if o.reason or o.holds:
            held = f" (steps held after {'; '.join(o.holds)})" if o.holds else ""
            print(f"- {o.candidate} seed {o.seed}: {o.reason or o.state}{held}")


# -- blue/green -----------------------------------------------------------------------------------

BLUEGREEN = """
[deploy]
mode = "bluegreen"
primary = "default"
candidate = "green"
[variants.green.vad]
backend = "webrtc"
"""


async def bluegreen(streams: list[StreamAudio], workdir: Path) -> None:
    server = Server(BLUEGREEN, [], workdir)
    try:
        tasks = [asyncio.create_task(send(server, s, feedback=False)) for s in streams[:4]]
        await asyncio.sleep(8)
        t_switch = time.monotonic()
        await asyncio.to_thread(server.admin, {"action": "switch", "active": "green"})
        effect = await first_stream_on(server, "green", t_switch)
        await asyncio.sleep(6)
        t_back = time.monotonic()
        await asyncio.to_thread(server.admin, {"action": "rollback"})
        back = await first_stream_on(server, "default", t_back)
        results = await asyncio.gather(*tasks)
        variants = [r.ready["variant"] if r.ready else None for r in results]
        finals_variants = {f.get("variant") for r in results for f in r.finals}
        print("\n### blue/green: switch and rollback while 4 live streams run\n")
        print(
            "| streams | dropped | finals | lost | their variant (ready / finals) | switch -> new stream on green | rollback -> on default |"
        )
        print("|---|---|---|---|---|---|---|")
        dropped = sum(1 for r in results if r.end is None or r.close_code not in (1000,))
        print(
            f"| 4 | {dropped} | {sum(len(r.finals) for r in results)} | {lost(results)} | {set(variants)} / "
            f"{finals_variants} | {effect * 1000:.0f} ms | {back * 1000:.0f} ms |"
        )
    finally:
        server.stop()


async def first_stream_on(server: Server, variant: str, since: float) -> float:
    """Seconds from ``since`` until a new stream's ready names ``variant`` (the switch in effect)."""
    short = StreamAudio(np.zeros(int(0.2 * RATE), np.float32), "", corpus_streams(1, 5)[0].fmt)
    while True:
        r = await stream_pcm(server.url, short.fmt.start, paced(short.frames(), FRAME_S, 0.0))
        if r.ready and r.ready["variant"] == variant:
            return time.monotonic() - since
        if time.monotonic() - since > 30:
            raise SystemExit(f"no stream reached {variant} within 30 s")


# -- shadow ---------------------------------------------------------------------------------------

SHADOW = """
[deploy]
mode = "{mode}"
primary = "default"
candidate = "base"
[variants.base.asr]
model = "base"
"""


async def shadow_level(mode: str, n: int, streams: list[StreamAudio], workdir: Path, queue: int) -> dict:
    server = Server(SHADOW.format(mode=mode), [f"server.shadow_max_queued={queue}"], workdir)
    try:
        warm = StreamAudio(streams[0].audio[: 6 * RATE], "", streams[0].fmt)
        await send(server, warm, feedback=False)
        results = await asyncio.gather(*(send(server, s) for s in streams[:n]))
        await asyncio.sleep(20 if mode == "shadow" else 0)  # shadow work finishes after the streams
        page = server.metrics()
        return {"results": results, "metrics": page}
    finally:
        server.stop()


def metric_sum(page: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in page.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def shadow(streams: list[StreamAudio], workdir: Path, levels: list[int], queue: int) -> None:
    print(f"\n### shadow: Whisper base beside tiny.en (primary), server.shadow_max_queued = {queue}\n")
    print(
        "| streams | mode | primary p50 | primary p95 | lost | shadow done | shadow shed | agreement (mean) | "
        "WER tiny.en | WER base |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in levels:
        for mode in ("single", "shadow"):
            out = await shadow_level(mode, n, streams, workdir, queue)
            results, page = out["results"], out["metrics"]
            lat = [x for r in results for x in r.latencies]
            done = metric_sum(page, "speechpipe_shadow_segments_total", shadow_outcome="done")
            shed = metric_sum(page, "speechpipe_shadow_segments_total", shadow_outcome="shed")
            agree_n = metric_sum(page, "speechpipe_shadow_agreement_count")
            agree = metric_sum(page, "speechpipe_shadow_agreement_sum") / agree_n if agree_n else float("nan")
            wer = {}
            for v in ("default", "base"):
                words = metric_sum(page, "speechpipe_feedback_words_total", pipeline_variant=v)
                errors = metric_sum(page, "speechpipe_feedback_errors_total", pipeline_variant=v)
                wer[v] = f"{errors / words:.1%}" if words else "-"
            print(
                f"| {n} | {mode} | {pct(lat, 50):.2f} s | {pct(lat, 95):.2f} s | {lost(results)} | {done:.0f} | "
                f"{shed:.0f} | {agree:.3f} | {wer['default']} | {wer['base']} |",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("canary", "bluegreen", "shadow"))
    ap.add_argument("--streams", type=int, help="canary streams at most per run (32; 8 with --issue-setting)")
    ap.add_argument("--repeat", type=int, default=0, help="N harmful and N good canaries, one summary table")
    ap.add_argument("--seed", type=int, default=0, help="first seed of --repeat's streams (run i: seed + 100 i)")
    ap.add_argument(
        "--issue-setting",
        action="store_true",
        help="with --repeat: issue 23's run (steps [0.5, 1.0], ~20 s streams, one a side at once, 8 at most)",
    )
    ap.add_argument("--baseline", default="", help="a baseline profile for the canary's server (estimated-WER gate)")
    ap.add_argument("--no-feedback", action="store_true", help="canaries: post no feedback at all")
    ap.add_argument("--shadow-streams", type=int, nargs="+", default=[2, 4], help="shadow rows (streams at once)")
    ap.add_argument("--shadow-queue", type=int, default=32, help="server.shadow_max_queued of the shadow rows")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    os.environ.setdefault("OTEL_SDK_DISABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "canary") and args.repeat:
            setting = ISSUE_SETTING if args.issue_setting else DEFAULT_SETTING
            setting = replace(setting, baseline=args.baseline, feedback=not args.no_feedback)
            if args.streams is not None:
                setting = replace(setting, max_streams=args.streams)
            repeated_table(setting, repeated_canaries(setting, args.repeat, args.seed, work))
        elif args.only in (None, "canary"):
            streams = corpus_streams(max(args.streams or 32, 4), 30.0)
            setting = replace(DEFAULT_SETTING, baseline=args.baseline, feedback=not args.no_feedback)
            for name in ("harmful", "good"):
                state, sent, results, _ = asyncio.run(canary_run(name, streams[: args.streams or 32], work, setting))
                canary_table(name, state, sent, results)
        if args.only in (None, "bluegreen"):
            asyncio.run(bluegreen(corpus_streams(4, 30.0, seed=40), work))
        if args.only in (None, "shadow"):
            n = max(args.shadow_streams)
            asyncio.run(shadow(corpus_streams(n, 30.0, seed=80), work, args.shadow_streams, args.shadow_queue))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
