"""Estimated WER without references against the true WER (issue 26): calibrated on clean files of
some speakers (what a baseline holds), judged on windows of other speakers' files under held-out
conditions: clean, 8 kHz telephone audio, -20 dB, noise beds (the corpus noise clips under
the whole utterance) at 10, 5 and 0 dB SNR, and the clean files through the harmful VAD of issue
10 (``harmful``).

Every file runs through the live path offline (one Whisper call per segment, as ``speechpipe
baseline build`` does), its segments' features collected and its true errors scored against its
reference. A window is ``--window`` files drawn at random from half of a condition's files
(``--draws`` windows a condition); its true WER is its files' errors over their reference words;
the estimate and its 90 % interval come from its segments alone (pipeline/monitoring/quality.py).
The table is printed twice: calibrated on the clean files only (a baseline), then with
``--reviewed`` segments more whose references came from reviewers (files of the other half of
every condition, in a random order), as the server recalibrates when reviews come in.

    python benchmarks/quality.py                       # calibrate on 12 speakers, judge 8 + speech/
    python benchmarks/quality.py --window 6 --draws 40 --reviewed 100
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import machine_line

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.monitoring.collector import FeatureCollector
from speechpipe.pipeline.monitoring.quality import TERMS, Sample, calibrate, estimate
from speechpipe.pipeline.offline.runner import load_engine, transcribe_file
from speechpipe.stages.audio import load_audio, resample

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RATE = 16000
CONDITIONS = ("clean", "8k", "-20dB", "snr10", "snr5", "snr0", "harmful")
#: the harmful VAD of issue 10 (webrtc 3, no pre-roll, 90 ms hangover), the canary candidate the
#: estimated_wer_delta gate must catch: the clean files through it, estimated with the default's
#: calibration (as the gate estimates a candidate)
HARMFUL = {"vad.backend": "webrtc", "vad.aggressiveness": 3, "vad.pre_roll_ms": 0, "vad.hangover_ms": 90}


def speaker(path: Path) -> str:
    return path.stem.split("_")[1].split("-")[0] if "librispeech" in path.stem else path.stem.split("_")[1]


def files() -> tuple[list[Path], list[Path]]:
    """(calibration files: clean speech-more of 12 speakers; held-out: the other 8 speakers and speech/)."""
    more = sorted(p for p in (CORPUS / "speech-more").iterdir() if p.suffix in (".flac", ".wav"))
    speakers = sorted({speaker(p) for p in more})
    calib = set(random.Random(0).sample(speakers, 12))
    speech = sorted(p for p in (CORPUS / "speech").iterdir() if p.suffix in (".flac", ".wav") and p.stem != "jfk")
    return [p for p in more if speaker(p) in calib], [p for p in more if speaker(p) not in calib] + speech


def noises() -> list[np.ndarray]:
    return [load_audio(p)[0] for p in sorted((CORPUS / "noise").glob("*.wav"))]


def condition(audio: np.ndarray, name: str, noise: list[np.ndarray], k: int) -> tuple[np.ndarray, int]:
    """``audio`` (16 kHz) under condition ``name``: (samples, rate to write them at)."""
    if name == "8k":
        return resample(audio, RATE, 8000), 8000
    if name == "-20dB":
        return audio * 0.1, RATE
    if name.startswith("snr"):
        snr = float(name[3:])
        bed = noise[k % len(noise)]
        bed = np.tile(bed, int(np.ceil(audio.size / bed.size)))[: audio.size]
        speech_rms = float(np.sqrt(np.mean(audio**2))) or 1e-9
        bed = bed * (speech_rms / (float(np.sqrt(np.mean(bed**2))) or 1e-9)) * 10 ** (-snr / 20)
        return np.clip(audio + bed, -1, 1), RATE
    return audio, RATE


def run(
    paths: list[Path], name: str, config: Config, engine, noise, tmp: Path, cache: Path | None = None
) -> list[tuple[list[dict], int, int]]:
    """Each file under condition ``name``: (its segments' features, errors, reference words);
    with ``cache``, read from there when a run of the same files and condition was kept."""
    key = cache / f"{name}-{len(paths)}-{paths[0].stem}.json" if cache is not None else None
    if key is not None and key.exists():
        return [tuple(x) for x in json.loads(key.read_text())]
    out = []
    for k, path in enumerate(paths):
        audio, _ = load_audio(path)
        x, rate = condition(audio, name, noise, k)
        wav = tmp / f"{name}-{k}.wav"
        sf.write(wav, x, rate)
        found: list[dict] = []
        collector = FeatureCollector(lambda _s, _i, f, found=found: found.append(f))
        ref = path.with_suffix(".txt").read_text()
        result = transcribe_file(wav, config, engine, observers=[collector], reference=ref, packed=False)
        out.append((found, result.wer.errors, result.wer.ref_words))
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps(out))
    return out


def windows(judged: list, draws: int, size: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    return [rng.sample(judged, size) for _ in range(draws)]


def table_row(name: str, picks: list[list], cal) -> str:
    rows = defaultdict(list)
    for pick in picks:
        segs = [f for s, _, _ in pick for f in s]
        true = sum(e for _, e, _ in pick) / max(1, sum(w for _, _, w in pick))
        est = estimate(segs, cal)
        if est is None:
            continue
        rows["true"].append(true)
        rows["est"].append(est.estimated_wer)
        rows["err"].append(abs(est.estimated_wer - true))
        rows["in"].append(est.low <= true <= est.high)
        rows["width"].append(est.high - est.low)
    n = len(rows["true"])
    return (
        f"| {name} | {n} | {100 * statistics.mean(rows['true']):.1f} % | {100 * statistics.mean(rows['est']):.1f} % | "
        f"{100 * statistics.mean(rows['err']):.2f} | {sum(rows['in'])}/{n} | {100 * statistics.mean(rows['width']):.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=int, default=8, help="files a window (default 8)")
    ap.add_argument("--draws", type=int, default=30, help="windows drawn a condition (default 30)")
    ap.add_argument("--reviewed", type=int, default=50, help="reviewed segments added to the calibration (default 50)")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--cache", type=Path, help="keep each condition's decodes here and read them back (same files)")
    args = ap.parse_args()
    print(machine_line())
    config = Config()
    engine = load_engine(config)
    calib_files, held = files()
    noise = noises()
    with tempfile.TemporaryDirectory() as tmp:
        calib = run(calib_files, "clean", config, engine, noise, Path(tmp), args.cache)
        base = [Sample.of(s, e, w) for s, e, w in calib]
        cal = calibrate(base, "baseline")
        print(f"calibrated on {cal.files} clean files ({cal.segments} segments) of 12 speakers, version {cal.version}")
        print(
            f"  error weights {[round(w, 3) for w in cal.errors]} (terms {', '.join(TERMS)}); word weights {[round(w, 3) for w in cal.words]}"
        )
        print(
            f"held out: {len(held)} files (8 other speakers of speech-more, and speech/); under each condition the "
            f"even-numbered files are the windows' ({args.draws} windows of {args.window} files), the odd ones the pool "
            f"reviewers corrected"
        )
        judged, pool = {}, []
        for name in args.conditions:
            cfg = config.with_overrides(HARMFUL) if name == "harmful" else config
            out = run(held, name, cfg, engine, noise, Path(tmp), args.cache)
            judged[name] = out[0::2]
            pool += [(name, item) for item in out[1::2]]
            print(f"  ran {name}", file=sys.stderr, flush=True)
        # reviews: files of the pool, in a random order across conditions, until --reviewed segments
        rng = random.Random(7)
        rng.shuffle(pool)
        reviewed, taken, by = [], 0, defaultdict(int)
        for name, (segs, e, w) in pool:
            if taken >= args.reviewed:
                break
            reviewed.append(Sample.of(segs, e, w))
            taken += len(segs)
            by[name] += len(segs)
        after = calibrate(base + reviewed, f"baseline + {taken} reviewed segments")
        print(f"recalibrated with {taken} reviewed segments ({dict(by)}), version {after.version}")
        print(
            f"  error weights {[round(w, 3) for w in after.errors]}; word weights {[round(w, 3) for w in after.words]}"
        )
        for title, c in (("baseline only", cal), (f"after {taken} reviewed segments", after)):
            print(f"\n### calibrated on the {title}\n")
            print(
                "| condition | windows | true WER (mean) | estimated (mean) | MAE (points) | in the 90 % interval "
                "| interval width (mean, points) |"
            )
            print("|---|---|---|---|---|---|---|")
            for name in args.conditions:
                print(table_row(name, windows(judged[name], args.draws, args.window, seed=1), c), flush=True)


if __name__ == "__main__":
    main()
