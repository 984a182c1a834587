"""How accurate are the reference word times the evaluation attributes errors with?

The attribution (speechpipe.pipeline.evaluate.quality.attribution) places reference words in time with Whisper's
cross-attention alignment on the unsegmented audio. This script checks those times against human
speech/non-speech labels, where the truth is known: the VAD clips of ../shared/corpus/vad (TEN VAD
test set: manual labels to the millisecond; AMI: human speaker turns).

For every clip: transcribe it whole with word timestamps (the *transcript* pass), force-align that
transcript's text to the audio (the *forced* pass) and trim silent edges (*forced+snap*, what the
evaluation uses), exactly as the evaluation does for references (same code: ReferenceTimer). Then, for every labelled speech region holding at least one
word (by its middle): onset error = first word start - region start, offset error = last word end
- region end. Words whose middle falls in labelled non-speech are counted too.

    python benchmarks/ref_timing.py [--clips ../shared/corpus/vad] [--tolerance 0.25]

Prints one table: median and 90th percentile of |onset| and |offset| error per method, the share
of region edges within the tolerance, and the share of words inside labelled speech.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine_line

from speechpipe.pipeline.evaluate.quality.vad_metrics import read_segments
from speechpipe.pipeline.evaluate.quality.wer import normalized_words
from speechpipe.pipeline.evaluate.quality.word_timing import BOUNDARY_TOLERANCE_S, edge_errors
from speechpipe.pipeline.evaluate.reference_timing import ReferenceTimer, _timed
from speechpipe.stages.asr import AsrConfig, AsrEngine
from speechpipe.stages.audio import load_audio

HERE = Path(__file__).resolve().parent
DEFAULT_CLIPS = HERE.parent.parent / "shared" / "corpus" / "vad"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default=str(DEFAULT_CLIPS))
    p.add_argument("--tolerance", type=float, default=BOUNDARY_TOLERANCE_S)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(machine_line(), flush=True)
    timer = ReferenceTimer(AsrEngine(AsrConfig(threads=args.threads)))
    methods = ("transcript", "forced", "forced+snap")
    groups = ("all", "tenvad", "ami-excerpt", "musanmix")
    results: dict[tuple[str, str], dict[str, list]] = {
        (g, m): {"on": [], "off": [], "in": [0], "n": [0]} for g in groups for m in methods
    }
    clips = sorted(Path(args.clips).glob("*.wav"))
    t0 = time.perf_counter()
    for wav in clips:
        labels_path = wav.with_suffix(".segments.txt")
        if not labels_path.exists():
            continue
        labels = read_segments(labels_path)
        audio, _ = load_audio(wav)
        text, raw = timer.transcribe_whole(audio)
        if not normalized_words(text):
            continue
        # Time the clip's own transcript exactly as the evaluation times a reference.
        doc = timer.compute(audio, text, transcription=(text, raw))
        by_method = {
            "transcript": _timed(doc, "transcript_words"),
            "forced": _timed(doc, "forced_words") if doc["forced_words"] else _timed(doc, "transcript_words"),
            "forced+snap": _timed(doc),
        }
        group = wav.name.split("_")[0]
        for m, words in by_method.items():
            e = edge_errors(words, labels)
            on, off, inside, n = e["onset"], e["offset"], e["words_in_speech"], e["words"]
            for g in ("all", group):
                r = results[(g, m)]
                r["on"] += on
                r["off"] += off
                r["in"][0] += inside
                r["n"][0] += n
    wall = time.perf_counter() - t0
    tol = args.tolerance
    print(
        f"{len(clips)} labelled clips, {results[('all', 'forced')]['n'][0]} recognised words, {len(results[('all', 'forced')]['on'])} labelled speech regions with words; {wall:.0f} s"
    )
    print(
        f"{'clips':12s} {'regions':>7s} {'method':12s} {'|onset| med':>11s} {'p90':>6s} {'|offset| med':>12s} {'p90':>6s} {'edges within ' + str(tol) + ' s':>20s} {'words in speech':>15s} {'signed onset med':>16s}"
    )
    for (g, m), r in results.items():
        if not r["on"]:
            continue
        on, off = np.abs(r["on"]), np.abs(r["off"])
        within = np.mean(np.concatenate([on, off]) <= tol)
        print(
            f"{g:12s} {len(on):7d} {m:12s} {np.median(on):11.3f} {np.percentile(on, 90):6.3f} {np.median(off):12.3f} {np.percentile(off, 90):6.3f} "
            f"{within * 100:19.1f}% {r['in'][0] / max(r['n'][0], 1) * 100:14.1f}% {np.median(r['on']):16.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
