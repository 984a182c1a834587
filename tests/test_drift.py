"""Per-segment features and drift against a baseline, on real corpus speech with real noise: the
VAD cuts the streams (no model needed), the features and detectors are the production ones."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT, SPEECH

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.monitoring.baseline import build_profile, load_profile, save_profile
from speechpipe.pipeline.monitoring.collector import FeatureCollector
from speechpipe.pipeline.monitoring.drift import (
    MIN_RECORDINGS,
    DriftMonitor,
    drift_score,
    learn_threshold,
    recordings_factor,
    sampling_floor,
)
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.audio import load_audio, resample
from speechpipe.stages.features import bandwidth_hz, input_features

sys.path.insert(0, str(ROOT / "benchmarks"))
from live_streams import build_stream, noises, utterances

pytestmark = pytest.mark.corpus


def segment_features(audio: np.ndarray, rate: int = 16000) -> list[dict]:
    out: list[dict] = []
    session = StreamSession(
        Config().vad, sample_rate=rate, observers=[FeatureCollector(lambda s, i, f: out.append(f), outputs=False)]
    )
    x = audio if rate == 16000 else resample(audio, 16000, rate)
    for i in range(0, x.size, rate // 2):
        session.feed(x[i : i + rate // 2])
        session.take_jobs()
    session.finish()
    session.take_jobs()
    session.close()
    return out


@pytest.fixture(scope="module")
def corpus_streams():
    utts, noise = utterances(), noises()
    return [build_stream(k, utts, 60.0, noise, -45.0, mixed_formats=False).audio for k in range(24)], noise


@pytest.fixture(scope="module")
def profile(corpus_streams):
    streams, _ = corpus_streams
    per_stream = [segment_features(a) for a in streams[:16]]
    segments = [f for s in per_stream for f in s]
    groups = [str(k) for k, s in enumerate(per_stream) for _ in s]
    return build_profile({"default": segments}, window_segments=60, min_segments=40, groups={"default": groups})


def test_input_features_see_telephone_audio_gain_and_noise():
    x, _ = load_audio(SPEECH / "librispeech-test-clean_1089-134686-0000.flac")
    clean = input_features(x, source_rate=16000)
    phone = input_features(resample(resample(x, 16000, 8000), 8000, 16000), source_rate=8000)
    quiet = input_features(x * 0.1, source_rate=16000)
    noise = np.resize(noises()[0], x.size).astype(np.float32)
    noisy_audio = x + noise / np.sqrt(np.mean(noise**2)) * np.sqrt(np.mean(x**2)) * 10 ** (-5 / 20)
    noisy = input_features(noisy_audio, source_rate=16000)
    assert clean["bandwidth_hz"] > 6000 and phone["bandwidth_hz"] < 4000 and phone["sample_rate"] == 8000
    assert quiet["rms_dbfs"] == pytest.approx(clean["rms_dbfs"] - 20, abs=0.01)
    assert quiet["snr_db"] == pytest.approx(clean["snr_db"], abs=0.5)  # the ratio does not change with gain
    assert noisy["snr_db"] < clean["snr_db"] - 10
    assert bandwidth_hz(np.zeros(100, np.float32)) == 0.0


def test_snr_db_hears_a_noise_bed_and_pause_dbfs_the_noise_between_sentences():
    """Noise in the pauses (the VAD's pre-roll and hangover hear it) leaves ``snr_db`` where it
    was and raises ``pause_dbfs``; a bed under the speech lowers ``snr_db`` (issue 26: the old
    ``snr_db`` mixed the two and missed a 5 dB bed)."""
    x, _ = load_audio(SPEECH / "librispeech-test-clean_1089-134686-0000.flac")
    tap, _ = load_audio(ROOT.parent / "shared" / "corpus" / "noise" / "speechcommands_running_tap.wav")
    noise = np.resize(tap[16000 * 10 :], 3 * x.size).astype(np.float64)  # past the clip's quiet start
    noise /= np.sqrt(np.mean(noise**2))
    edge = int(0.5 * 16000)
    pauses = np.r_[noise[:edge] * 10 ** (-30 / 20), x, noise[edge : 2 * edge] * 10 ** (-30 / 20)]
    silent = np.r_[np.zeros(edge), x, np.zeros(edge)]
    speech_rms = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    bed = silent + noise[: silent.size] * speech_rms * 10 ** (-5 / 20)
    clean, room, noisy = (input_features(a.astype(np.float32), source_rate=16000) for a in (silent, pauses, bed))
    assert abs(room["snr_db"] - clean["snr_db"]) < 3
    assert noisy["snr_db"] < clean["snr_db"] - 10
    assert room["pause_dbfs"] > clean["pause_dbfs"] + 20 and room["pause_dbfs"] == pytest.approx(-30, abs=6)


def test_a_baseline_of_few_recordings_does_not_judge_quantities(corpus_streams):
    """Fewer than MIN_RECORDINGS recordings: the quantities are scored, never alarmed on, and the
    monitor says why; rates and categories, whose thresholds come from counting, are judged."""
    streams, _ = corpus_streams
    per = [segment_features(a) for a in streams[: MIN_RECORDINGS - 1]]
    small = build_profile(
        {"default": [f for s in per for f in s]},
        20,
        10,
        groups={"default": [str(k) for k, s in enumerate(per) for _ in s]},
    )
    monitor = DriftMonitor(small, 20, 10)
    for f in segment_features(streams[20] * 0.1, 8000)[:20]:  # quieter and telephone audio
        monitor.add("default", f)
    report = {d.feature: d for d in monitor.report("default")}
    assert not report["rms_dbfs"].judged and not report["rms_dbfs"].alert
    assert report["rms_dbfs"].score > report["rms_dbfs"].threshold  # it would have alarmed
    assert report["sample_rate"].judged and report["sample_rate"].alert
    state = monitor.baseline_state("default")
    assert state["recordings"] == MIN_RECORDINGS - 1 and not state["judged"] and "too small" in state["reason"]
    # a baseline of whole recordings allows for the recordings it has not seen: the fewer, the more
    assert recordings_factor(16) > recordings_factor(40) > recordings_factor(100) > 1.0
    values = np.array([f["rms_dbfs"] for s in per for f in s])
    groups = [str(k) for k, s in enumerate(per) for _ in s]
    assert learn_threshold("numeric", values, 10, groups) > learn_threshold(
        "numeric", values, 10, groups, confidence=None
    )


def test_drift_scores_and_thresholds_from_the_baseline_itself():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 2000)
    threshold = learn_threshold("numeric", base, 50)
    same = [drift_score("numeric", base, rng.normal(0, 1, 50)) for _ in range(200)]
    shifted = drift_score("numeric", base, rng.normal(1.0, 1, 50))
    assert np.mean(np.array(same) > threshold) < 0.02 and shifted > threshold
    assert drift_score("rate", np.array([0.0] * 90 + [1.0] * 10), np.array([1.0] * 5 + [0.0] * 5)) == pytest.approx(0.4)
    # a feature that is ~0 everywhere (clipping) is measured in its scale, not in its tiny spread
    rare = np.array([0.0] * 99 + [1e-5])
    assert drift_score("numeric", rare, np.full(40, 0.002), scale=0.001) == pytest.approx(2.0, rel=0.01)
    assert drift_score("numeric", rare, np.full(40, 0.002)) > 100
    cats = np.array([16000.0] * 10)
    assert drift_score("categorical", cats, cats) == 0.0 and drift_score("categorical", cats, cats / 2) == 1.0


def test_what_the_baseline_never_saw_is_rare_not_impossible():
    """A baseline of 63 segments without an empty final, a clipped sample or a second sample
    rate: a window of 20 with two such segments is chance, with three it has drifted."""
    never = np.zeros(63)
    one_rate = np.full(63, 16000.0)
    assert learn_threshold("rate", never, 20) == pytest.approx(0.1)
    assert drift_score("rate", never, np.r_[np.ones(2), np.zeros(18)]) <= 0.1 + 1e-12
    assert drift_score("rate", never, np.r_[np.ones(3), np.zeros(17)]) > 0.1
    phone = drift_score("categorical", one_rate, np.r_[np.full(2, 8000.0), np.full(18, 16000.0)])
    floor = sampling_floor("categorical", one_rate, 20)
    assert phone <= floor + 1e-12 and floor == learn_threshold("categorical", one_rate, 20)
    assert drift_score("categorical", one_rate, np.r_[np.full(3, 8000.0), np.full(17, 16000.0)]) > phone
    assert sampling_floor("numeric", never, 20) == pytest.approx(0.1)
    # a well-sampled quantity keeps the threshold its resampling gives
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 2000)
    assert learn_threshold("numeric", base, 50) > sampling_floor("numeric", base, 50) == pytest.approx(0.02)


def test_an_alert_clears_only_well_under_its_threshold():
    """Raised above the threshold, held down to ``clear_ratio`` of it: a window hovering at the
    threshold raises one alert, not one per segment."""
    profile = build_profile({"default": [{"empty": 0.0}] * 60}, window_segments=20, min_segments=20)
    monitor = DriftMonitor(profile, 20, 20, clear_ratio=0.5)
    for v in [0.0] * 17 + [1.0] * 3:
        monitor.add("default", {"empty": v})
    seen = []
    for _ in range(20):
        (d,) = monitor.report("default")
        seen.append((round(d.score, 2), round(d.threshold, 2), d.alert))
        monitor.add("default", {"empty": 0.0})  # the empty finals slide out of the window
    assert set(seen[:18]) == {(0.15, 0.1, True)}  # three empty finals in 20: raised
    assert seen[18] == (0.1, 0.1, True)  # two: at the threshold, still raised (without: cleared)
    assert seen[19] == (0.05, 0.1, False)  # one: cleared at half the threshold
    assert DriftMonitor(profile, 20, 20, clear_ratio=1.0).clear_ratio == 1.0


def monitor_run(profile, segments: list[dict]) -> tuple[set[str], int | None, DriftMonitor]:
    monitor = DriftMonitor(profile, 60, 40)
    alerted, first = set(), None
    for k, features in enumerate(segments):
        monitor.add("default", features)
        now = {d.feature for d in monitor.report("default") if d.alert}
        if now and first is None:
            first = k + 1
        alerted |= now
    return alerted, first, monitor


def test_streams_like_the_baseline_do_not_alarm(profile, corpus_streams):
    streams, _ = corpus_streams
    held_out = [f for a in streams[16:] for f in segment_features(a)]
    alerted, _first, monitor = monitor_run(profile, held_out)
    assert len(held_out) >= 60
    assert alerted == set(), {d.feature: (d.score, d.threshold) for d in monitor.report("default")}


def test_telephone_audio_quiet_audio_and_a_noise_bed_alarm_on_their_feature(profile, corpus_streams, tmp_path):
    streams, noise = corpus_streams
    save_profile(profile, tmp_path / "baseline.json")
    profile = load_profile(tmp_path / "baseline.json")
    phone = [f for a in streams[16:] for f in segment_features(a, 8000)]
    quiet = [f for a in streams[16:] for f in segment_features(a * 0.1)]
    bed = np.resize(noise[2], streams[16].size).astype(np.float32)

    def noisy(a: np.ndarray) -> np.ndarray:
        b = np.resize(bed, a.size)
        n = b / np.sqrt(np.mean(b**2)) * np.sqrt(np.mean(a**2)) * 10 ** (-5 / 20)
        return np.clip(a + n, -1, 1)

    noisy_segments = [f for a in streams[16:] for f in segment_features(noisy(a))]
    assert {"bandwidth_hz", "sample_rate"} <= monitor_run(profile, phone)[0]
    assert {"rms_dbfs", "peak_dbfs"} <= monitor_run(profile, quiet)[0]
    assert "snr_db" in monitor_run(profile, noisy_segments)[0]
    with pytest.raises(ValueError, match="not a baseline profile"):
        (tmp_path / "bad.json").write_text("{}")
        load_profile(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"version": 1, "window_segments": 60, "variants": {}}')
    with pytest.raises(ValueError, match="build it again"):
        load_profile(tmp_path / "old.json")


def test_baseline_build_command_profiles_every_variant_and_reports_a_corrupt_file(tmp_path):
    import subprocess

    files = sorted(SPEECH.glob("cmuarctic_*.wav"))[:4]
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "baseline.json"
    cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "baseline", "build", *map(str, files), str(corrupt)]
    cmd += [
        "-o",
        str(out),
        "--window-segments",
        "4",
        "--min-segments",
        "2",
        "--set",
        "variants.loud.vad.backend=webrtc",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "broken.wav" in proc.stderr  # reported, and the rest ran
    profile = load_profile(out)
    assert set(profile["variants"]) == {"default", "loud"}
    default = profile["variants"]["default"]
    assert default["segments"] >= len(files)
    features = default["features"]
    assert features["bandwidth_hz"]["stage"] == "input" and features["avg_logprob"]["stage"] == "output"
    assert features["empty"]["kind"] == "rate" and features["sample_rate"]["kind"] == "categorical"
    assert set(features["rms_dbfs"]["thresholds"]) == {"2", "3", "4"}
    assert len(features["rms_dbfs"]["values"]) == default["segments"]
    # the estimated WER's calibration, from the files with a reference (all four)
    calibration = default["quality"]["calibration"]
    assert calibration["files"] == len(files) and calibration["source"] == "baseline" and calibration["version"]
    assert len(default["quality"]["samples"]) == len(files)


def test_a_server_watching_other_windows_learns_their_thresholds_from_the_baseline(profile):
    """The profile was built for windows of 40 to 60; a server watching windows of 20 to 30
    learns theirs as the build did (per stream), so a window of 20 is not judged against the
    tighter threshold of 40."""
    import copy

    from speechpipe.pipeline.monitoring.baseline import window_sizes, with_thresholds

    assert set(profile["variants"]["default"]["features"]["rms_dbfs"]["thresholds"]) == {"40", "50", "60"}
    wider = with_thresholds(copy.deepcopy(profile), window_sizes(30, 20))
    spec = wider["variants"]["default"]["features"]["rms_dbfs"]
    assert set(spec["thresholds"]) == {"20", "25", "30", "40", "50", "60"}
    assert spec["thresholds"]["20"] > spec["thresholds"]["40"] > 0
    groups = profile["variants"]["default"]["groups"]
    values = np.array(spec["values"])
    assert spec["thresholds"]["20"] == learn_threshold("numeric", values, 20, groups, scale=spec["scale"])
