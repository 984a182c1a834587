"""Shared against solo Whisper windows (issue 24): does packing several streams' finals into one
window move a word, or cost accuracy?

Each of the 40 corpus utterances (../shared/corpus/speech) is one stream: noise from the corpus
clips before and after it (-40 dBFS), cut into segments by the live VAD, exactly as a live
stream's finals. Then:

* **solo**: every final in a call of its own, as the live scheduler runs a final that waits alone
  (``transcribe_call`` with the tail filler);
* **shared**, ``--groupings`` times: the finals of all 40 streams in a random interleaving (each
  stream's finals in their order), packed into windows the way the scheduler packs waiting finals
  of several streams (``WindowFill`` of the scheduler's budget, ``server.stream_gap_s`` of
  silence between pieces), each window one call; a piece a word crossed into or out of is
  decoded again alone (counted).

For each: corpus WER (each stream's finals joined, against its reference), encoder passes (one
per Whisper window, retries included), passes per final, pieces decoded again alone and the words
that crossed, and CPU seconds per audio second. The issue's bar: shared within 0.3 WER points of
solo, over all groupings.

    python benchmarks/shared_windows.py [--groupings 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
from live_streams import RATE, noises, pause_audio, utterances
from machine import machine_line

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.hooks import AsrJob
from speechpipe.pipeline.scheduling.scheduler import transcribe_call
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.asr import AsrEngine
from speechpipe.stages.asr.packing import WindowFill


@dataclass
class Outcome:
    label: str
    wer: float
    passes: int
    finals: int
    crossed: int
    crossing_words: int
    cpu_s: float
    audio_s: float


def finals_of(k: int, audio: np.ndarray, noise: list[np.ndarray], config: Config) -> list[AsrJob]:
    """Utterance ``k`` as a live stream's final jobs: noise around it, cut by the VAD."""
    rng = random.Random(k)
    padded = np.concatenate(
        [pause_audio(int(0.8 * RATE), rng, noise, -40.0), audio, pause_audio(int(1.2 * RATE), rng, noise, -40.0)]
    )
    session = StreamSession(config.vad, stream_id=f"s{k:02d}")
    session.feed(padded)
    session.finish()
    return session.take_jobs()


def run(label: str, calls: list[list[AsrJob]], engine: AsrEngine, gap_s: float, refs: list[str], filler_s: float):
    texts: dict[str, dict[int, str]] = {}
    passes = crossed = crossing = 0
    cpu0 = time.process_time()
    for jobs in calls:
        results = transcribe_call(engine, jobs, engine.config.window_s, gap_s, filler_s)
        windows = results[0][1].windows
        passes += len(windows)
        crossed += sum(w.crossed for w in windows)
        crossing += sum(w.crossing_words for w in windows)
        for job, (transcripts, _run) in zip(jobs, results):
            for piece, t in zip(job.pieces, transcripts):
                texts.setdefault(job.stream_id, {})[piece.start_sample] = t.text
    cpu = time.process_time() - cpu0
    hyps = [" ".join(v for _k, v in sorted(texts.get(f"s{k:02d}", {}).items()) if v) for k in range(len(refs))]
    wer = score_corpus(zip(refs, hyps)).wer
    finals = sum(len(j.pieces) for c in calls for j in c)
    audio_s = sum(j.audio_s for c in calls for j in c)
    return Outcome(label, wer, passes, finals, crossed, crossing, cpu, audio_s)


def shared_calls(streams: list[list[AsrJob]], rng: random.Random, budget_s: float, gap_s: float) -> list[list[AsrJob]]:
    """The finals of every stream in a random interleaving, packed as the scheduler packs them."""
    left = [list(s) for s in streams if s]
    order: list[AsrJob] = []
    while left:
        s = rng.randrange(len(left))
        order.append(left[s].pop(0))
        if not left[s]:
            left.pop(s)
    calls: list[list[AsrJob]] = []
    fill = None
    for job in order:
        if fill is None or not fill.fits(job.audio_s):
            fill = WindowFill(budget_s, gap_s)
            calls.append([])
        fill.add(job.audio_s)
        calls[-1].append(job)
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groupings", type=int, default=10, help="random interleavings of the shared mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (a live worker has 1 on 2 cores)")
    args = ap.parse_args()
    print(machine_line())
    config = Config()
    s = config.server
    engine = AsrEngine(replace(config.asr, threads=args.threads))
    gap = max(engine.config.gap_s, s.stream_gap_s)
    packer = AsrEngine(replace(engine.config, gap_s=gap), model=engine.model)
    filler = 3.0
    budget = max(1.0, engine.config.window_s - (filler + gap))
    utts = utterances()
    noise = noises()
    refs = [ref for _a, ref in utts]
    streams = [finals_of(k, audio, noise, config) for k, (audio, _ref) in enumerate(utts)]
    print(f"{len(streams)} streams, {sum(len(x) for x in streams)} finals, window budget {budget:.1f} s, gap {gap:g} s")
    transcribe_call(engine, streams[0][:1], engine.config.window_s, engine.config.gap_s, filler)  # warm-up
    rows = [run("solo", [[j] for x in streams for j in x], engine, engine.config.gap_s, refs, filler)]
    rng = random.Random(args.seed)
    for g in range(args.groupings):
        rows.append(run(f"shared #{g + 1}", shared_calls(streams, rng, budget, gap), packer, gap, refs, filler))
    print()
    print(
        "| windows | WER | encoder passes | passes per final | pieces decoded again alone | words that crossed | CPU s per audio s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.label} | {r.wer:.2%} | {r.passes} | {r.passes / r.finals:.2f} | {r.crossed} | "
            f"{r.crossing_words} | {r.cpu_s / r.audio_s:.4f} |"
        )
    shared = rows[1:]
    if shared:
        wers = [r.wer for r in shared]
        print()
        print(
            f"shared over {len(shared)} groupings: WER mean {statistics.mean(wers):.2%}, min {min(wers):.2%}, "
            f"max {max(wers):.2%} (solo {rows[0].wer:.2%}: mean delta {100 * (statistics.mean(wers) - rows[0].wer):+.2f} "
            f"points, worst {100 * (max(wers) - rows[0].wer):+.2f}); passes per final "
            f"{statistics.mean(r.passes / r.finals for r in shared):.2f} against {rows[0].passes / rows[0].finals:.2f}; "
            f"pieces decoded again alone {sum(r.crossed for r in shared)} of {sum(r.finals for r in shared)}"
        )


if __name__ == "__main__":
    main()
