"""The encoder's context (issue 24): Whisper's full 30 s against a window's audio and a few seconds
of silence (``asr.context_s``), on live finals.

Each corpus utterance (``--corpus``: ../shared/corpus/speech by default, or speech-more) is one
stream: room noise at -40 dBFS before and after it, cut into finals by the live VAD, each final
transcribed in a call of its own as the live scheduler runs a final that waits alone (with the
tail filler). For each context: corpus WER (each utterance's finals joined, against its
reference) and the process's CPU seconds over the whole pass.

    python benchmarks/context.py [--contexts 0 5 7 10] [--corpus speech-more]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from live_streams import CORPUS, noises
from machine import machine_line
from shared_windows import finals_of

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.scheduling.scheduler import transcribe_call
from speechpipe.stages.asr import AsrEngine
from speechpipe.stages.audio import load_audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=float, nargs="+", default=[0.0, 5.0, 7.0, 10.0], help="asr.context_s values")
    ap.add_argument("--corpus", default="speech", help="a folder of ../shared/corpus (speech, speech-more)")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (a live worker has 1 on 2 cores)")
    args = ap.parse_args()
    print(machine_line())
    config = Config()
    folder = CORPUS / args.corpus
    files = sorted(p for p in folder.iterdir() if p.suffix in (".wav", ".flac") and p.with_suffix(".txt").exists())
    utts = [(load_audio(p)[0], " ".join(p.with_suffix(".txt").read_text().split())) for p in files]
    noise = noises()
    streams = [finals_of(k, audio, noise, config) for k, (audio, _ref) in enumerate(utts)]
    refs = [ref for _a, ref in utts]
    base = AsrEngine(replace(config.asr, threads=args.threads))
    audio_s = sum(j.audio_s for x in streams for j in x)
    print(f"{len(streams)} utterances of {args.corpus}, {sum(len(x) for x in streams)} finals, {audio_s:.0f} s")
    print("\n| context | WER | words | CPU s | CPU s per audio s |\n|---|---|---|---|---|")
    for context in args.contexts:
        engine = AsrEngine(replace(base.config, context_s=context), model=base.model)
        transcribe_call(engine, streams[0][:1], engine.config.window_s, engine.config.gap_s, 3.0)  # warm-up
        cpu0 = time.process_time()
        hyps = []
        for jobs in streams:
            texts = [transcribe_call(engine, [j], engine.config.window_s, engine.config.gap_s, 3.0)[0][0] for j in jobs]
            hyps.append(" ".join(t[0].text for t in texts if t[0].text))
        cpu = time.process_time() - cpu0
        wer = score_corpus(zip(refs, hyps))
        label = "full 30 s" if context == 0 else f"audio + {context:g} s"
        print(f"| {label} | {wer.wer:.2%} | {wer.ref_words} | {cpu:.1f} | {cpu / audio_s:.4f} |", flush=True)


if __name__ == "__main__":
    main()
