"""Audio files and resampling: files in any format and rate in, 16 kHz mono float32 out.

Files are decoded with libsndfile (through :mod:`soundfile`: WAV, FLAC, Ogg, MP3) in bounded
blocks, so memory does not grow with file length until the caller decides to keep the samples.
Resampling uses soxr at HQ quality; :class:`StreamResampler` gives the same output whatever the
chunking of its input, so live input and whole files share one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import soundfile as sf
import soxr

from speechpipe.stages.pcm import SAMPLE_RATE, to_mono

MIN_RATE = 4000
MAX_RATE = 192000


class AudioError(Exception):
    """A file cannot be used as audio; the message names the file and the cause."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, as decoded by libsndfile.

    Attributes:
        path: the path as given.
        sample_rate: native sample rate in Hz.
        channels: number of channels.
        frames: samples per channel.
        duration_s: ``frames / sample_rate``.
        format: container as libsndfile names it (``"WAV"``, ``"FLAC"``, ``"OGG"``, ``"MP3"``...).
        subtype: sample encoding (``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"``, ``"MPEG_LAYER_III"``...).
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str


def _fail(path: str, cause: str) -> AudioError:
    return AudioError(f"{path}: {cause}")


def _decode_error(path: str, exc: Exception, what: str) -> AudioError:
    # libsndfile often leaves the message empty (e.g. "Error opening 'x.wav': "), so prefer the
    # text for its error code.
    detail = (getattr(exc, "error_string", "") or str(exc)).strip()
    detail = detail.removeprefix("Error : ").rstrip(".") or type(exc).__name__
    return _fail(path, f"{what}: {detail}")


def _open(path: str) -> sf.SoundFile:
    """Open ``path`` for reading, turning every failure into an AudioError with a clear cause."""
    if not os.path.exists(path):
        raise _fail(path, "file not found")
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _decode_error(path, exc, "not decodable as audio") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from exc
    if f.format == "WAV" and (short := _wav_shortfall(path)) is not None:
        f.close()
        raise _fail(path, f"truncated: header declares {short[0]} bytes of audio, only {short[1]} present")
    return f


def header(path: str | os.PathLike[str]) -> AudioInfo:
    """Describe a file from its header alone (no decoding): rate, channels, format, and the frame
    count, which is exact for every format but MP3, where it is libsndfile's estimate from the
    bitrate (use :func:`probe` for an exact count, or count the frames while decoding).

    Raises:
        AudioError: the file is missing, empty or not decodable.
    """
    path = os.fspath(path)
    with _open(path) as f:
        return AudioInfo(
            path=path,
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=f.frames,
            duration_s=f.frames / f.samplerate,
            format=f.format,
            subtype=f.subtype,
        )


def _with_frames(info: AudioInfo, frames: int) -> AudioInfo:
    return replace(info, frames=frames, duration_s=frames / info.sample_rate)


def probe(path: str | os.PathLike[str]) -> AudioInfo:
    """Describe an audio file without keeping its samples.

    For MP3 libsndfile's frame count is only an estimate from the bitrate and file size (it was
    0.5 % too long on the corpus MP3), so MP3 files are decoded once, block by block, to count
    frames exactly; other formats are read from the header alone.

    Raises:
        AudioError: the file is missing, empty, not decodable, or holds zero frames.
    """
    p = os.fspath(path)
    info = header(p)
    if info.format == "MP3":
        info = _with_frames(info, sum(len(b) for b in iter_file_blocks(p)))
    if info.frames == 0:
        raise _fail(p, "empty audio (0 frames)")
    return info


def iter_file_blocks(path: str | os.PathLike[str], block_s: float = 5.0) -> Iterator[np.ndarray]:
    """Decode a file block by block at its native rate, never holding the whole file.

    ``block_s`` is checked at call time; the file is opened, and file errors raised, once
    iteration starts.

    Yields:
        float32 arrays of shape ``(n, channels)``, ``n = round(block_s * rate)`` except the last.

    Raises:
        ValueError: ``block_s`` is not positive.
        AudioError: the file cannot be opened, fails to decode part way, ends before the frame
            count in its header (a truncated file), or decodes to zero frames.
    """
    if not block_s > 0:
        raise ValueError(f"block_s must be positive, got {block_s!r}")
    return _blocks(os.fspath(path), block_s)


def _wav_shortfall(path: str) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF/WAVE file's ``data`` chunk when the file ends before
    the size its header declares (libsndfile then reads what is there without a word), else None.
    A size of 0 or 0xFFFFFFFF is a streaming writer's "unknown length", not a truncation."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(12)[:4] != b"RIFF":
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk, length = head[:4], int.from_bytes(head[4:], "little")
            if chunk == b"data":
                present = size - f.tell()
                if length in (0, 0xFFFFFFFF) or length <= present:
                    return None
                return length, present
            f.seek(length + (length & 1), os.SEEK_CUR)


def _blocks(path: str, block_s: float) -> Iterator[np.ndarray]:
    with _open(path) as f:
        block = max(1, round(block_s * f.samplerate))
        # libsndfile's MP3 frame count is an estimate; every other format's is exact.
        declared, exact = f.frames, f.format != "MP3"
        total = 0
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise _decode_error(path, exc, f"decoding failed after {total} frames") from exc
            if len(data) == 0:
                break
            total += len(data)
            yield data
    if total == 0:
        raise _fail(path, "empty audio (0 frames)")
    if exact and total < declared:
        raise _fail(path, f"truncated: header declares {declared} frames, only {total} decoded")


def _check_rate(name: str, rate: int) -> int:
    try:
        value = int(rate)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or value != rate:
        raise ValueError(f"{name} must be a whole number of Hz, got {rate!r}")
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"{name} must be between {MIN_RATE} and {MAX_RATE} Hz, got {rate!r}")
    return value


def _as_mono_chunk(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


class StreamResampler:
    """Resample a mono stream chunk by chunk; the output does not depend on the chunking.

    Feed chunks of any size (including empty) to :meth:`process`, then call :meth:`flush` once
    at the end of the stream: the concatenated output equals one-shot :func:`resample` of the
    whole signal (same soxr HQ filter, delay compensated). Equal rates copy samples through.

    Attributes:
        in_rate: input sample rate in Hz.
        out_rate: output sample rate in Hz.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        """Raises ValueError unless both rates are whole numbers in [MIN_RATE, MAX_RATE] Hz."""
        self.in_rate = _check_rate("in_rate", in_rate)
        self.out_rate = _check_rate("out_rate", out_rate)
        self._soxr = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ")
        )
        self._samples_in = 0
        self._samples_out = 0
        self._flushed = False

    @property
    def samples_in(self) -> int:
        """Samples accepted by :meth:`process` so far."""
        return self._samples_in

    @property
    def samples_out(self) -> int:
        """Samples returned by :meth:`process` and :meth:`flush` so far."""
        return self._samples_out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk of mono audio; returns float32 1-D (possibly empty).

        Raises:
            ValueError: ``x`` is not 1-D.
            RuntimeError: called after :meth:`flush`.
        """
        if self._flushed:
            raise RuntimeError("StreamResampler.process() called after flush(); create a new resampler")
        chunk = _as_mono_chunk(x)
        out = chunk.copy() if self._soxr is None else self._soxr.resample_chunk(chunk)
        self._samples_in += len(chunk)
        self._samples_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End the stream and return the remaining output (empty if already flushed)."""
        if self._flushed or self._soxr is None:
            self._flushed = True
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        out = self._soxr.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._samples_out += len(out)
        return out


def resample(x: np.ndarray, in_rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole float signal in one call (soxr HQ); ``x`` is 1-D or ``(frames, channels)``.

    Returns float32 of the same dimensionality; a copy when the rates are equal.

    Raises:
        ValueError: a rate is out of range or ``x`` is neither 1-D nor 2-D.
    """
    in_rate = _check_rate("in_rate", in_rate)
    out_rate = _check_rate("out_rate", out_rate)
    a = np.asarray(x)
    if a.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or 2-D (frames, channels) audio, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if in_rate == out_rate:
        return a.copy()
    return soxr.resample(a, in_rate, out_rate, quality="HQ")


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, AudioInfo]:
    """Decode a whole file to 16 kHz mono float32.

    Goes through :func:`iter_file_blocks`, :func:`to_mono` and :class:`StreamResampler`, the same
    path as streamed input. The returned info describes the source file, with ``frames`` counted
    while decoding (exact even for MP3).

    Raises:
        AudioError: as :func:`iter_file_blocks`, or a native rate outside [MIN_RATE, MAX_RATE].
    """
    p = os.fspath(path)
    info = header(p)
    try:
        resampler = StreamResampler(info.sample_rate, SAMPLE_RATE)
    except ValueError as exc:
        raise _fail(p, f"unsupported sample rate ({exc})") from exc
    parts = [resampler.process(to_mono(block)) for block in iter_file_blocks(p)]
    parts.append(resampler.flush())
    return np.concatenate(parts), _with_frames(info, resampler.samples_in)
