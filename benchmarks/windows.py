"""Offline Whisper windows: encoder passes and word errors by window length and gap, over layouts.

Builds the long benchmark file of ``benchmarks/offline.py`` for each seed (the utterances of a
corpus folder joined by 1-4 s gaps of silence or real noise) and transcribes it with
``transcribe_file`` once per ``WINDOW:GAP`` (``asr.window_s``, ``asr.gap_s``; offline windows
always read Whisper's full 30 s), in one process, one model (tiny.en int8, beam 1). Passes and
tokens are counted on the model (every encoder pass and decoded token, retries and
continuations included) and are the same on any CPU up to a word of int8 decoding; CPU seconds
are this process's and vary with the machine and its load. The table ends with each
configuration's totals over the layouts.

    python benchmarks/windows.py --seeds 1 2 3 4 5 --configs 24:0.3 28:0.3 30:0.2 30:0.3
    python benchmarks/windows.py --corpus speech-more --seeds 1 2 --configs 24:0.3 30:0.2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
from machine import machine_line
from offline import RATE, build_long_file, counted

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.stages.asr import AsrConfig, AsrEngine, load_model


def parse_config(text: str) -> tuple[float, float]:
    try:
        window, gap = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WINDOW:GAP, such as 30:0.2") from None
    return window, gap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="speech", help="folder of the corpus: speech (40) or speech-more (160)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--configs", type=parse_config, nargs="+", default=[parse_config("24:0.3"), parse_config("30:0.2")])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    root = Path(tempfile.mkdtemp(prefix="speechpipe-windows-"))
    base = AsrConfig(beam_size=1, threads=args.threads, compute_type="int8", device="cpu")
    model = load_model(base)
    counter = counted(model)
    head = f"{'seed':>4} {'window s':>8} {'gap s':>5} {'passes':>6} {'tokens':>6} {'errors':>6} {'words':>6} {'WER %':>6} {'CPU s':>6}"
    print(f"\n{args.corpus}, {len(args.seeds)} layouts; tiny.en int8, beam 1, {args.threads} threads\n{head}")
    totals: dict[tuple, list[int]] = {}
    for seed in args.seeds:
        audio, reference, _facts = build_long_file(seed, args.corpus)
        wav = root / f"long{seed}.wav"
        sf.write(wav, audio, RATE, subtype="PCM_16")
        for window, gap in args.configs:
            asr = replace(base, window_s=window, gap_s=gap)
            engine = AsrEngine(asr, model=model)
            counter.take()
            c0 = time.process_time()
            result = transcribe_file(wav, Config(asr=asr), engine)
            cpu = time.process_time() - c0
            passes, tokens = counter.take()
            s = score(reference, result.text)
            t = totals.setdefault((window, gap), [0, 0, 0, 0])
            t[0] += passes
            t[1] += tokens
            t[2] += s.errors
            t[3] += s.ref_words
            print(
                f"{seed:>4} {window:8g} {gap:5g} {passes:6d} {tokens:6d} {s.errors:6d}"
                f" {s.ref_words:6d} {s.wer * 100:6.2f} {cpu:6.1f}",
                flush=True,
            )
    print("\ntotals over the layouts")
    for (window, gap), (passes, tokens, errors, words) in totals.items():
        print(
            f"{'all':>4} {window:8g} {gap:5g} {passes:6d} {tokens:6d} {errors:6d} {words:6d}"
            f" {errors / words * 100:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
