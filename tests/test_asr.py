"""ASR engine on the real model: packing, word mapping, hallucination guard, noise."""

from __future__ import annotations

import numpy as np
import pytest
from baselines import wer_ceiling
from conftest import NOISE, SPEECH

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.offline import transcribe_file
from speechpipe.stages.asr import AsrConfig, AudioPiece, is_hallucination, pack_windows
from speechpipe.stages.audio import load_audio
from speechpipe.telemetry.wer import score

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

UTTERANCES = [
    "librispeech-dev-clean_1272-128104-0000.wav",
    "ljspeech_LJ001-0002.wav",
    "cmuarctic_aew_a0001.wav",
    "librispeech-test-clean_1089-134691-0000.flac",
]


def test_pack_windows_first_fit_decreasing():
    durations = [20.0, 5.0, 18.0, 4.0, 3.0, 29.5, 31.0]
    groups = pack_windows(durations, window_s=24.0, gap_s=0.3)
    assert sorted(i for g in groups for i in g) == list(range(len(durations)))
    for g in groups:
        assert g == sorted(g)  # stream order inside a window
        total = sum(durations[i] for i in g) + 0.3 * (len(g) - 1)
        assert total <= 24.0 or len(g) == 1
    # Longest first: 18+5 share a window, 4 fits in neither (24.3 s with the gaps) so it opens a
    # third, 3 joins 20; the two longer than the window stand alone.
    assert groups == [[0, 4], [1, 2], [3], [5], [6]]


def test_packed_pieces_get_their_own_words(engine):
    """Four utterances at known stream positions, one Whisper window: every word lands in the
    piece it was spoken in, at stream times inside that piece."""
    pieces, refs = [], []
    pos = 0
    for k, name in enumerate(UTTERANCES):
        audio, _ = load_audio(SPEECH / name)
        pieces.append(AudioPiece(k, pos, audio))
        refs.append((SPEECH / name).with_suffix(".txt").read_text(encoding="utf-8"))
        pos += audio.size + 37 * 16000  # pieces lie far apart in the stream
    assert len(engine.pack(pieces)) == 1
    transcripts, windows = engine.transcribe(pieces)
    assert len(transcripts) == len(pieces)
    assert windows[0].pieces == 4
    for k, (piece, t, ref) in enumerate(zip(pieces, transcripts, refs)):
        assert t.index == piece.index
        assert t.start == pytest.approx(piece.start_s)
        assert t.words, ref
        for w in t.words:
            assert piece.start_s - 5e-4 <= w.start <= w.end <= piece.start_s + piece.duration_s + 5e-4, (w, piece)
        assert score(ref, t.text).wer <= wer_ceiling(f"wer.packed_pieces.{k}"), (ref, t.text)
    all_refs = " ".join(refs)
    assert score(all_refs, " ".join(t.text for t in transcripts)).wer <= wer_ceiling("wer.packed_all")


def test_batched_and_sequential_windows_agree(engine):
    from speechpipe.stages.asr import AsrEngine

    pieces = [AudioPiece(k, k * 10 * 16000, load_audio(SPEECH / n)[0]) for k, n in enumerate(UTTERANCES)]
    groups = [[p] for p in pieces]  # four jobs of one window each
    sequential = AsrEngine(AsrConfig(threads=2, batch_size=1), model=engine.model).transcribe_groups(groups)
    batched = AsrEngine(AsrConfig(threads=2, batch_size=4), model=engine.model).transcribe_groups(groups)
    for k, ((s, _), (b, _)) in enumerate(zip(sequential, batched)):
        assert score(s[0].text, b[0].text).wer <= wer_ceiling(f"wer.batched_vs_sequential.{k}")


def test_guard_rules(engine):
    cfg = engine.config
    assert is_hallucination(cfg, 0.65, -0.7, 1.2)  # suspects silence and unsure of its words
    assert not is_hallucination(cfg, 0.65, -0.2, 1.2)  # confident words over a quiet start
    assert is_hallucination(cfg, 0.1, cfg.min_avg_logprob - 0.1, 1.2)  # very low confidence
    assert is_hallucination(cfg, 0.1, -0.2, cfg.compression_ratio_threshold + 0.1)  # loops
    assert not is_hallucination(cfg, 0.2, -0.3, 1.5)


@pytest.mark.parametrize("path", sorted(NOISE.glob("*.wav")), ids=lambda p: p.stem)
def test_noise_transcribes_to_nothing(engine, path):
    result = transcribe_file(path, Config(asr=engine.config), engine)
    assert result.text == "", result.segments
    assert result.segments == []


def test_engine_handles_silence(engine):
    transcripts, _ = engine.transcribe([AudioPiece(0, 0, np.zeros(16000 * 3, dtype=np.float32))])
    assert transcripts[0].text == "" and transcripts[0].words == []
