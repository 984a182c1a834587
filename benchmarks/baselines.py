"""Measure the accuracy figures the tests hold the pipeline to, and write them to tests/baselines.json.

Tests never type a WER ceiling or an F1 floor: they read the figure measured here (the same
measurement as the test makes, on the same corpus files) and allow the tolerance written beside
it. Rerun this after a change that moves accuracy on purpose, read the diff of the file, and
commit it with the change that moved it:

    python benchmarks/baselines.py [--threads 2] [--check]

``--check`` only compares a fresh measurement with the file and prints the differences.

Tolerances (policy, in the file): VAD scores may fall ``score`` below the measurement (webrtcvad is
integer code and reproduces exactly; Silero's float network may flip a frame on another CPU);
a WER may rise by one reference word or ``wer`` points, whichever is more (int8 decoding on
another CPU can change a word); a live WER may exceed its file's offline WER by ``live_wer``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import machine_line

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.vad_metrics import frame_score, pooled_score, read_segments
from speechpipe.pipeline.evaluate.quality.wer import score, score_corpus
from speechpipe.pipeline.evaluate.reference_timing import ReferenceTimer
from speechpipe.pipeline.offline.runner import run, transcribe_file
from speechpipe.stages.asr import AsrConfig, AsrEngine, AudioPiece
from speechpipe.stages.audio import load_audio, resample
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechSegment, VadConfig, VadSegmenter

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SPEECH, VAD_CLIPS = CORPUS / "speech", CORPUS / "vad"
OUT = ROOT / "tests" / "baselines.json"
TOLERANCE = {"score": 0.01, "wer": 0.02, "live_wer": 0.05}

#: the files of the tests that bound a WER (tests/test_asr.py, test_offline.py, test_browser.py...)
PACKED = [
    "librispeech-dev-clean_1272-128104-0000.wav",
    "ljspeech_LJ001-0002.wav",
    "cmuarctic_aew_a0001.wav",
    "librispeech-test-clean_1089-134691-0000.flac",
]
OFFLINE_PAIR = ["ljspeech_LJ001-0002.wav", "librispeech-dev-clean_1272-128104-0000.wav"]
RESAMPLED = "librispeech-test-clean_1089-134686-0000.flac"
JFK = "jfk_inaugural_ask-not.flac"


def wer_entry(reference: str, hypothesis: str) -> dict:
    w = score(reference, hypothesis)
    return {"wer": round(w.wer, 4), "ref_words": w.ref_words}


def vad_figures() -> dict:
    """Frame scores of the segments sent to ASR, pooled over the labelled clips (tests/test_vad.py,
    tests/test_silero.py)."""
    clips = [
        (w, load_audio(w)[0], read_segments(w.with_suffix(".segments.txt"))) for w in sorted(VAD_CLIPS.glob("*.wav"))
    ]
    out: dict = {"clips": len(clips)}
    for name, cfg in (("webrtc", VadConfig(backend="webrtc")), ("silero", VadConfig(backend="silero"))):
        pairs = {}
        for wav, audio, labels in clips:
            vad = VadSegmenter(cfg)
            segs = [e for e in vad.feed(audio) + vad.flush() if isinstance(e, SpeechSegment)]
            pairs[wav.name] = ([(s.start_s, s.end_s) for s in segs], labels, audio.size / SAMPLE_RATE)
        s = pooled_score(list(pairs.values()))
        out[name] = {"precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4)}
        ami = next(p for w, p in pairs.items() if w.startswith("ami-excerpt_pyannote-dev00"))
        musan = next(p for w, p in pairs.items() if w.startswith("musanmix"))
        out[name]["ami_dev00_f1"] = round(frame_score(ami[0], ami[1], 30.0).f1, 4)
        out[name]["musan_precision"] = round(frame_score(*musan).precision, 4)
    return out


def wer_figures(engine: AsrEngine) -> dict:
    ref = {n: (SPEECH / n).with_suffix(".txt").read_text(encoding="utf-8") for n in {*PACKED, *OFFLINE_PAIR, RESAMPLED}}
    out: dict = {}
    # tests/test_asr.py: the four utterances packed into one window.
    pieces, pos = [], 0
    for k, name in enumerate(PACKED):
        audio = load_audio(SPEECH / name)[0]
        pieces.append(AudioPiece(k, pos, audio))
        pos += audio.size + 37 * SAMPLE_RATE
    [(transcripts, _)] = engine.run([pieces])
    out["packed_pieces"] = [wer_entry(ref[n], t.text) for n, t in zip(PACKED, transcripts)]
    out["packed_all"] = wer_entry(" ".join(ref[n] for n in PACKED), " ".join(t.text for t in transcripts))
    # ...and decoded as four windows, batched against one by one (the sequential text as reference).
    groups = [[p] for p in pieces]
    sequential = AsrEngine(replace(engine.config, batch_size=1), model=engine.model).transcribe_groups(groups)
    batched = AsrEngine(replace(engine.config, batch_size=4), model=engine.model).transcribe_groups(groups)
    out["batched_vs_sequential"] = [wer_entry(s[0].text, b[0].text) for (s, _), (b, _) in zip(sequential, batched)]
    # tests/test_offline.py: the two short files, the same utterance at other rates in stereo,
    # and the bundled samples through the CLI's runner.
    config = Config(asr=engine.config)
    pairs = [(ref[n], transcribe_file(SPEECH / n, config, engine).text) for n in OFFLINE_PAIR]
    w = score_corpus(pairs)
    out["offline_pair"] = {"wer": round(w.wer, 4), "ref_words": w.ref_words}
    audio = load_audio(SPEECH / RESAMPLED)[0]
    out["resampled"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (8000, 22050, 44100, 48000):
            x = resample(audio, 16000, rate)
            path = Path(tmp) / f"utt_{rate}.wav"
            sf.write(path, np.stack([x, 0.6 * x], axis=1), rate, subtype="PCM_16")
            out["resampled"][str(rate)] = wer_entry(ref[RESAMPLED], transcribe_file(path, config, engine).text)
        summary = run([ROOT / "samples"], Path(tmp) / "out", config, engine=engine)
        # tests/test_offline.py: the same utterance as a float WAV with 1,100 NaN/Inf samples, against
        # its clean twin's transcript.
        sf.write(Path(tmp) / "clean.wav", audio, 16000, subtype="FLOAT")
        broken = audio.copy()
        for k in range(11):
            broken[2000 + k * 5600 : 2100 + k * 5600] = np.inf if k == 0 else np.nan
        sf.write(Path(tmp) / "nan.wav", broken, 16000, subtype="FLOAT")
        clean_text = transcribe_file(Path(tmp) / "clean.wav", config, engine).text
        out["nan_twin"] = wer_entry(clean_text, transcribe_file(Path(tmp) / "nan.wav", config, engine).text)
    out["bundled_samples"] = {"wer": round(summary.wer.wer, 4), "ref_words": summary.wer.ref_words}
    # tests/test_browser.py streams this clip live: its offline WER is the one to stay near.
    clip = "librispeech-dev-clean_1272-128104-0000.wav"
    out["browser_clip_offline"] = wer_entry(ref[clip], transcribe_file(SPEECH / clip, config, engine).text)
    return out


def timing_figures(engine: AsrEngine) -> dict:
    """tests/test_attribution.py: forced alignment against the transcript timing on JFK."""
    audio = load_audio(SPEECH / JFK)[0]
    timing = ReferenceTimer(engine).compute(audio, (SPEECH / JFK).with_suffix(".txt").read_text())
    return {"jfk_agreement_within_tolerance": round(timing["agreement"]["within_tolerance"], 4)}


def measure(threads: int) -> dict:
    engine = AsrEngine(AsrConfig(threads=threads))
    return {
        "written_by": "python benchmarks/baselines.py",
        "measured_on": f"{datetime.now(UTC).date()} {platform.machine()} {platform.processor() or ''}".strip(),
        "model": f"{engine.model_name} {engine.device} {engine.compute_type}",
        "tolerance": TOLERANCE,
        "vad": vad_figures(),
        "wer": wer_figures(engine),
        "timing": timing_figures(engine),
    }


def flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, list):
            out.update(flat(dict(enumerate(v)), key + "."))
        else:
            out[key] = v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="compare with tests/baselines.json; write nothing")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    doc = measure(args.threads)
    old = flat(json.loads(OUT.read_text())) if OUT.exists() else {}
    new = flat(doc)
    changed = [(k, old.get(k), v) for k, v in new.items() if old.get(k) != v and k not in ("measured_on",)]
    print(f"{'figure':48s} {'in the file':>12s} {'measured':>10s}")
    for k, a, b in changed:
        print(f"{k:48s} {a!s:>12s} {b!s:>10s}")
    if not changed:
        print("no figure changed")
    if not args.check:
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
