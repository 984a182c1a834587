"""VAD in real rooms: do segments end where people pause when the pauses are full of noise?

Builds streams from the corpus utterances (../shared/corpus/speech) joined by 1.0-2.5 s pauses
filled with the corpus noise clips (thunderstorm, running tap, dishes, jackhammer, dog, car horn)
at -45...-30 dBFS, half of them with a noise bed under everything at 10-20 dB SNR as well, seeded.
Each utterance's speech span is known (its clean audio trimmed to the frames within 35 dB of its
loudest), so every pause is known. For each VAD variant the table gives:

* ``pauses ended``: the share of true pauses of 0.8 s or more that end a segment (no segment
  spans the pause): a pause that does not end one holds a final back until the next pause;
* ``stream F1``: frame precision/recall/F1 of the segments against the speech spans of the streams;
* ``clips F1``: the same against the human labels of ../shared/corpus/vad (35 clips, no added noise);
* ``CPU``: seconds of CPU per second of audio for the whole segmenter.

    python benchmarks/vad_noise.py [--streams 8] [--duration 60] [--variants NAME ...]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from live_streams import noise_stretch, pause_audio, rms
from machine import machine_line

from speechpipe.pipeline.evaluate.quality.vad_metrics import pooled_score, read_segments
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechSegment, VadConfig, VadSegmenter

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
PAUSE_MIN_S = 0.8


@dataclass
class Stream:
    audio: np.ndarray
    speech: list[tuple[float, float]]  # true speech spans, seconds
    pauses: list[tuple[float, float]]  # true pauses between them


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """First and last sample of the frames within 35 dB of the utterance's loudest 30 ms frame."""
    fs = 480
    n = audio.size // fs
    e = 10 * np.log10(np.mean(audio[: n * fs].reshape(n, fs).astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(e > e.max() - 35.0)
    return int(active[0] * fs), int((active[-1] + 1) * fs)


def build_stream(k: int, utts: list[np.ndarray], noises: list[np.ndarray], duration_s: float) -> Stream:
    rng = random.Random(2000 + k)
    order = list(range(len(utts)))
    rng.shuffle(order)
    parts, speech, pos = [], [], 0

    def pause(seconds: float) -> None:
        nonlocal pos
        n = int(seconds * SAMPLE_RATE)
        parts.append(pause_audio(n, rng, noises, None))  # noise at -45...-30 dBFS
        pos += n

    pause(rng.uniform(0.5, 1.0))
    for i in order:
        if pos / SAMPLE_RATE > duration_s - 3:
            break
        audio = utts[i]
        a, b = speech_span(audio)
        speech.append(((pos + a) / SAMPLE_RATE, (pos + b) / SAMPLE_RATE))
        parts.append(audio)
        pos += audio.size
        pause(rng.uniform(1.0, 2.5))
    x = np.concatenate(parts)
    if k % 2:  # a noise bed under everything, 10-20 dB below the speech
        snr = rng.choice((10.0, 15.0, 20.0))
        speech_rms = rms(np.concatenate([x[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] for s, e in speech]))
        bed = noise_stretch(noises, x.size, rng)
        x = x + bed * (speech_rms / 10 ** (snr / 20) / rms(bed))
    pauses = [(a[1], b[0]) for a, b in itertools.pairwise(speech)]
    return Stream(np.clip(x, -1, 1).astype(np.float32), speech, pauses)


class Gate:
    """Prototype: webrtcvad's decision, kept only when the frame's energy is ``margin`` dB above the
    noise floor (the minimum frame energy of the last ``window_s``)."""

    def __init__(self, margin: float, window_s: float = 3.0) -> None:
        from speechpipe.stages.vad import WebRtcClassifier

        self.inner = WebRtcClassifier(2, 30)
        self.frame_samples = self.inner.frame_samples
        self.margin = margin
        self.hist: list[float] = []
        self.n = int(window_s * SAMPLE_RATE / self.frame_samples)

    def is_speech(self, frame):
        e = 10 * np.log10(float(np.dot(frame, frame)) / frame.size + 1e-12)
        self.hist.append(e)
        if len(self.hist) > self.n:
            self.hist.pop(0)
        return self.inner.is_speech(frame) and e > min(self.hist) + self.margin

    def classify(self, frames):
        return [self.is_speech(f) for f in frames]

    def reset(self):
        self.inner.reset()
        self.hist.clear()


class TwoStage:
    """Prototype: speech when webrtcvad and Silero both say so (Silero's 32 ms frame)."""

    def __init__(self, threshold: float = 0.5) -> None:
        from speechpipe.stages.vad import WebRtcClassifier
        from speechpipe.stages.vad.silero import SileroClassifier

        self.web = WebRtcClassifier(2, 30)
        self.sil = SileroClassifier(threshold)
        self.frame_samples = self.sil.frame_samples

    def is_speech(self, frame):
        s = self.sil.is_speech(frame)
        w = self.web.is_speech(frame[:480])
        return s and w

    def classify(self, frames):
        return [self.is_speech(f) for f in frames]

    def reset(self):
        self.web.reset()
        self.sil.reset()


def segments(audio: np.ndarray, config) -> tuple[list[tuple[float, float]], float]:
    if callable(config):
        cfg, clf = config()
        vad = VadSegmenter(cfg, classifier=clf)
    else:
        vad = VadSegmenter(config)
    t0 = time.process_time()
    events = []
    for i in range(0, audio.size, 320):  # 20 ms chunks, as live
        events += vad.feed(audio[i : i + 320])
    events += vad.flush()
    cpu = time.process_time() - t0
    return [(e.start_s, e.end_s) for e in events if isinstance(e, SpeechSegment)], cpu


def pauses_ended(segs: list[tuple[float, float]], pauses: list[tuple[float, float]]) -> tuple[int, int]:
    long = [p for p in pauses if p[1] - p[0] >= PAUSE_MIN_S]
    spanned = sum(any(s <= a and e >= b for s, e in segs) for a, b in long)
    return len(long) - spanned, len(long)


VARIANTS: dict[str, VadConfig] = {
    "webrtc": VadConfig(backend="webrtc", pre_roll_ms=300),
    "webrtc pre-roll 500": VadConfig(backend="webrtc"),
    "webrtc a3": VadConfig(backend="webrtc", aggressiveness=3),
    "silero (default)": VadConfig(backend="silero"),
    "silero t0.35": VadConfig(backend="silero", threshold=0.35),
    "silero hangover 300": VadConfig(backend="silero", hangover_ms=300),
    "silero pre-roll 300": VadConfig(backend="silero", pre_roll_ms=300),
    "webrtc + gate 6 dB": lambda: (VadConfig(backend="webrtc"), Gate(6.0)),
    "webrtc + gate 10 dB": lambda: (VadConfig(backend="webrtc"), Gate(10.0)),
    "webrtc + gate 15 dB": lambda: (VadConfig(backend="webrtc"), Gate(15.0)),
    "webrtc & silero": lambda: (VadConfig(backend="silero"), TwoStage()),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    utts = [load_audio(p)[0] for p in sorted((CORPUS / "speech").iterdir()) if p.suffix in (".wav", ".flac")]
    noises = [load_audio(p)[0] for p in sorted((CORPUS / "noise").glob("*.wav"))]
    streams = [build_stream(k, utts, noises, args.duration) for k in range(args.streams)]
    clips = [
        (load_audio(w)[0], read_segments(w.with_suffix(".segments.txt")))
        for w in sorted((CORPUS / "vad").glob("*.wav"))
    ]
    audio_s = sum(s.audio.size for s in streams) / SAMPLE_RATE
    n_pauses = sum(1 for s in streams for a, b in s.pauses if b - a >= PAUSE_MIN_S)
    print(
        f"{len(streams)} streams, {audio_s:.0f} s, {n_pauses} true pauses >= {PAUSE_MIN_S} s; {len(clips)} labelled clips"
    )
    head = f"{'variant':28s} {'pauses ended':>13s} {'stream P':>8s} {'R':>6s} {'F1':>6s} {'clips P':>8s} {'R':>6s} {'F1':>6s} {'CPU s/s':>8s}"
    print(head)
    for name, cfg in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        ended = total = 0
        pairs, cpu = [], 0.0
        for s in streams:
            segs, c = segments(s.audio, cfg)
            cpu += c
            e, t = pauses_ended(segs, s.pauses)
            ended, total = ended + e, total + t
            pairs.append((segs, s.speech, s.audio.size / SAMPLE_RATE))
        st = pooled_score(pairs)
        clip_pairs = [(segments(a, cfg)[0], labels, a.size / SAMPLE_RATE) for a, labels in clips]
        cl = pooled_score(clip_pairs)
        print(
            f"{name:28s} {ended:5d}/{total:<4d}{100 * ended / total:3.0f}% {st.precision:8.3f} {st.recall:6.3f} {st.f1:6.3f}"
            f" {cl.precision:8.3f} {cl.recall:6.3f} {cl.f1:6.3f} {cpu / audio_s:8.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
