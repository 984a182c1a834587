"""ASR engine on the real model: packing, word mapping, hallucination guard, noise."""

from __future__ import annotations

import numpy as np
import pytest
from baselines import wer_ceiling
from conftest import NOISE, SPEECH

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.stages.asr import AsrConfig, AudioPiece, is_hallucination, pack_windows
from speechpipe.stages.asr.packing import release_groups
from speechpipe.stages.audio import load_audio

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

UTTERANCES = [
    "librispeech-dev-clean_1272-128104-0000.wav",
    "ljspeech_LJ001-0002.wav",
    "cmuarctic_aew_a0001.wav",
    "librispeech-test-clean_1089-134691-0000.flac",
]


def test_pack_windows_fills_windows_in_stream_order():
    durations = [20.0, 5.0, 18.0, 4.0, 3.0, 29.5, 31.0, 1.0]
    groups = pack_windows(durations, window_s=24.0, gap_s=0.3)
    assert [i for g in groups for i in g] == list(range(len(durations)))  # neighbours stay neighbours
    for g in groups:
        total = sum(durations[i] for i in g) + 0.3 * (len(g) - 1)
        assert total <= 24.0 or len(g) == 1
    # 20 + 5 is 25.3 s with the gap: 5 opens a window that 18 joins (23.3 s); 4 + 3 fit together;
    # the two longer than the window stand alone, and 1 s cannot follow 31 s.
    assert groups == [[0], [1, 2], [3, 4], [5], [6], [7]]


def test_words_whisper_attached_to_the_one_before_are_joined_to_it():
    """A word without a leading space ("-not" after " S") is part of the word before it in the
    text: the words a client gets are the text's words (tests/test_server.py checks it live)."""
    from speechpipe.stages.asr.types import Word
    from speechpipe.stages.asr.windows import whole_words

    raw = [
        Word(0.0, 0.3, " S", 0.9),
        Word(0.3, 0.6, "-not", 0.4),
        Word(0.7, 1.0, " what", 0.8),
        Word(1.0, 1.2, "'s", 0.7),
    ]
    joined = whole_words(raw)
    assert [w.word for w in joined] == [" S-not", " what's"]
    assert (joined[0].start, joined[0].end, joined[0].probability) == (0.0, 0.6, 0.4)
    assert "".join(w.word for w in joined) == "".join(w.word for w in raw)
    assert whole_words([Word(0.0, 0.2, "Hi", 0.9)]) == [Word(0.0, 0.2, "Hi", 0.9)]  # a first word stays


def test_release_groups_keeps_the_window_still_filling():
    durations = [20.0, 5.0, 18.0, 4.0]
    assert release_groups(durations, 24.0, 0.3, finished=False) == ([[0], [1, 2]], [3])
    assert release_groups(durations, 24.0, 0.3, finished=True) == ([[0], [1, 2], [3]], [])
    assert release_groups([], 24.0, 0.3, finished=False) == ([], [])


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
    [(transcripts, run)] = engine.run([pieces])
    assert len(transcripts) == len(pieces)
    assert run.windows[0].pieces == 4
    for k, (piece, t, ref) in enumerate(zip(pieces, transcripts, refs)):
        assert t.index == piece.index
        assert t.start == pytest.approx(piece.start_s)
        assert t.words, ref
        for w in t.words:
            assert piece.start_s - 5e-4 <= w.start <= w.end <= piece.start_s + piece.duration_s + 5e-4, (w, piece)
        assert score(ref, t.text).wer <= wer_ceiling(f"wer.packed_pieces.{k}"), (ref, t.text)
    all_refs = " ".join(refs)
    assert score(all_refs, " ".join(t.text for t in transcripts)).wer <= wer_ceiling("wer.packed_all")


def test_decodes_that_stop_early_go_on_from_the_same_encoder_output(engine, monkeypatch):
    """Whisper ends packed windows early now and then. Two windows of the four utterances (in
    turn and in reverse) decoded as one batch, each decode cut after its first segment as if
    Whisper had emitted end-of-text there: each continuation transcribes the rest from that
    timestamp, with its own text so far as context, without another encoder pass."""
    from faster_whisper.audio import pad_or_trim

    from speechpipe.stages.asr.windows import assemble

    decoder = engine._decoder()
    model, tok = decoder.model, decoder.tokenizer
    feats, sizes, refs = [], [], []
    for names in (UTTERANCES, UTTERANCES[::-1]):
        pieces, pos = [], 0
        for k, name in enumerate(names):
            audio, _ = load_audio(SPEECH / name)
            pieces.append(AudioPiece(k, pos, audio))
            pos += audio.size
        refs.append([(SPEECH / name).with_suffix(".txt").read_text(encoding="utf-8") for name in names])
        audio, _offsets = assemble(pieces, engine.config.gap_s)
        f = model.feature_extractor(audio)
        sizes.append(min(3000, f.shape[-1] - 1))
        feats.append(pad_or_trim(f[:, : sizes[-1]]))
    encoder_output = model.encode(np.stack(feats))
    runs = []
    for w, (result, avg_logprob, temperature, _ratio) in enumerate(
        decoder._generate_batch(encoder_output, 2, decoder.prompt, decoder.options)
    ):
        tokens = list(result.sequences_ids[0])
        stamps = [i for i, t in enumerate(tokens) if t >= tok.timestamp_begin]
        cut = tokens[: stamps[1] + 1]  # Whisper's first segment, closed by its timestamp
        assert (cut[-1] - tok.timestamp_begin) * model.time_precision < sizes[w] / 100 - 5
        # the first utterance alone: the other three are left for the continuation
        first = tok.decode([t for t in cut if t < tok.eot])
        assert score(refs[w][0], first).wer <= wer_ceiling(f"wer.packed_pieces.{0 if w == 0 else 3}"), first
        runs.append([(cut, result.no_speech_prob, avg_logprob, temperature)])
    assert len(runs[0][0][0]) != len(runs[1][0][0])  # their contexts differ in length

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("a continuation must not encode the window again")

    monkeypatch.setattr(model, "encode", no_encoder)
    decoder._continue(encoder_output, runs, sizes, decoder.prompt, decoder.options)
    for w in range(2):
        assert len(runs[w]) >= 2
        assert runs[w][1][0][0] == runs[w][0][0][-1]  # started where the cut decode ended
        reached = (runs[w][-1][0][-1] - tok.timestamp_begin) * model.time_precision
        assert reached >= sizes[w] / 100 - 1.0  # to the end of the window's audio
        text = " ".join(tok.decode([t for t in run[0] if t < tok.eot]) for run in runs[w])
        last = refs[w][-1]  # the window's last utterance is there
        tail = " ".join(text.split()[-len(last.split()) :])
        assert score(last, tail).wer <= wer_ceiling(f"wer.packed_pieces.{3 if w == 0 else 0}"), text
    # In turn, every utterance comes back. (In reverse, Whisper skips the 2.5 s one in the middle:
    # a decode may pass over a piece, continued or not; the engine retries only what lies after.)
    text = " ".join(tok.decode([t for t in run[0] if t < tok.eot]) for run in runs[0])
    assert score(" ".join(refs[0]), text).wer <= wer_ceiling("wer.packed_all"), text


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
    [(transcripts, _)] = engine.run([[AudioPiece(0, 0, np.zeros(16000 * 3, dtype=np.float32))]])
    assert transcripts[0].text == "" and transcripts[0].words == []


def test_a_short_context_encodes_the_audio_and_the_silence_asked_for(engine):
    """``asr.context_s``: the encoder reads a window's audio and that much silence after it, not
    the full 30 s; the words are still there (what they are is the model's, not asserted)."""
    from dataclasses import replace

    from speechpipe.stages.asr import AsrEngine

    assert AsrConfig().context_s == 7.0  # the default since issue 24
    full = AsrEngine(replace(engine.config, context_s=0.0), model=engine.model)
    assert full._decoder().context_frames(300) == 3000  # 0: Whisper's full window
    short = AsrEngine(replace(engine.config, context_s=7.0), model=engine.model)
    assert short._decoder().context_frames(300) == 1000  # 3 s of audio and 7 s of silence
    assert short._decoder().context_frames(2501) == 3000  # never past the window
    assert short._decoder().context_frames(401) == 1102  # even: the encoder halves it
    # a decode there is bounded by the audio (a loop is cut, not run to 448 tokens), not elsewhere
    prompt = short._decoder().prompt
    assert short._decoder()._bounded(short._decoder().options, 300, prompt).max_new_tokens == 16 + 24
    assert full._decoder()._bounded(full._decoder().options, 300, prompt).max_new_tokens is None
    audio, _ = load_audio(SPEECH / "cmuarctic_aew_a0001.wav")
    [(transcripts, run)] = short.run([[AudioPiece(0, 0, audio)]], resume=False)  # a live call
    assert transcripts[0].words and all(0 <= w.start <= w.end <= audio.size / 16000 for w in transcripts[0].words)
    assert run.windows[0].pieces == 1
    with pytest.raises(ValueError, match="context_s"):
        AsrConfig(context_s=31.0)


def test_a_prefix_is_the_start_of_the_transcript_with_its_words_aligned(engine):
    """``Decoding.prefix`` (a live segment's committed words, issue 27): the transcript begins
    with them as given, they get word times like the words decoded after them, and the decode goes
    on from them; a prefix that is not what was said is kept too (the caller's words), with the
    rest of the audio still transcribed after it. What the model decodes after is not asserted."""
    from speechpipe.stages.asr import Decoding

    audio, _ = load_audio(SPEECH / "jfk_inaugural_ask-not.flac")
    piece = AudioPiece(0, 16000, audio)  # one second into the stream
    [(plain, _)] = engine.run([[piece]], resume=False)
    first = plain[0].text.split()[:3]
    for prefix in (" ".join(first), "Hello there"):
        [(transcripts, _)] = engine.run([[piece]], Decoding(prefix=prefix), resume=False)
        t = transcripts[0]
        assert t.text.startswith(prefix), (prefix, t.text)
        assert len(t.text.split()) > len(prefix.split())  # decoded on after it
        words = t.words[: len(prefix.split())]
        assert " ".join(w.word.strip() for w in words).startswith(prefix)  # its punctuation may follow
        assert all(piece.start_s - 5e-4 <= w.start <= w.end <= piece.start_s + piece.duration_s for w in t.words)
    with pytest.raises(ValueError, match="prefix"):
        Decoding(prefix="x" * 5000)
