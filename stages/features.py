"""Per-segment features for drift monitoring: what came in (levels, SNR, bandwidth, duration, rate)
and what came out (Whisper's confidences, words per second, empty finals, guard drops).

One module for every path (offline files, live streams, eval): the input features take a
segment's 16 kHz audio, the output features its transcript. Pure numpy.

* ``snr_db``: the speech against the noise *under* it, in the speech band (300-3400 Hz): within
  the voiced span (from the first to the last frame within 15 dB of the segment's loud frames, so
  that the pre-roll and hangover, which hear the room between sentences, are left out), the band
  power of each frequency bin's loud frames (90th percentile over the frames) against its quiet
  ones (10th: the gaps between words and syllables, where a noise bed stays and a quiet room
  falls away). Measured (benchmarks/monitoring.py's streams: held-out corpus utterances with fans
  and traffic at -45 to -30 dBFS in the pauses): 39 +- 6 dB clean, at -20 dB and as 8 kHz audio,
  28 +- 8 / 26 +- 10 / 24 +- 10 dB in 10 / 5 / 0 dB SNR noise beds. Before this the feature set
  the segment's 90th percentile frame level against its 10th over the whole segment, pre-roll
  included: 32 +- 12 dB clean against 19 +- 15 dB at 5 dB SNR, the noise in the pauses as large
  a part of it as the noise bed, and the drift monitor missed the 5 dB bed (issue 26).
* ``low_snr``: 1 for a segment whose ``snr_db`` is under 25 dB (0/1, compared as a rate). The
  speakers and rooms of clean recordings spread ``snr_db`` (33-50 dB per recording on the
  corpus), as far as a noise bed moves it, so the distance of the whole distribution caught a
  5 dB bed in one window of ten; the share of noisy segments separates them: 1.4 % of the
  segments of clean recordings are under 25 dB (2.2 % as 8 kHz audio, 2.3 % at -20 dB), 25 % in
  a 10 dB SNR bed, 55 % at 5 dB, 73 % at 0 dB (benchmarks/drift.py's recordings).
* ``pause_dbfs``: the room between sentences: the median level of the segment's first 256 ms,
  which the VAD's pre-roll (500 ms by default) took from before the speaker started. (The
  quietest frames outside the voiced span did not do: room noise at -30 dBFS lies within the
  voiced span's 15 dB of the speech.)
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
SPEECH_BAND_HZ = (300.0, 3400.0)  # telephone audio keeps it whole
VOICED_DB = 15.0  # the voiced span: frames within this of the loud frames' band level
LOW_SNR_DB = 25.0  # low_snr: a segment under this snr_db
PAUSE_FRAMES = 8  # pause_dbfs: the segment's first 8 frames (256 ms) of pre-roll

INPUT_FEATURES = (
    "duration_s",
    "rms_dbfs",
    "peak_dbfs",
    "clipping_ratio",
    "snr_db",
    "low_snr",
    "pause_dbfs",
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
#: its spread is near 0 and one clipped segment would otherwise score in the tens). Bandwidth: the
#: corpus' wideband recordings roll off anywhere from 6.6 to 8 kHz (by source and microphone),
#: telephone audio at 3.8-3.9 kHz; at 100 Hz, then 500 Hz, a window holding another mix of
#: wideband sources alarmed (issue 26), so 1 kHz.
SCALES = {
    "duration_s": 0.1,
    "rms_dbfs": 1.0,
    "peak_dbfs": 1.0,
    "clipping_ratio": 0.001,
    "snr_db": 1.0,
    "pause_dbfs": 1.0,
    "bandwidth_hz": 1000.0,
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
#: hallucination guard dropped something (the canary's guard-drop gate counts the same); a
#: segment in noise (``low_snr``).
BINARY = ("empty", "guard_drops", "low_snr")


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


def _band_frames(audio: np.ndarray) -> np.ndarray:
    """The speech band's power per bin of 32 ms Hann frames, 16 ms apart (frames x bins)."""
    hop = FRAME // 2
    n = (audio.size - FRAME) // hop + 1
    if n < 1:
        return np.zeros((0, 0))
    idx = np.arange(FRAME)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(audio[idx].astype(np.float64) * np.hanning(FRAME), axis=1)) ** 2
    lo, hi = (round(f * FRAME / SAMPLE_RATE) for f in SPEECH_BAND_HZ)
    return spec[:, lo : hi + 1]


def voiced_span(band: np.ndarray) -> slice:
    """The frames from the first to the last whose band level is within :data:`VOICED_DB` of the
    segment's loud frames (90th percentile)."""
    levels = 10 * np.log10(band.sum(axis=1) + 1e-20)
    loud = np.nonzero(levels > np.percentile(levels, 90) - VOICED_DB)[0]
    return slice(int(loud[0]), int(loud[-1]) + 1)


def speech_snr_db(audio: np.ndarray) -> float:
    """``snr_db`` (see the module): 0 for audio shorter than four frames or silence."""
    band = _band_frames(np.asarray(audio, np.float32).ravel())
    if band.shape[0] < 4 or not band.any():
        return 0.0
    voiced = band[voiced_span(band)]
    loud, quiet = np.percentile(voiced, 90, axis=0).sum(), np.percentile(voiced, 10, axis=0).sum()
    return float(10 * np.log10(max(loud, 1e-20) / max(quiet, 1e-20)))


def pause_dbfs(audio: np.ndarray) -> float:
    """``pause_dbfs`` (see the module)."""
    levels = frame_levels_db(np.asarray(audio, np.float32).ravel()[: PAUSE_FRAMES * FRAME])
    return float(np.median(levels)) if levels.size else SILENCE_DBFS


def input_features(audio: np.ndarray, *, source_rate: int, speech_ratio: float | None = None) -> dict[str, float]:
    """The input features of one segment's 16 kHz mono ``audio``, sent at ``source_rate`` Hz;
    ``speech_ratio`` is the VAD's share of the segment's frames it classified speech (left out
    when not given)."""
    audio = np.asarray(audio, np.float32).ravel()
    stats = level_stats(audio)
    snr = speech_snr_db(audio)
    feats = {
        "duration_s": audio.size / SAMPLE_RATE,
        "rms_dbfs": stats.rms_dbfs,
        "peak_dbfs": stats.peak_dbfs,
        "clipping_ratio": stats.clipped_fraction,
        "snr_db": snr,
        "low_snr": 1.0 if snr < LOW_SNR_DB else 0.0,
        "pause_dbfs": pause_dbfs(audio),
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
