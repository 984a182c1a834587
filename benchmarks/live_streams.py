"""The streams of benchmarks/streaming.py: corpus utterances joined by pauses, in the formats real
clients send.

A stream is a sequence of corpus utterances (../shared/corpus/speech) in a seeded order, joined by
pauses of 1.0-2.5 s that hold either digital silence or a stretch of one of the corpus noise clips
(thunderstorm, running tap, dishes, jackhammer, dog, car horn) at a level drawn from -45, -40,
-35 and -30 dBFS. Stream ``k`` is sent in the ``k``-th of :data:`FORMATS` (16 kHz s16 mono,
8 kHz telephone audio, 48 kHz float stereo from a browser, 44.1 kHz s16 stereo), 20 ms per frame.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechpipe.pipeline.clients.client import pcm_s16le
from speechpipe.pipeline.protocol import Start
from speechpipe.stages.audio import load_audio, resample

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
RATE = 16000
FRAME_S = 0.02
NOISE_LEVELS_DBFS = (-45.0, -40.0, -35.0, -30.0)


@dataclass(frozen=True)
class Format:
    name: str
    sample_rate: int
    encoding: str
    channels: int

    @property
    def start(self) -> Start:
        return Start(sample_rate=self.sample_rate, encoding=self.encoding, channels=self.channels)


FORMATS = (
    Format("16k s16", 16000, "pcm_s16le", 1),
    Format("8k s16", 8000, "pcm_s16le", 1),
    Format("48k f32 stereo", 48000, "pcm_f32le", 2),
    Format("44.1k s16 stereo", 44100, "pcm_s16le", 2),
)


@dataclass
class StreamAudio:
    audio: np.ndarray  # 16 kHz mono: what the offline path transcribes
    reference: str
    fmt: Format
    #: where each utterance lies in ``audio``: (first sample, end sample, its reference)
    spans: list[tuple[int, int, str]] = field(default_factory=list)

    def frames(self) -> list[bytes]:
        """The stream as its client sends it: 20 ms frames in its format."""
        f = self.fmt
        x = resample(self.audio, RATE, f.sample_rate) if f.sample_rate != RATE else self.audio
        if f.channels == 2:
            x = np.stack([x, 0.8 * x], axis=1)
        n = int(FRAME_S * f.sample_rate)
        if f.encoding == "pcm_f32le":
            return [x[i : i + n].astype("<f4").tobytes() for i in range(0, x.shape[0], n)]
        return [pcm_s16le(x[i : i + n]) for i in range(0, x.shape[0], n)]


def utterances() -> list[tuple[np.ndarray, str]]:
    speech = CORPUS / "speech"
    files = sorted(p for p in speech.iterdir() if p.suffix in (".wav", ".flac") and p.with_suffix(".txt").exists())
    return [(load_audio(p)[0], " ".join(p.with_suffix(".txt").read_text().split())) for p in files]


def noises() -> list[np.ndarray]:
    return [load_audio(p)[0] for p in sorted((CORPUS / "noise").glob("*.wav"))]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1e-9


def noise_stretch(noise: list[np.ndarray], n: int, rng: random.Random) -> np.ndarray:
    """``n`` samples of one of the noise clips (drawn from ``rng``), from a random offset, looped."""
    src = noise[rng.randrange(len(noise))]
    if src.size < n:
        src = np.tile(src, n // src.size + 1)
    off = rng.randrange(src.size - n + 1)
    return src[off : off + n].astype(np.float32)


def pause_audio(n: int, rng: random.Random, noise: list[np.ndarray] | None, dbfs: float | None) -> np.ndarray:
    """``n`` samples of pause: digital silence, or a random stretch of a noise clip at ``dbfs`` RMS
    (one of :data:`NOISE_LEVELS_DBFS` when not given)."""
    if not noise:
        return np.zeros(n, np.float32)
    level = dbfs if dbfs is not None else rng.choice(NOISE_LEVELS_DBFS)
    chunk = noise_stretch(noise, n, rng)
    return (chunk * (10 ** (level / 20) / rms(chunk))).astype(np.float32)


def build_stream(
    k: int,
    utts: list,
    duration_s: float,
    noise: list[np.ndarray] | None = None,
    dbfs: float | None = None,
    mixed_formats: bool = True,
) -> StreamAudio:
    """Stream ``k``: utterances in a k-seeded order with 1.0-2.5 s pauses, about ``duration_s`` long."""
    rng = random.Random(1000 + k)
    order = list(range(len(utts)))
    rng.shuffle(order)
    parts = [pause_audio(int(rng.uniform(0.3, 1.0) * RATE), rng, noise, dbfs)]
    refs = []
    spans = []
    total = parts[0].size
    for i in order:
        audio, ref = utts[i]
        if total / RATE > duration_s - 2:
            break
        pause = pause_audio(int(rng.uniform(1.0, 2.5) * RATE), rng, noise, dbfs)
        parts += [audio, pause]
        refs.append(ref)
        spans.append((total, total + audio.size, ref))
        total += audio.size + pause.size
    fmt = FORMATS[k % len(FORMATS)] if mixed_formats else FORMATS[0]
    return StreamAudio(np.clip(np.concatenate(parts), -1.0, 1.0), " ".join(refs), fmt, spans)
