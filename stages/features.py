"""Per-segment features for drift monitoring: what came in (levels, SNR, bandwidth, duration, rate)
and what came out (Whisper's confidences, words per second, empty finals, guard drops).

One module for every path (offline files, live streams, eval): the input features take a
segment's 16 kHz audio, the output features its transcript. Pure numpy.

* ``snr_db``: the level of the segment's speech (its louder frames) against the level of the
  stream's pauses when given, else against the quietest frames of the segment itself (its
  pre-roll and hangover hear the room).
* ``bandwidth_hz``: the highest frequency at which the mean power spectrum of the segment's louder
  frames is within 60 dB of its peak. On the corpus: 6.6-8 kHz for every wideband recording,
  3.8-3.9 kHz for the same audio sent as 8 kHz telephone audio (a roll-off at 99 % of the energy
  did not separate them: 2.5-6.4 kHz wideband against 2.4-3.4 kHz).
* ``speech_ratio``: the VAD's own share of the segment's frames it classified speech (the VAD
  stage's feature: a noisier room or a changed VAD moves it).
"""

from __future__ import annotations

import numpy as np

from speechpipe.stages.asr.types import Transcript
from speechpipe.stages.pcm import SAMPLE_RATE, SILENCE_DBFS, level_stats

FRAME = 512  # 32 ms at 16 kHz: the frames of the spectrum and of the frame levels
EDGE_DB = 60.0

INPUT_FEATURES = (
    "duration_s",
    "rms_dbfs",
    "peak_dbfs",
    "clipping_ratio",
    "snr_db",
    "bandwidth_hz",
    "speech_ratio",
    "sample_rate",
)
OUTPUT_FEATURES = (
    "avg_logprob",
    "no_speech_prob",
    "word_probability",
    "words_per_s",
    "empty",
    "guard_drops",
    "compression_ratio",
)
#: per quantity, a difference too small to matter, in its own unit: drift scores divide by the
#: baseline's spread but never by less than this (clipping_ratio is 0 in almost every segment, so
#: its spread is near 0 and one clipped segment would otherwise score in the tens).
SCALES = {
    "duration_s": 0.1,
    "rms_dbfs": 1.0,
    "peak_dbfs": 1.0,
    "clipping_ratio": 0.001,
    "snr_db": 1.0,
    "bandwidth_hz": 100.0,
    "speech_ratio": 0.02,
    "avg_logprob": 0.02,
    "no_speech_prob": 0.01,
    "word_probability": 0.01,
    "words_per_s": 0.1,
    "compression_ratio": 0.05,
}
#: features whose values are categories, not quantities.
CATEGORICAL = ("sample_rate",)
#: features that are 0 or 1 per segment (compared as rates): an empty final; a segment where the
#: hallucination guard dropped something (the canary's guard-drop gate counts the same).
BINARY = ("empty", "guard_drops")


def _frames(audio: np.ndarray) -> np.ndarray:
    n = audio.size // FRAME
    return audio[: n * FRAME].reshape(n, FRAME) if n else np.zeros((0, FRAME), np.float32)


def frame_levels_db(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 32 ms frame, in dBFS (floored)."""
    frames = _frames(np.asarray(audio, np.float32))
    if not len(frames):
        return np.zeros(0)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return np.maximum(SILENCE_DBFS, 20 * np.log10(np.maximum(rms, 1e-12)))


def bandwidth_hz(audio: np.ndarray, edge_db: float = EDGE_DB) -> float:
    """The highest frequency at which the mean power spectrum of the louder half of the frames is
    within ``edge_db`` of its peak (0 for silence or audio shorter than a frame)."""
    frames = _frames(np.asarray(audio, np.float32))
    if not len(frames):
        return 0.0
    levels = frame_levels_db(audio)
    loud = frames[levels >= np.median(levels)]
    power = np.mean(np.abs(np.fft.rfft(loud * np.hanning(FRAME), axis=1)) ** 2, axis=0)
    peak = float(power.max())
    if peak <= 0:
        return 0.0
    within = np.nonzero(power >= peak * 10 ** (-edge_db / 10))[0]
    return float(within[-1] * SAMPLE_RATE / FRAME)


def input_features(
    audio: np.ndarray, *, source_rate: int, pause_dbfs: float | None = None, speech_ratio: float | None = None
) -> dict[str, float]:
    """The input features of one segment's 16 kHz mono ``audio``, sent at ``source_rate`` Hz;
    ``speech_ratio`` is the VAD's share of the segment's frames it classified speech (left out
    when not given)."""
    audio = np.asarray(audio, np.float32).ravel()
    stats = level_stats(audio)
    levels = frame_levels_db(audio)
    if levels.size:
        speech = float(np.percentile(levels, 90))
        noise = pause_dbfs if pause_dbfs is not None else float(np.percentile(levels, 10))
        snr = speech - noise
    else:
        snr = 0.0
    feats = {
        "duration_s": audio.size / SAMPLE_RATE,
        "rms_dbfs": stats.rms_dbfs,
        "peak_dbfs": stats.peak_dbfs,
        "clipping_ratio": stats.clipped_fraction,
        "snr_db": snr,
        "bandwidth_hz": bandwidth_hz(audio),
        "sample_rate": float(source_rate),
    }
    if speech_ratio is not None:
        feats["speech_ratio"] = float(speech_ratio)
    return feats


def output_features(transcript: Transcript, duration_s: float) -> dict[str, float]:
    """The output features of one segment's final transcript."""
    words = transcript.words
    empty = not transcript.text.strip()
    return {
        "avg_logprob": transcript.avg_logprob,
        "no_speech_prob": transcript.no_speech_prob,
        "word_probability": float(np.mean([w.probability for w in words])) if words else 0.0,
        "words_per_s": len(words) / duration_s if duration_s > 0 else 0.0,
        "empty": 1.0 if empty else 0.0,
        "guard_drops": 1.0 if transcript.dropped else 0.0,
        "compression_ratio": transcript.compression_ratio,
    }
