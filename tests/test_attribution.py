"""Error attribution on constructed cases where the truth is known, on real corpus audio."""

from __future__ import annotations

import numpy as np
import pytest
from baselines import share_floor
from conftest import SPEECH

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.collector import EvalCollector
from speechpipe.pipeline.evaluate.quality.attribution import ASR, BOUNDARY, VAD_DROPPED, Segments, attribute
from speechpipe.pipeline.evaluate.quality.wer import normalized_words, score
from speechpipe.pipeline.evaluate.quality.word_timing import RawWord, TimedWord, plan_windows, timed_tokens
from speechpipe.pipeline.evaluate.reference_timing import ReferenceTimer, _timed
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.stages.asr import AudioPiece
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"  # three phrases separated by clear pauses
STEW = SPEECH / "librispeech-test-clean_1089-134686-0000.flac"  # one phrase; tiny.en makes a few errors
# The harmful VAD closes a segment at every pause: three segments on JFK.
CHOPPY = Config().with_overrides(
    {"vad.backend": "webrtc", "vad.aggressiveness": 3, "vad.pre_roll_ms": 0, "vad.hangover_ms": 90}
)


def reference(path) -> str:
    return path.with_suffix(".txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def jfk(engine):
    """JFK through the real pipeline with the choppy VAD: audio, reference, reference timing,
    segments and the transcripts of each segment."""
    audio, _ = load_audio(JFK)
    ref = reference(JFK)
    timing = ReferenceTimer(engine).compute(audio, ref)
    collector = EvalCollector()
    result = transcribe_file(JFK, CHOPPY, engine, observers=[collector], reference=ref)
    run = collector.file_run("jfk", audio.size / SAMPLE_RATE, result.text)
    return audio, ref, _timed(timing), run


def hyp_words(text: str, raw: list[RawWord]) -> list[TimedWord]:
    return timed_tokens(raw, normalized_words(text))


def first_ref_word(ref_words: list[TimedWord], seg) -> int:
    mids = [(i, (w.start + w.end) / 2) for i, w in enumerate(ref_words)]
    return next(i for i, m in mids if seg.start <= m < seg.end)


def test_intact_segments_leave_nothing_to_the_vad(jfk):
    _audio, ref, ref_words, run = jfk
    assert len(run.segments) >= 3 and score(ref, run.text).errors == 0
    att = attribute(
        ref,
        run.text,
        ref_words,
        hyp_words(run.text, run.words),
        Segments([(s.index, s.start, s.end) for s in run.segments], run.duration),
    )
    assert att.errors == []
    # Every reference word lies inside a segment: the timing and the segments agree.
    for w in ref_words:
        mid = (w.start + w.end) / 2
        assert any(s.start <= mid <= s.end for s in run.segments), w


def test_one_segment_over_the_whole_file_blames_only_asr(engine):
    audio, _ = load_audio(STEW)
    ref = reference(STEW)
    ref_words = _timed(ReferenceTimer(engine).compute(audio, ref))
    [((tr,), _)] = engine.run([[AudioPiece(0, 0, audio)]])
    text = tr.text
    wer = score(ref, text)
    assert wer.errors > 0  # the file is chosen for tiny.en's mistakes ("flour fattened sauce")
    raw = [RawWord(w.word, w.start, w.end, 0) for w in tr.words]
    att = attribute(
        ref,
        text,
        ref_words,
        hyp_words(text, raw),
        Segments([(0, 0.0, audio.size / SAMPLE_RATE)], audio.size / SAMPLE_RATE),
    )
    assert len(att.errors) == wer.errors
    assert att.counts == {VAD_DROPPED: 0, BOUNDARY: 0, ASR: wer.errors}


def test_cutting_the_first_word_of_every_segment_is_blamed_on_the_vad(jfk, engine):
    audio, ref, ref_words, run = jfk
    pieces, cut_words, intervals = [], [], []
    for seg in run.segments:
        k = first_ref_word(ref_words, seg)
        cut_words.append(k)
        start = ref_words[k].end + 0.01  # the segment now begins just after its first word
        a, b = int(start * SAMPLE_RATE), int(seg.end * SAMPLE_RATE)
        pieces.append(AudioPiece(seg.index, a, audio[a:b]))
        intervals.append((seg.index, a / SAMPLE_RATE, seg.end))
    [(transcripts, _)] = engine.run([pieces])
    text = " ".join(t.text for t in transcripts if t.text)
    raw = [RawWord(w.word, w.start, w.end, t.index) for t in transcripts for w in t.words]
    att = attribute(ref, text, ref_words, hyp_words(text, raw), Segments(intervals, run.duration))
    assert att.errors, "cutting words must cost something"
    assert att.counts[ASR] == 0
    for k in cut_words:
        errs = [e for e in att.errors if e.ref_index == k]
        assert errs and errs[0].category in (VAD_DROPPED, BOUNDARY), (k, ref_words[k])
    # A reference word that no segment covers any more is 'vad_dropped' when deleted.
    assert any(e.category == VAD_DROPPED and e.op == "delete" for e in att.errors)


def test_dropping_a_whole_segment_is_vad_dropped(jfk):
    _audio, ref, ref_words, run = jfk
    dropped = run.segments[1]
    kept = [s for s in run.segments if s is not dropped]
    text = " ".join(s.text for s in kept if s.text)
    raw = [w for w in run.words if w.segment != dropped.index]
    att = attribute(
        ref, text, ref_words, hyp_words(text, raw), Segments([(s.index, s.start, s.end) for s in kept], run.duration)
    )
    inside = [i for i, w in enumerate(ref_words) if dropped.start <= (w.start + w.end) / 2 < dropped.end]
    assert len(inside) >= 3
    assert att.counts == {VAD_DROPPED: len(inside), BOUNDARY: 0, ASR: 0}
    assert sorted(e.ref_index for e in att.errors) == inside
    assert all(e.op == "delete" and e.segment is None for e in att.errors)


def test_forced_alignment_agrees_with_the_transcript_timing(engine):
    audio, _ = load_audio(JFK)
    timing = ReferenceTimer(engine).compute(audio, reference(JFK))
    assert timing["method"] == "forced" and timing["forced_error"] is None
    assert len(timing["words"]) == len(normalized_words(reference(JFK)))
    # The words that differ follow the long pauses, where the transcript pass stretches a word over
    # the silence.
    words = len(timing["words"])
    assert timing["agreement"]["within_tolerance"] >= share_floor("timing.jfk_agreement_within_tolerance", words)
    starts = [w["start"] for w in timing["words"]]
    assert starts == sorted(starts)


# ------------------------------------------------------------------------------- the rules themselves


def test_timed_tokens_share_out_merged_numbers():
    raw = [RawWord(" twenty", 1.0, 1.4, 3), RawWord(" one", 1.4, 1.6, 3), RawWord(" guns", 1.6, 2.0, 3)]
    words = timed_tokens(raw)
    assert [w.word for w in words] == normalized_words("twenty one guns") == ["21", "guns"]
    assert (words[0].start, words[0].end, words[0].source, words[0].segment) == (1.0, 1.6, "merged", 3)
    assert (words[1].start, words[1].end, words[1].source) == (1.6, 2.0, "word")


def test_plan_windows_cut_in_the_widest_pause():
    # Words every 0.5 s for 70 s with one long pause between 20.0 and 21.5 s.
    times = [(t, t + 0.4) for t in np.arange(0.0, 20.0, 0.5)] + [(t, t + 0.4) for t in np.arange(21.5, 70.0, 0.5)]
    plan = plan_windows(times, 70.0, window_s=30.0)
    assert all(b - a <= 30.0 for a, b, _, _ in plan)
    assert plan[0][1] == pytest.approx((19.9 + 21.5) / 2)
    assert plan[-1][1] == 70.0
    assert [p[2] for p in plan][1:] == [p[3] for p in plan][:-1]  # every word in exactly one window


def test_adjacent_errors_are_judged_together():
    ref = "stuff it into you"
    hyp = "stuffard into you"
    ref_words = [
        TimedWord("stuff", 0.36, 0.8),
        TimedWord("it", 0.8, 0.98),
        TimedWord("into", 0.98, 1.26),
        TimedWord("you", 1.26, 1.64),
    ]
    hyp_w = [TimedWord("stuffard", 0.4, 0.9, 0), TimedWord("into", 0.98, 1.26, 0), TimedWord("you", 1.26, 1.64, 0)]
    segs = Segments([(0, 0.4, 3.0)], 3.3)  # the segment starts inside "stuff"
    att = attribute(ref, hyp, ref_words, hyp_w, segs, tolerance=0.25)
    # "it" alone is 0.4 s from the edge, but it went with "stuff" into one garbled word.
    assert [(e.op, e.category) for e in att.errors] == [("substitute", BOUNDARY), ("delete", BOUNDARY)]
    far = Segments([(0, 0.0, 3.3)], 3.3)  # no cut at all: the same errors are the recognizer's
    assert {e.category for e in attribute(ref, hyp, ref_words, hyp_w, far).errors} == {ASR}
