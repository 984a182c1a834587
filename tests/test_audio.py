"""Tests for speechpipe.stages.audio on real recordings from the shared corpus (see SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from speechpipe.stages.audio import (
    AudioError,
    AudioInfo,
    StreamResampler,
    iter_file_blocks,
    load_audio,
    probe,
    resample,
)
from speechpipe.stages.pcm import SAMPLE_RATE, level_stats, pcm_to_float, to_mono

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

WAV_16K = "speech/librispeech-test-clean_1995-1837-0001.wav"
FLAC_16K = "speech/librispeech-test-clean_1089-134686-0000.flac"
WAV_22K = "speech/ljspeech_LJ001-0004.wav"
FLAC_STEREO_44K = "speech/jfk_inaugural_ask-not.flac"
MP3_44K = "long/ted_bill-gates_next-epidemic_first-62s.mp3"
ARCTIC_16K = "speech/cmuarctic_aew_a0001.wav"

# The MP3 holds 2375 MPEG-1 Layer III frames of 1152 samples (counted from the frame headers;
# no Xing/LAME header, so nothing is trimmed). libsndfile's header estimate is 2750499 frames.
MP3_FRAMES = 2375 * 1152


def corpus(rel: str) -> Path:
    path = CORPUS / rel
    if not path.is_file():
        pytest.skip(f"corpus file missing: {path}")
    return path


def read16k(rel: str) -> np.ndarray:
    x, rate = sf.read(corpus(rel), dtype="float32")
    assert rate == SAMPLE_RATE and x.ndim == 1
    return x


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    n = min(len(ref), len(test))
    r, t = ref[:n].astype(np.float64), test[:n].astype(np.float64)
    return float(10 * np.log10(np.sum(r**2) / np.sum((r - t) ** 2)))


def lowpass(x: np.ndarray, rate: int, cutoff_hz: float) -> np.ndarray:
    """Brick-wall FFT low-pass (zero every bin above the cutoff)."""
    spec = np.fft.rfft(x.astype(np.float64))
    spec[np.fft.rfftfreq(len(x), 1 / rate) > cutoff_hz] = 0
    return np.fft.irfft(spec, len(x))


# --- probe / load_audio on corpus files -------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "rate", "channels", "fmt", "subtype"),
    [
        (WAV_16K, 16000, 1, "WAV", "PCM_16"),
        (FLAC_16K, 16000, 1, "FLAC", "PCM_16"),
        (WAV_22K, 22050, 1, "WAV", "PCM_16"),
        (FLAC_STEREO_44K, 44100, 2, "FLAC", "PCM_24"),
        (MP3_44K, 44100, 1, "MP3", "MPEG_LAYER_III"),
    ],
)
def test_probe_and_load_corpus_file(rel: str, rate: int, channels: int, fmt: str, subtype: str) -> None:
    path = corpus(rel)
    info = probe(path)
    assert isinstance(info, AudioInfo)
    assert (info.path, info.sample_rate, info.channels) == (str(path), rate, channels)
    assert (info.format, info.subtype) == (fmt, subtype)
    assert info.duration_s == pytest.approx(info.frames / rate)
    decoded = sum(len(b) for b in iter_file_blocks(path))
    assert info.frames == decoded  # exact, MP3 included

    audio, loaded = load_audio(path)
    assert loaded == info
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - info.frames * SAMPLE_RATE / rate) <= 1
    assert np.all(np.isfinite(audio)) and 0 < np.abs(audio).max() <= 1.0


def test_probe_mp3_counts_frames_instead_of_header_estimate() -> None:
    path = corpus(MP3_44K)
    # libsndfile's header estimate (62.37 s) is not what the file decodes to.
    assert sf.info(str(path)).frames != MP3_FRAMES
    info = probe(path)
    assert info.frames == MP3_FRAMES
    assert info.duration_s == pytest.approx(62.041, abs=1e-3)


def test_load_16k_is_the_file_unchanged() -> None:
    audio, _ = load_audio(corpus(FLAC_16K))
    np.testing.assert_array_equal(audio, read16k(FLAC_16K))


def test_load_22k_matches_one_shot_resample() -> None:
    native, rate = sf.read(corpus(WAV_22K), dtype="float32")
    audio, _ = load_audio(corpus(WAV_22K))
    np.testing.assert_allclose(audio, resample(native, rate), rtol=0, atol=1e-6)


def test_load_stereo_24bit_44k_is_downmixed_then_resampled() -> None:
    native, rate = sf.read(corpus(FLAC_STEREO_44K), dtype="float32")
    assert native.shape[1] == 2 and not np.allclose(native[:, 0], native[:, 1])
    audio, _ = load_audio(corpus(FLAC_STEREO_44K))
    np.testing.assert_allclose(audio, resample(native.mean(axis=1), rate), rtol=0, atol=1e-6)


def test_iter_file_blocks_streams_fixed_size_blocks() -> None:
    path = corpus(FLAC_STEREO_44K)
    blocks = list(iter_file_blocks(path, block_s=0.5))
    assert all(b.dtype == np.float32 and b.shape[1] == 2 for b in blocks)
    assert {len(b) for b in blocks[:-1]} == {22050}
    assert 0 < len(blocks[-1]) <= 22050
    whole, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_iter_file_blocks_rejects_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_s"):
        iter_file_blocks(corpus(WAV_16K), block_s=0)


def test_ogg_vorbis_decodes(tmp_path: Path) -> None:
    speech = read16k(WAV_16K)
    path = tmp_path / "speech.ogg"
    sf.write(path, speech, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    audio, info = load_audio(path)
    assert (info.format, info.frames) == ("OGG", len(speech))
    assert len(audio) == len(speech)
    # Vorbis is lossy: measured 24.7 dB on this utterance at libsndfile's default quality
    # (19.8-21.5 dB on two other corpus utterances); silence or misalignment would give ~0 dB.
    assert snr_db(speech, audio) > 20


# --- resampling round trips -------------------------------------------------------------------

# A real 16 kHz utterance is resampled to each rate with soxr, written as a float WAV (so PCM
# quantisation does not mask the resampler), read back through load_audio and compared with the
# original below the band where both soxr HQ filters are flat: 3.6 kHz when the trip goes
# through 8 kHz (nothing above 4 kHz survives), 7 kHz otherwise (the HQ passband ends near
# 7.6 kHz, so full-band SNR only measures how much energy a recording has at 7.6-8 kHz: 6-85 dB
# across the corpus). Measured over all 34 16 kHz corpus utterances: band-limited round-trip
# SNR >= 74.3 dB via 8 kHz and >= 72.8 dB via 22.05/44.1/48 kHz (these two files: 82.6-106.6 dB).
ROUND_TRIP_MIN_SNR_DB = 70.0


@pytest.mark.parametrize("rel", [WAV_16K, ARCTIC_16K])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_round_trip_through_file(tmp_path: Path, rel: str, rate: int) -> None:
    speech = read16k(rel)
    path = tmp_path / f"speech_{rate}.wav"
    sf.write(
        path,
        soxr.resample(speech, SAMPLE_RATE, rate, quality="HQ"),
        rate,
        subtype="FLOAT",
    )

    audio, info = load_audio(path)
    assert info.sample_rate == rate
    assert audio.dtype == np.float32
    assert abs(len(audio) - len(speech)) <= 1

    n = min(len(audio), len(speech))
    cutoff = 3600 if rate == 8000 else 7000
    snr = snr_db(
        lowpass(speech[:n], SAMPLE_RATE, cutoff),
        lowpass(audio[:n], SAMPLE_RATE, cutoff),
    )
    assert snr > ROUND_TRIP_MIN_SNR_DB


def test_round_trip_bound_detects_misalignment() -> None:
    """The SNR bound is meaningful: a one-sample shift of the same audio falls far below it."""
    speech = read16k(WAV_16K)
    shifted = np.concatenate([[0.0], speech[:-1]]).astype(np.float32)
    reference = lowpass(speech, SAMPLE_RATE, 7000)
    assert snr_db(reference, lowpass(shifted, SAMPLE_RATE, 7000)) < 20


def test_stereo_file_downmixes_to_channel_average(tmp_path: Path) -> None:
    speech = read16k(ARCTIC_16K)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.column_stack([speech, 0.25 * speech]), SAMPLE_RATE, subtype="FLOAT")
    audio, info = load_audio(path)
    assert info.channels == 2
    np.testing.assert_allclose(audio, 0.625 * speech, rtol=0, atol=1e-7)


def test_resample_equal_rates_copies() -> None:
    speech = read16k(ARCTIC_16K)
    out = resample(speech, SAMPLE_RATE)
    np.testing.assert_array_equal(out, speech)
    assert not np.shares_memory(out, speech)


def test_to_mono() -> None:
    native, _ = sf.read(corpus(FLAC_STEREO_44K), dtype="float32")
    mono = to_mono(native)
    assert mono.dtype == np.float32 and mono.shape == (len(native),)
    np.testing.assert_allclose(mono, (native[:, 0] + native[:, 1]) / 2, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(to_mono(native[:, :1]), native[:, 0])
    assert to_mono(native[:, 0].astype(np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        to_mono(native[None])


# --- StreamResampler --------------------------------------------------------------------------


def _feed(resampler: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i = [], 0
    for n in sizes:
        out.append(resampler.process(x[i : i + n]))
        i += n
    assert i >= len(x)
    out.append(resampler.flush())
    return np.concatenate(out)


def _random_sizes(total: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        # Zero-size chunks are frequent on purpose.
        sizes.append(0 if rng.random() < 0.2 else int(rng.integers(1, 7000)))
    return sizes


@pytest.mark.parametrize(("rel", "channel"), [(WAV_22K, None), (FLAC_STEREO_44K, 0), (WAV_16K, None)])
@pytest.mark.parametrize("out_rate", [SAMPLE_RATE, 8000])
def test_stream_resampler_is_chunk_independent(rel: str, channel: int | None, out_rate: int) -> None:
    native, rate = sf.read(corpus(rel), dtype="float32")
    x = native if channel is None else np.ascontiguousarray(native[:, channel])

    whole_rs = StreamResampler(rate, out_rate)
    whole = _feed(whole_rs, x, [len(x)])
    assert (whole_rs.samples_in, whole_rs.samples_out) == (len(x), len(whole))
    assert whole.dtype == np.float32 and whole.ndim == 1
    assert abs(len(whole) - len(resample(x, rate, out_rate))) <= 1

    ten_ms = rate // 100
    for sizes in (
        [ten_ms] * (len(x) // ten_ms + 1),
        [rate] * (len(x) // rate + 1),
        _random_sizes(len(x), seed=1234),
    ):
        rs = StreamResampler(rate, out_rate)
        out = _feed(rs, x, sizes)
        assert len(out) == len(whole)
        np.testing.assert_allclose(out, whole, rtol=0, atol=1e-7)
        assert (rs.samples_in, rs.samples_out) == (len(x), len(out))


def test_stream_resampler_matches_one_shot() -> None:
    native, rate = sf.read(corpus(WAV_22K), dtype="float32")
    streamed = _feed(StreamResampler(rate), native, _random_sizes(len(native), seed=7))
    np.testing.assert_allclose(streamed, resample(native, rate), rtol=0, atol=1e-6)


def test_stream_resampler_passthrough_copies() -> None:
    speech = read16k(ARCTIC_16K)
    rs = StreamResampler(SAMPLE_RATE)
    out = rs.process(speech)
    np.testing.assert_array_equal(out, speech)
    assert not np.shares_memory(out, speech)
    assert rs.process(speech[:0]).shape == (0,)
    assert rs.flush().shape == (0,)
    assert (rs.samples_in, rs.samples_out) == (len(speech), len(speech))


@pytest.mark.parametrize("bad", [0, -16000, 3999, 192001, 44100.5, float("nan"), "16000", None, True])
def test_stream_resampler_rejects_bad_rates(bad: object) -> None:
    with pytest.raises(ValueError, match="in_rate"):
        StreamResampler(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_rate"):
        StreamResampler(16000, bad)  # type: ignore[arg-type]


def test_stream_resampler_accepts_whole_float_rates() -> None:
    rs = StreamResampler(44100.0, 16000.0)  # type: ignore[arg-type]
    assert (rs.in_rate, rs.out_rate) == (44100, 16000)
    assert type(rs.in_rate) is int


def test_load_rejects_unsupported_native_rate(tmp_path: Path) -> None:
    speech = read16k(ARCTIC_16K)
    path = tmp_path / "too_slow.wav"
    # The samples are real speech; only the rate in the header is out of range.
    sf.write(path, speech, 2000)
    with pytest.raises(AudioError, match="unsupported sample rate") as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_stream_resampler_rejects_stereo_and_use_after_flush() -> None:
    native, rate = sf.read(corpus(FLAC_STEREO_44K), dtype="float32", frames=4410)
    rs = StreamResampler(rate)
    with pytest.raises(ValueError, match="mono"):
        rs.process(native)
    head = rs.process(native[:, 0])
    tail = rs.flush()
    assert rs.samples_out == len(head) + len(tail)
    assert abs(rs.samples_out - 1600) <= 1
    assert rs.flush().shape == (0,)
    with pytest.raises(RuntimeError, match="flush"):
        rs.process(native[:, 0])


# --- pcm_to_float -----------------------------------------------------------------------------


def test_pcm_s16le_round_trip() -> None:
    ints, _ = sf.read(corpus(WAV_16K), dtype="int16")
    floats = pcm_to_float(ints.astype("<i2").tobytes(), "pcm_s16le", 1)
    assert floats.dtype == np.float32 and floats.shape == (len(ints), 1)
    # Bit-exact: libsndfile scales int16 by 1/32768 too.
    np.testing.assert_array_equal(floats[:, 0], read16k(WAV_16K))


def test_pcm_f32le_round_trip() -> None:
    speech = read16k(FLAC_16K)
    floats = pcm_to_float(speech.astype("<f4").tobytes(), "pcm_f32le", 1)
    np.testing.assert_array_equal(floats[:, 0], speech)
    floats[0, 0] = 1.0  # writable, not a view of the bytes


@pytest.mark.parametrize(
    ("encoding", "dtype", "divisor"),
    [("pcm_s16le", "<i2", 1.0), ("pcm_f32le", "<f4", 32768.0)],
)
def test_pcm_stereo_interleaving(encoding: str, dtype: str, divisor: float) -> None:
    ints, _ = sf.read(corpus(ARCTIC_16K), dtype="int16")
    left, right = ints, ints // 2
    # Frame-major interleaving: L0 R0 L1 R1 ...
    interleaved = np.column_stack([left, right]).astype(np.float64) / divisor
    frames = pcm_to_float(interleaved.astype(dtype).tobytes(), encoding, 2)
    assert frames.shape == (len(ints), 2)
    np.testing.assert_array_equal(frames[:, 0], left / np.float32(32768.0))
    np.testing.assert_array_equal(frames[:, 1], right / np.float32(32768.0))


@pytest.mark.parametrize(
    ("n_bytes", "encoding", "channels"),
    [
        (3, "pcm_s16le", 1),
        (6, "pcm_s16le", 2),
        (6, "pcm_f32le", 1),
        (12, "pcm_f32le", 2),
    ],
)
def test_pcm_partial_frame_raises(n_bytes: int, encoding: str, channels: int) -> None:
    data = corpus(WAV_16K).read_bytes()[44 : 44 + n_bytes]
    with pytest.raises(ValueError, match="whole number of frames"):
        pcm_to_float(data, encoding, channels)


@pytest.mark.parametrize("encoding", ["pcm_s24le", "PCM_S16LE", "mulaw", ""])
def test_pcm_unknown_encoding_raises(encoding: str) -> None:
    with pytest.raises(ValueError, match="unsupported PCM encoding"):
        pcm_to_float(b"\x00\x00\x00\x00", encoding, 1)


def test_pcm_bad_channel_count_raises() -> None:
    with pytest.raises(ValueError, match="channels"):
        pcm_to_float(b"\x00\x00\x00\x00", "pcm_s16le", 0)


# --- AudioError -------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each broken file with the cause its message must give."""
    missing = tmp_path / "missing.wav"
    zero = tmp_path / "zero_bytes.wav"
    zero.write_bytes(b"")
    noise = tmp_path / "random_bytes.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(8000))
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(corpus(FLAC_16K).read_bytes()[:1000])
    header_only = tmp_path / "header_only.wav"
    sf.write(header_only, np.zeros(0, np.float32), SAMPLE_RATE)
    return {
        "missing": (missing, "not found"),
        "zero": (zero, "empty file"),
        "random": (noise, "not decodable"),
        "truncated": (truncated, "not decodable"),
        "header_only": (header_only, "0 frames"),
    }


@pytest.mark.parametrize("case", ["missing", "zero", "random", "truncated", "header_only"])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, cause = _bad_files(tmp_path)[case]
    for call in (probe, load_audio, lambda p: list(iter_file_blocks(p))):
        with pytest.raises(AudioError) as err:
            call(path)
        assert str(path) in str(err.value)
        assert cause in str(err.value)


def test_decoding_error_mid_file_raises_audio_error(tmp_path: Path) -> None:
    data = corpus(FLAC_16K).read_bytes()
    path = tmp_path / "half.flac"
    path.write_bytes(data[: len(data) // 2])
    # The header survives, so probe (header only for FLAC) still reports the full length.
    assert probe(path).frames == sf.info(str(corpus(FLAC_16K))).frames
    blocks = iter_file_blocks(path, block_s=1.0)
    first = next(blocks)  # the intact first half decodes before the error
    assert first.shape == (SAMPLE_RATE, 1)
    with pytest.raises(AudioError, match="decoding failed after") as err:
        list(blocks)
    assert str(path) in str(err.value)
    with pytest.raises(AudioError):
        load_audio(path)


def test_a_wav_cut_short_is_truncated_not_shorter(tmp_path: Path) -> None:
    """libsndfile reads a WAV file that ends before its declared data size as a shorter file; it
    is reported instead (an upload cut off, a copy interrupted), while a streaming writer's
    "unknown length" header is read as it is."""
    data = corpus(WAV_16K).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    assert sf.info(str(path)).frames > 0  # libsndfile itself takes it
    for call in (probe, load_audio, lambda p: list(iter_file_blocks(p))):
        with pytest.raises(AudioError, match="truncated: header declares") as err:
            call(path)
        assert str(path) in str(err.value)
    streamed = bytearray(data)
    at = streamed.index(b"data") + 4
    streamed[at : at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    unknown = tmp_path / "streamed.wav"
    unknown.write_bytes(bytes(streamed))
    assert load_audio(unknown)[0].size == load_audio(corpus(WAV_16K))[0].size


# --- level_stats ------------------------------------------------------------------------------


def test_level_stats_scaling_and_clipping() -> None:
    speech = read16k(WAV_16K)
    full = level_stats(speech)
    half = level_stats(speech * np.float32(0.5))
    assert -60 < full.rms_dbfs < full.peak_dbfs < 0
    assert full.clipped_fraction == 0.0
    assert half.rms_dbfs - full.rms_dbfs == pytest.approx(-6.0206, abs=1e-3)
    assert half.peak_dbfs - full.peak_dbfs == pytest.approx(-6.0206, abs=1e-3)

    clipped = np.clip(speech * np.float32(10), -1, 1)
    stats = level_stats(clipped)
    assert stats.peak_dbfs == 0.0
    assert stats.clipped_fraction == pytest.approx(np.mean(np.abs(speech * 10) >= 0.999))
    assert 0 < stats.clipped_fraction < 1
    assert stats.rms_dbfs > full.rms_dbfs


def test_level_stats_silence_floor() -> None:
    silent = level_stats(np.zeros(1600, np.float32))
    assert (silent.rms_dbfs, silent.peak_dbfs, silent.clipped_fraction) == (
        -120.0,
        -120.0,
        0.0,
    )
    assert level_stats(np.zeros(0, np.float32)).rms_dbfs == -120.0
