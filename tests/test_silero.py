"""Silero VAD backend: streaming classifier on faster-whisper's bundled ONNX model."""

from __future__ import annotations

import numpy as np
import pytest
from baselines import floor, measured
from conftest import VAD_CLIPS

from speechpipe.pipeline.evaluate.quality.vad_metrics import frame_score, pooled_score, read_segments
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechSegment, VadConfig, VadSegmenter, make_classifier
from speechpipe.stages.vad.silero import FRAME_SAMPLES, SileroClassifier

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

AMI_PAUSES = VAD_CLIPS / "ami-excerpt_pyannote-dev01.wav"
SILERO = VadConfig(backend="silero")


def segments(audio: np.ndarray, config: VadConfig, chunk: int) -> list:
    vad = VadSegmenter(config)
    events = []
    for i in range(0, audio.size, chunk):
        events += vad.feed(audio[i : i + chunk])
    return events + vad.flush()


def test_streaming_probabilities_equal_faster_whispers_batched_call():
    from faster_whisper.vad import get_vad_model

    audio, _ = load_audio(AMI_PAUSES)
    n = audio.size // FRAME_SAMPLES * FRAME_SAMPLES
    batched = get_vad_model()(audio[:n]).reshape(-1)
    clf = SileroClassifier()
    streamed = np.array([clf.probability(audio[i : i + FRAME_SAMPLES]) for i in range(0, n, FRAME_SAMPLES)])
    np.testing.assert_allclose(streamed, batched, atol=1e-5)
    # reset() starts a fresh stream: the same audio gives the same probabilities again.
    clf.reset()
    again = np.array(
        [clf.probability(audio[i : i + FRAME_SAMPLES]) for i in range(0, 20 * FRAME_SAMPLES, FRAME_SAMPLES)]
    )
    np.testing.assert_allclose(again, streamed[:20], atol=1e-6)


def test_config_selects_silero_with_its_threshold():
    clf = make_classifier(VadConfig(backend="silero", threshold=0.7))
    assert isinstance(clf, SileroClassifier)
    assert clf.frame_samples == 512 and clf.threshold == 0.7 and clf.neg_threshold == pytest.approx(0.55)
    assert VadConfig(backend="silero").config_id != VadConfig(backend="webrtc").config_id
    assert VadConfig(backend="silero", threshold=0.7).config_id != VadConfig(backend="silero").config_id
    with pytest.raises(ValueError):
        clf.is_speech(np.zeros(480, dtype=np.float32))


def test_hysteresis_holds_speech_between_thresholds():
    clf = SileroClassifier(threshold=0.5)
    probs = iter([0.2, 0.6, 0.4, 0.3, 0.2])
    clf.probability = lambda frame: next(probs)  # the decision rule alone, on known probabilities
    flags = [clf.is_speech(np.zeros(FRAME_SAMPLES, np.float32)) for _ in range(5)]
    assert flags == [False, True, True, False, False]  # 0.4 >= 0.35 stays speech, 0.3 < 0.35 ends it


def test_frame_f1_on_labelled_clips():
    pairs = []
    for wav in sorted(VAD_CLIPS.glob("*.wav")):
        audio, _ = load_audio(wav)
        segs = [e for e in segments(audio, SILERO, audio.size) if isinstance(e, SpeechSegment)]
        pairs.append(
            (
                [(s.start_s, s.end_s) for s in segs],
                read_segments(wav.with_suffix(".segments.txt")),
                audio.size / SAMPLE_RATE,
            )
        )
    assert len(pairs) == 35
    score = pooled_score(pairs)
    # Silero rejects the MUSAN music and noise that webrtcvad takes for speech.
    assert score.f1 >= floor("vad.silero.f1") and score.f1 > measured("vad.webrtc.f1")
    assert score.precision >= floor("vad.silero.precision")
    assert score.recall >= floor("vad.silero.recall")
    musan = next(p for p, wav in zip(pairs, sorted(VAD_CLIPS.glob("*.wav"))) if wav.name.startswith("musanmix"))
    assert frame_score(*musan).precision >= floor("vad.silero.musan_precision")


def test_chunk_size_independence():
    audio, _ = load_audio(AMI_PAUSES)
    reference = segments(audio, SILERO, SAMPLE_RATE)
    assert sum(isinstance(e, SpeechSegment) for e in reference) >= 3
    for chunk in (160, 511, audio.size):
        events = segments(audio, SILERO, chunk)
        assert [type(e) for e in events] == [type(e) for e in reference]
        for a, b in zip(events, reference):
            assert a.start_sample == b.start_sample
            if isinstance(a, SpeechSegment):
                assert (a.end_sample, a.end_reason, a.speech_ratio) == (b.end_sample, b.end_reason, b.speech_ratio)


def test_a_block_of_frames_in_one_call_equals_frame_by_frame():
    """Offline blocks are classified in one model call; the decisions are those of one call per frame."""
    audio, _ = load_audio(AMI_PAUSES)
    n = audio.size // FRAME_SAMPLES
    frames = audio[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    one_by_one = SileroClassifier()
    block = SileroClassifier()
    assert block.classify(frames) == [one_by_one.is_speech(f) for f in frames]
