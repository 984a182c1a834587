"""Raw sample arrays: the stages' sample rate, PCM bytes to float, mono mix-down, and levels in dBFS.

Everything after the resampler works on 16 kHz mono float32 (:data:`SAMPLE_RATE`); levels are
measured here once, for a block (:func:`level_stats`) or accumulated over a stream
(:class:`LevelMeter`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
"""Sample rate (Hz) of everything handed to the VAD and ASR stages."""

CLIP_LEVEL = 0.999
"""Absolute sample value at or above which a float sample counts as clipped."""

SILENCE_DBFS = -120.0
"""Floor reported for digital silence (log of zero)."""

_PCM_WIDTHS = {"pcm_s16le": 2, "pcm_f32le": 4}


@dataclass(frozen=True)
class LevelStats:
    """Signal level of a block of float audio (full scale = 1.0).

    Attributes:
        rms_dbfs: RMS level in dBFS, ``SILENCE_DBFS`` for silence or an empty block.
        peak_dbfs: largest absolute sample in dBFS, same floor.
        clipped_fraction: fraction of samples with ``|x| >= CLIP_LEVEL``.
    """

    rms_dbfs: float
    peak_dbfs: float
    clipped_fraction: float


def to_mono(x: np.ndarray) -> np.ndarray:
    """Return float32 1-D audio: 1-D input as is (cast if needed), 2-D ``(n, ch)`` averaged.

    Raises:
        ValueError: ``x`` is not 1-D or ``(frames, channels)`` with at least one channel.
    """
    a = np.asarray(x)
    if a.ndim == 1:
        return a.astype(np.float32, copy=False)
    if a.ndim == 2 and a.shape[1] > 0:
        if a.shape[1] == 1:
            return a[:, 0].astype(np.float32)
        return a.mean(axis=1, dtype=np.float32)
    raise ValueError(f"expected 1-D or 2-D (frames, channels) audio, got shape {a.shape}")


def pcm_to_float(data: bytes, encoding: str, channels: int) -> np.ndarray:
    """Convert interleaved little-endian PCM bytes to float32 of shape ``(frames, channels)``.

    Args:
        data: raw interleaved samples.
        encoding: ``"pcm_s16le"`` (scaled by 1/32768 to [-1, 1)) or ``"pcm_f32le"`` (as is).
        channels: interleaved channel count, at least 1.

    Raises:
        ValueError: unknown encoding, bad channel count, or a byte count that is not a whole
            number of frames.
    """
    width = _PCM_WIDTHS.get(encoding)
    if width is None:
        raise ValueError(f"unsupported PCM encoding {encoding!r}; expected one of {sorted(_PCM_WIDTHS)}")
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        raise ValueError(
            f"{len(data)} bytes of {encoding} is not a whole number of frames "
            f"({width} bytes x {channels} channels = {frame_bytes} bytes per frame)"
        )
    if encoding == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2") / np.float32(32768.0)
    else:
        # astype copies: frombuffer gives a read-only view of the caller's bytes.
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return samples.reshape(-1, channels)


def sanitize(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Audio every stage can take: samples that are not finite (NaN, Inf) are filled in from their
    finite neighbours (linear interpolation, per channel; zeros if a block has none), and every
    value is kept within [-1, 1]. Returns the float32 array (``x`` itself when nothing needed
    changing) and how many samples were not finite. A client or a file that sends NaN loses those
    samples, not the utterance around them (the resampler would spread one NaN over its filter)."""
    a = np.asarray(x, dtype=np.float32)
    if a.size == 0:
        return a, 0
    finite = np.isfinite(a)
    bad = a.size - int(np.count_nonzero(finite))
    if bad:
        a = a.copy()
        columns = a.reshape(a.shape[0], -1) if a.ndim > 1 else a[:, None]
        ok = finite.reshape(columns.shape)
        idx = np.arange(columns.shape[0])
        for c in range(columns.shape[1]):
            good = ok[:, c]
            if good.all():
                continue
            columns[~good, c] = np.interp(idx[~good], idx[good], columns[good, c]) if good.any() else 0.0
    lo, hi = float(a.min()), float(a.max())
    if lo < -1.0 or hi > 1.0:
        a = np.clip(a, -1.0, 1.0)
    return a, bad


def dbfs(level: float) -> float:
    """An amplitude (full scale = 1.0) in dBFS, floored at :data:`SILENCE_DBFS`."""
    return max(SILENCE_DBFS, 20.0 * math.log10(level)) if level > 0 else SILENCE_DBFS


def level_stats(x: np.ndarray) -> LevelStats:
    """Measure RMS and peak (dBFS, floored at ``SILENCE_DBFS``) and clipping of float audio.

    ``x`` may have any shape; all samples count alike.
    """
    a = np.asarray(x, dtype=np.float32).ravel()
    if a.size == 0:
        return LevelStats(SILENCE_DBFS, SILENCE_DBFS, 0.0)
    mag = np.abs(a)
    rms = math.sqrt(float(np.mean(np.square(a, dtype=np.float64))))
    peak = float(mag.max())
    return LevelStats(
        rms_dbfs=dbfs(rms),
        peak_dbfs=dbfs(peak),
        clipped_fraction=float(np.count_nonzero(mag >= CLIP_LEVEL)) / a.size,
    )


class LevelMeter:
    """Level of a stream, accumulated block by block (constant memory): RMS, peak and clipping of
    every sample seen, whatever the shape of each block."""

    def __init__(self) -> None:
        self.samples = 0
        self._sumsq = 0.0
        self._peak = 0.0
        self._clipped = 0

    def add(self, x: np.ndarray) -> None:
        """Account one block of float audio (any shape)."""
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        hi, lo = float(flat.max()), float(flat.min())
        clipped = int(np.count_nonzero(flat >= CLIP_LEVEL)) if hi >= CLIP_LEVEL else 0
        if lo <= -CLIP_LEVEL:
            clipped += int(np.count_nonzero(flat <= -CLIP_LEVEL))
        self.samples += flat.size
        self._sumsq += float(np.dot(flat, flat))
        self._peak = max(self._peak, hi, -lo)
        self._clipped += clipped

    def stats(self) -> LevelStats:
        """The level of everything added so far (the silence floor when nothing was)."""
        if not self.samples:
            return LevelStats(SILENCE_DBFS, SILENCE_DBFS, 0.0)
        return LevelStats(
            rms_dbfs=dbfs(math.sqrt(self._sumsq / self.samples)),
            peak_dbfs=dbfs(self._peak),
            clipped_fraction=self._clipped / self.samples,
        )
