"""VAD segmenter on real audio: labelled clips, chunking, splitting, configuration ids."""

from __future__ import annotations

import numpy as np
import pytest
from baselines import floor
from conftest import SPEECH, VAD_CLIPS

from speechpipe.pipeline.evaluate.quality.vad_metrics import frame_score, pooled_score, read_segments
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import (
    END_MAX_LENGTH,
    END_OF_STREAM,
    END_SILENCE,
    SpeechDiscarded,
    SpeechSegment,
    SpeechStarted,
    VadConfig,
    VadSegmenter,
)

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

AMI_LONG_SPEECH = VAD_CLIPS / "ami-excerpt_pyannote-tst00.wav"  # 29.9 s of nearly continuous speech
AMI_PAUSES = VAD_CLIPS / "ami-excerpt_pyannote-dev01.wav"  # five turns with long pauses


def segment(audio: np.ndarray, config: VadConfig | None = None, chunk: int | None = None) -> list:
    vad = VadSegmenter(config or VadConfig(backend="webrtc"))
    events = []
    step = chunk or audio.size or 1
    for i in range(0, audio.size, step):
        events += vad.feed(audio[i : i + step])
    return events + vad.flush()


def segments_of(events: list) -> list[SpeechSegment]:
    return [e for e in events if isinstance(e, SpeechSegment)]


@pytest.fixture(scope="module")
def labelled_clips():
    clips = []
    for wav in sorted(VAD_CLIPS.glob("*.wav")):
        audio, _ = load_audio(wav)
        clips.append((wav, audio, read_segments(wav.with_suffix(".segments.txt"))))
    assert len(clips) == 35
    return clips


def test_frame_f1_on_labelled_clips(labelled_clips):
    pairs = []
    for wav, audio, labels in labelled_clips:
        segs = segments_of(segment(audio))
        pairs.append(([(s.start_s, s.end_s) for s in segs], labels, audio.size / SAMPLE_RATE))
    score = pooled_score(pairs)
    # Precision is held down by the padding around each segment (pre-roll, post-roll) and by
    # webrtcvad firing on the music and noise of the MUSAN mix; recall is what matters for ASR.
    assert score.f1 >= floor("vad.webrtc.f1")
    assert score.recall >= floor("vad.webrtc.recall")
    assert score.precision >= floor("vad.webrtc.precision")
    # The manually labelled conversational AMI clip with the most speech is segmented almost exactly.
    _wav, audio, labels = next(c for c in labelled_clips if c[0].name.startswith("ami-excerpt_pyannote-dev00"))
    segs = segments_of(segment(audio))
    assert frame_score([(s.start_s, s.end_s) for s in segs], labels, 30.0).f1 >= floor("vad.webrtc.ami_dev00_f1")


@pytest.mark.parametrize("path", [AMI_PAUSES, SPEECH / "librispeech-test-clean_8463-287645-0007.flac"])
def test_chunk_size_independence(path):
    audio, _ = load_audio(path)
    reference = segment(audio, chunk=SAMPLE_RATE)  # 1 s chunks
    rng = np.random.default_rng(7)
    random_chunks = []
    vad = VadSegmenter(VadConfig(backend="webrtc"))
    pos = 0
    while pos < audio.size:
        n = int(rng.integers(0, 2000))
        random_chunks += vad.feed(audio[pos : pos + n])
        pos += n
    random_chunks += vad.flush()
    for events in (segment(audio, chunk=160), segment(audio), random_chunks):  # 10 ms, whole, random
        assert [type(e) for e in events] == [type(e) for e in reference]
        for a, b in zip(events, reference):
            assert a.start_sample == b.start_sample
            if isinstance(a, SpeechSegment):
                assert (a.end_sample, a.end_reason, a.speech_ratio) == (b.end_sample, b.end_reason, b.speech_ratio)
                assert np.array_equal(a.audio, b.audio)


def test_segments_are_sample_exact_and_ordered():
    audio, _ = load_audio(AMI_PAUSES)
    events = segment(audio, chunk=480)
    segs = segments_of(events)
    assert len(segs) >= 3
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert [s.start_sample for s in segs] == [s.start_sample for s in starts][: len(segs)]
    prev_end = 0
    for s in segs:
        assert np.array_equal(s.audio, audio[s.start_sample : s.end_sample])
        assert s.start_sample >= prev_end
        assert s.end_reason in (END_SILENCE, END_OF_STREAM)
        assert 0.0 < s.speech_ratio <= 1.0
        prev_end = s.end_sample
    # Every labelled turn lies inside some segment (within 30 ms).
    for start, end in read_segments(AMI_PAUSES.with_suffix(".segments.txt")):
        assert any(s.start_s <= start + 0.03 and s.end_s >= end - 0.03 for s in segs), (start, end)


def test_max_length_split_at_quietest_frame():
    audio, _ = load_audio(AMI_LONG_SPEECH)
    cfg = VadConfig(backend="webrtc", max_segment_s=8.0, split_search_s=2.0)
    segs = segments_of(segment(audio, cfg, chunk=SAMPLE_RATE // 2))
    assert len(segs) >= 4
    assert all(s.duration_s <= 8.0 + 1e-9 for s in segs)
    splits = [s for s in segs if s.end_reason == END_MAX_LENGTH]
    assert len(splits) >= 3
    frame = VadSegmenter(cfg).frame_samples
    for s in splits:
        nxt = next(n for n in segs if n.index == s.index + 1)
        assert nxt.start_sample == s.end_sample  # no audio lost at a split
        # The limit is the first frame boundary at or past start + 8 s; the cut is the middle of the
        # quietest stream-aligned frame among those starting in the 2 s before it.
        limit = -(-(s.start_sample + 8 * SAMPLE_RATE) // frame) * frame
        starts = range(limit - (2 * SAMPLE_RATE // frame) * frame, limit, frame)
        energies = {a: float(np.mean(audio[a : a + frame] ** 2)) for a in starts}
        quietest = min(energies, key=energies.get)
        assert s.end_sample == quietest + frame // 2


def test_pre_roll_moves_start_earlier():
    audio, _ = load_audio(AMI_PAUSES)
    no_roll = segments_of(segment(audio, VadConfig(backend="webrtc", pre_roll_ms=0)))
    roll = segments_of(segment(audio, VadConfig(backend="webrtc", pre_roll_ms=300)))
    assert len(no_roll) == len(roll)
    for a, b in zip(no_roll, roll):
        # 300 ms earlier, unless the stream start or the previous segment's end is nearer.
        assert b.start_sample == max(a.start_sample - int(0.3 * SAMPLE_RATE), 0, b.start_sample)
        assert a.start_sample - b.start_sample <= int(0.3 * SAMPLE_RATE)
    assert (
        sum(a.start_sample - b.start_sample == int(0.3 * SAMPLE_RATE) for a, b in zip(no_roll, roll)) >= len(roll) - 1
    )


def test_min_speech_discards_short_regions():
    audio, _ = load_audio(AMI_PAUSES)
    events = segment(audio, VadConfig(backend="webrtc", min_speech_ms=60_000))
    assert not segments_of(events)
    discarded = [e for e in events if isinstance(e, SpeechDiscarded)]
    assert discarded and all(d.speech_ms < 60_000 for d in discarded)


def test_silence_gives_no_segments():
    vad = VadSegmenter(VadConfig(backend="webrtc"))
    assert vad.feed(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)) == []
    assert vad.flush() == []


def test_config_id_is_stable_and_versioned():
    a, b = VadConfig(backend="webrtc"), VadConfig(backend="webrtc")
    assert a.config_id == b.config_id and len(a.config_id) == 8
    assert VadConfig(backend="webrtc", aggressiveness=3).config_id != a.config_id
    assert VadConfig(backend="webrtc", hangover_ms=300).config_id != a.config_id
    # Parameters that the webrtc backend ignores do not change its version.
    assert VadConfig(backend="webrtc", threshold=0.7).config_id == a.config_id
    audio, _ = load_audio(AMI_PAUSES)
    assert {s.config_id for s in segments_of(segment(audio, VadConfig(backend="webrtc", aggressiveness=3)))} == {
        VadConfig(backend="webrtc", aggressiveness=3).config_id
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"backend": "webrtc", "frame_ms": 25},
        {"backend": "energy"},
        {"hangover_ms": -1},
        {"max_segment_s": 0.5},
    ],
)
def test_invalid_config_rejected(kwargs):
    with pytest.raises(ValueError):
        VadConfig(**kwargs)
