"""The offline runner and the `speechpipe transcribe` command on real corpus audio."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from baselines import measured, wer_ceiling
from conftest import NOISE, SAMPLES, SPEECH

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import normalized_words, score
from speechpipe.pipeline.offline import runner as offline
from speechpipe.stages.audio import load_audio, resample

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

SHORT = ["ljspeech_LJ001-0002.wav", "librispeech-dev-clean_1272-128104-0000.wav"]


def ref_words() -> int:
    return sum(len(normalized_words((SPEECH / n.replace(".wav", ".txt")).read_text())) for n in SHORT)


@pytest.fixture()
def dataset(tmp_path):
    """A folder tree with two real utterances (and references), a corrupt file and an empty one."""
    root = tmp_path / "in"
    (root / "nested").mkdir(parents=True)
    shutil.copy(SPEECH / SHORT[0], root / SHORT[0])
    shutil.copy(SPEECH / SHORT[0].replace(".wav", ".txt"), root / SHORT[0].replace(".wav", ".txt"))
    shutil.copy(SPEECH / SHORT[1], root / "nested" / SHORT[1])
    shutil.copy(SPEECH / SHORT[1].replace(".wav", ".txt"), root / "nested" / SHORT[1].replace(".wav", ".txt"))
    (root / "nested" / "corrupt.wav").write_bytes(np.random.default_rng(3).bytes(4000))
    (root / "empty.flac").write_bytes(b"")
    return root


def run(paths, out, engine, **kw):
    return offline.run(paths, out, Config(asr=engine.config), engine=engine, progress=False, **kw)


def test_folder_with_bad_files(dataset, tmp_path, engine):
    out = tmp_path / "out"
    summary = run([dataset], out, engine)
    assert summary.files == 4 and summary.transcribed == 2
    assert sorted(f.file.rsplit("/", 1)[-1] for f in summary.failed) == ["corrupt.wav", "empty.flac"]
    assert all(f.error for f in summary.failed)
    for rel in (SHORT[0], f"nested/{SHORT[1]}"):
        for ext in ("json", "txt", "srt", "vtt"):
            assert (out / f"{rel}.{ext}").is_file()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["files"] == 4
    assert {f["file"].rsplit("/", 1)[-1] for f in doc["failed"]} == {"corrupt.wav", "empty.flac"}
    assert doc["wer"]["ref_words"] == ref_words() and doc["wer"]["wer"] <= wer_ceiling("wer.offline_pair")
    assert doc["audio_s"] == pytest.approx(1.9 + 5.855, abs=0.01)
    assert not list(out.rglob("*.tmp*"))


def test_files_in_parallel_give_the_same_outputs_as_one_after_another(dataset, tmp_path, engine):
    """Two files at a time, each on its own replica of the model (sized from the cores): the same
    outputs and failures as one at a time; the summary lists files in the same order."""
    for k in range(3):  # more files than jobs
        shutil.copy(SPEECH / SHORT[k % 2], dataset / f"copy{k}.wav")
    config, jobs = offline.parallel_config(Config(asr=engine.config), 0, cores=2)
    assert (jobs, config.asr.workers, config.asr.threads) == (2, 2, engine.config.threads)
    one = offline.run([dataset], tmp_path / "one", Config(asr=engine.config), engine=engine, progress=False)
    two = offline.run(
        [dataset], tmp_path / "two", config, progress=False, transcriber=offline.local_transcriber(config, jobs=jobs)
    )
    docs = {}
    for name in ("one", "two"):
        docs[name] = {
            p.relative_to(tmp_path / name).as_posix(): {
                k: v for k, v in json.loads(p.read_text()).items() if k != "wall_s"
            }
            for p in (tmp_path / name).rglob("*.json")
            if p.name != "summary.json"
        }
    assert docs["one"] == docs["two"] and len(docs["two"]) == 5
    assert [f.file for f in one.failed] == [f.file for f in two.failed]
    assert [r["file"] for r in one.per_file] == [r["file"] for r in two.per_file]
    assert two.wer.wer == one.wer.wer
    # a machine of 8 cores: 4 files at a time, 2 threads each
    assert offline.parallel_config(Config(), 0, cores=8)[0].asr.threads == 2


def test_json_schema_and_times(dataset, tmp_path, engine):
    out = tmp_path / "out"
    run([dataset / "nested" / SHORT[1]], out, engine)
    doc = json.loads((out / f"{SHORT[1]}.json").read_text())
    assert doc["file"].endswith(SHORT[1]) and doc["duration"] == pytest.approx(5.855, abs=1e-3)
    assert doc["complete"] is True and doc["sample_rate"] == 16000 and doc["channels"] == 1
    assert doc["vad_config_id"] == Config().vad.config_id and doc["asr_model"] == "tiny.en"
    ref = (SPEECH / SHORT[1].replace(".wav", ".txt")).read_text()
    assert doc["reference"] == ref.strip() and doc["wer"]["wer"] == score(ref, doc["text"]).wer
    prev = 0.0
    for seg in doc["segments"]:
        assert 0.0 <= seg["start"] < seg["end"] <= doc["duration"]
        for w in seg["words"]:
            assert seg["start"] - 1e-3 <= w["start"] <= w["end"] <= seg["end"] + 1e-3
            assert w["start"] >= prev - 1e-3 and 0.0 <= w["probability"] <= 1.0
            assert w["word"] == w["word"].strip() and w["word"]
            prev = w["start"]
    srt = (out / f"{SHORT[1]}.srt").read_text()
    vtt = (out / f"{SHORT[1]}.vtt").read_text()
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    assert vtt.startswith("WEBVTT") and "quilter" in vtt.lower()
    assert (out / f"{SHORT[1]}.txt").read_text().strip().lower().startswith("mr. quilter")


def test_resume_skips_finished_files_and_force_redoes(dataset, tmp_path, engine):
    out = tmp_path / "out"
    run([dataset], out, engine)
    done = out / f"{SHORT[0]}.json"
    stamp = done.stat().st_mtime_ns
    # An interrupted earlier run: a half-written JSON is not taken for finished.
    half = out / "nested" / f"{SHORT[1]}.json"
    half.write_text(half.read_text()[:50])
    second = run([dataset], out, engine)
    assert second.skipped == 1 and second.transcribed == 1 and len(second.failed) == 2
    assert done.stat().st_mtime_ns == stamp
    assert json.loads(half.read_text())["complete"] is True
    assert second.wer is not None and second.wer.ref_words == ref_words()  # skipped files still count
    third = run([dataset], out, engine, force=True)
    assert third.transcribed == 2 and third.skipped == 0
    assert done.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_sample_rate_and_stereo(tmp_path, engine, rate):
    """The same real utterance stored at another rate, in stereo, transcribes like the original."""
    name = "librispeech-test-clean_1089-134686-0000.flac"
    audio, _ = load_audio(SPEECH / name)
    ref = (SPEECH / name).with_suffix(".txt").read_text()
    x = resample(audio, 16000, rate)
    stereo = np.stack([x, 0.6 * x], axis=1)
    path = tmp_path / f"utt_{rate}.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    result = offline.transcribe_file(path, Config(asr=engine.config), engine, reference=ref)
    assert result.sample_rate == rate and result.channels == 2
    assert result.duration == pytest.approx(audio.size / 16000, abs=1e-3)
    assert result.wer.wer <= wer_ceiling(f"wer.resampled.{rate}"), result.text


def test_cli_on_bundled_samples(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["transcribe", str(SAMPLES), "-o", str(out), "--no-progress", "--threads", "2"])
    assert code == 0
    captured = capsys.readouterr()
    assert "WER" in captured.out and "ask not what your country can do for you" in captured.out.lower()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["transcribed"] == 5 and doc["failed"] == []
    assert doc["wer"]["ref_words"] == measured("wer.bundled_samples.ref_words")
    assert doc["wer"]["wer"] <= wer_ceiling("wer.bundled_samples")


def test_cli_exit_code_reports_failures(dataset, tmp_path, capsys):
    code = main(["transcribe", str(dataset / "nested"), "-o", str(tmp_path / "o"), "--no-progress", "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert "corrupt.wav" in err and "1 failed" in err


def test_missing_path_is_reported(tmp_path, engine):
    summary = run([tmp_path / "nope.wav"], tmp_path / "out", engine)
    assert [f.error for f in summary.failed] == ["no such file or directory"]


def test_unloadable_model_is_one_clear_error(tmp_path, capsys):
    code = main(["transcribe", str(SAMPLES / SHORT[0]), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none")])
    assert code == 2
    assert "cannot load ASR model" in capsys.readouterr().err
    assert not (tmp_path / "o" / f"{SHORT[0]}.json").exists()


def test_unloadable_model_is_an_error_even_when_no_file_needs_it(tmp_path, capsys):
    """The model loads while the first file is segmented; a file of noise alone never asks for
    it, and the failed load is still the run's error, not a silent success."""
    noise = NOISE / "esc50_car_horn_2-100648-A-43.wav"
    code = main(["transcribe", str(noise), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none"), "-q"])
    assert code == 2
    assert "cannot load ASR model" in capsys.readouterr().err


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_nan_samples_are_replaced_and_the_words_kept(tmp_path, engine):
    """A float WAV with NaN and Inf samples: they are counted and replaced, and the utterance comes
    out with the words of its clean twin (the resampler would spread one NaN over its filter)."""
    name = "librispeech-test-clean_1089-134686-0000.flac"
    audio, _ = load_audio(SPEECH / name)
    clean_path, bad_path = tmp_path / "clean.wav", tmp_path / "nan.wav"
    sf.write(clean_path, audio, 16000, subtype="FLOAT")
    broken = audio.copy()
    for k in range(11):  # 1,100 bad samples in the first 4 s (as benchmarks/baselines.py builds it)
        broken[2000 + k * 5600 : 2100 + k * 5600] = np.inf if k == 0 else np.nan
    sf.write(bad_path, broken, 16000, subtype="FLOAT")
    config = Config(asr=engine.config)
    clean = offline.transcribe_file(clean_path, config, engine)
    result = offline.transcribe_file(bad_path, config, engine)
    assert result.extra["sanitized_samples"] == 1100 and clean.extra["sanitized_samples"] == 0
    # The filled-in gaps (6 ms each) are not the original audio: Whisper may change a word, no more.
    assert normalized_words(clean.text) and score(clean.text, result.text).wer <= wer_ceiling("wer.nan_twin")
