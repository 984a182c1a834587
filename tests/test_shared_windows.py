"""Windows shared across streams (issue 24): several streams' finals in one Whisper window, and no
word passing from one stream's audio into another's transcript.

The pure rule (:func:`~speechpipe.stages.asr.windows.crossings`) on words placed by hand; then the
real model on real speech cut in the middle of a word, so that a word must straddle two streams'
pieces: both are decoded again alone and come out exactly as a call of their own gives them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import SPEECH

from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.pipeline.scheduling.scheduler import transcribe_call
from speechpipe.stages.asr import AudioPiece
from speechpipe.stages.asr.types import Word
from speechpipe.stages.asr.windows import assemble, crossings
from speechpipe.stages.audio import load_audio

SR = 16000


def pieces(*owners: str, seconds: float = 2.0) -> list[AudioPiece]:
    return [AudioPiece(k, 0, np.zeros(int(seconds * SR), np.float32), owner) for k, owner in enumerate(owners)]


def test_a_word_reaching_past_the_middle_of_the_gap_into_another_streams_slot_marks_both():
    window = pieces("a", "b", "b")
    _audio, offsets = assemble(window, 1.0)  # pieces at 0-2, 3-5, 6-8 s; slot bounds at 2.5 and 5.5 s
    inside = Word(1.5, 2.4, " late", 0.9)  # runs into the silence, not past its middle
    assert crossings(window, offsets, [inside]) == ([False, False, False], 0)
    over = Word(1.8, 2.7, " over", 0.9)  # a's word reaching into b's slot
    assert crossings(window, offsets, [over]) == ([True, True, False], 1)
    early = Word(2.3, 3.4, " early", 0.9)  # b's word (its middle is nearer b) from a's slot
    assert crossings(window, offsets, [early, inside]) == ([True, True, False], 1)
    # b's two pieces are one stream's: words move between them as they always did
    assert crossings(window, offsets, [Word(4.6, 6.4, " mine", 0.9)]) == ([False, False, False], 0)
    # one stream's window has no slots to cross
    same = pieces("", "")
    assert crossings(same, assemble(same, 1.0)[1], [Word(1.0, 4.0, " long", 0.9)]) == ([False, False], 0)


@pytest.mark.corpus
def test_two_streams_cut_mid_word_are_each_decoded_again_alone(engine):
    """One utterance cut in the middle of a word and given to two streams, with no silence
    between them: Whisper reads the word across the cut, so the call marks both pieces and
    decodes each alone; each stream gets exactly what a call of its own gives it."""
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    tight = type(engine)(replace(engine.config, gap_s=0.0), model=engine.model)
    [(whole, _run)] = transcribe_call(tight, [AsrJob("x", JobKind.FINAL, [AudioPiece(0, 0, audio)])], 30.0, 0.0, 0.0)
    word = max(whole[0].words[1:-1], key=lambda w: w.end - w.start)  # a long word inside the sentence
    cut = int((word.start + word.end) / 2 * SR)
    a = AsrJob("a", JobKind.FINAL, [AudioPiece(0, 0, audio[:cut])])
    b = AsrJob("b", JobKind.FINAL, [AudioPiece(0, cut, audio[cut:])])
    shared = transcribe_call(tight, [a, b], 30.0, 0.0, 0.0)
    run = shared[0][1]
    assert run.windows[0].pieces == 2 and run.windows[0].crossed == 2 and run.windows[0].crossing_words >= 1
    assert [w.attempt for w in run.windows] == [0, 1, 1]  # the shared pass, then one alone each
    for job, (transcripts, _r) in zip((a, b), shared):
        [(alone, _)] = transcribe_call(tight, [job], 30.0, 0.0, 0.0)
        assert transcripts[0].text == alone[0].text
        assert [w.word for w in transcripts[0].words] == [w.word for w in alone[0].words]


@pytest.mark.corpus
def test_one_streams_pieces_share_a_window_as_before(engine):
    """The same cut within one stream: its own two pieces, no owner to cross, one pass."""
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    tight = type(engine)(replace(engine.config, gap_s=0.0), model=engine.model)
    cut = audio.size // 2
    job = AsrJob("a", JobKind.FINAL, [AudioPiece(0, 0, audio[:cut]), AudioPiece(1, cut, audio[cut:])])
    [(_transcripts, run)] = transcribe_call(tight, [job], 30.0, 0.0, 0.0)
    assert run.windows[0].pieces == 2 and all(w.crossed == 0 for w in run.windows)
