"""StreamSession: one code path for live and offline."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import SPEECH, VAD_CLIPS

from speechpipe.pipeline.hooks import (
    AsrCompleted,
    AsrJob,
    FinalTranscript,
    JobKind,
    StreamEnded,
    StreamStarted,
    VadOutput,
)
from speechpipe.pipeline.offline.driver import drive, run_jobs
from speechpipe.pipeline.session import SessionError, StreamSession, same_audio
from speechpipe.stages.asr import AudioPiece
from speechpipe.stages.audio import load_audio
from speechpipe.stages.vad import END_SILENCE, SpeechSegment, SpeechStarted, VadConfig

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"  # 44.1 kHz stereo, 24-bit


def vad_events(session: StreamSession, audio: np.ndarray, chunk: int) -> list:
    events = []
    for i in range(0, audio.shape[0], chunk):
        events += session.feed(audio[i : i + chunk])
    return events + session.finish()


def test_chunking_does_not_change_segments_through_resampling():
    audio, rate = sf.read(JFK, dtype="float32", always_2d=True)
    runs = []
    for chunk in (rate // 100, rate, 12345):
        session = StreamSession(VadConfig(), sample_rate=rate, channels=2)
        segs = [e for e in vad_events(session, audio, chunk) if isinstance(e, SpeechSegment)]
        runs.append(segs)
    assert len(runs[0]) >= 1
    for other in runs[1:]:
        assert [(s.start_sample, s.end_sample) for s in other] == [(s.start_sample, s.end_sample) for s in runs[0]]
        for a, b in zip(other, runs[0]):
            assert np.array_equal(a.audio, b.audio)


def test_pcm_bytes_feed_like_arrays():
    audio, rate = sf.read(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav", dtype="int16")
    a = StreamSession(VadConfig(), sample_rate=rate)
    b = StreamSession(VadConfig(), sample_rate=rate)
    ev_a = vad_events(a, audio.astype(np.float32) / 32768.0, 320)
    ev_b = []
    raw = audio.tobytes()
    for i in range(0, len(raw), 640):  # 20 ms frames of s16le
        ev_b += b.feed_pcm(raw[i : i + 640])
    ev_b += b.finish()
    assert [(type(e), e.start_sample) for e in ev_a] == [(type(e), e.start_sample) for e in ev_b]


def test_live_mode_one_job_per_segment_and_offline_packs():
    audio, _ = sf.read(VAD_CLIPS / "ami-excerpt_pyannote-dev01.wav", dtype="float32")
    live = StreamSession(VadConfig(), pack_s=0)
    segs = [e for e in vad_events(live, audio, 1600) if isinstance(e, SpeechSegment)]
    jobs = live.take_jobs()
    assert len(jobs) == len(segs) >= 3 and all(len(j.segments) == 1 and j.kind is JobKind.FINAL for j in jobs)
    assert live.pending == len(segs) and not live.done

    offline = StreamSession(VadConfig(), pack_s=24.0)
    vad_events(offline, audio, 16000)
    packed = offline.take_jobs()
    assert sum(len(j.segments) for j in packed) == len(segs)
    assert len(packed) < len(segs)
    assert all(j.audio_s <= 24.0 for j in packed)


def test_offline_releases_a_window_once_the_next_segment_does_not_fit():
    audio, _ = sf.read(VAD_CLIPS / "ami-excerpt_pyannote-dev01.wav", dtype="float32")
    session = StreamSession(VadConfig(), pack_s=6.0)
    segs = [e for e in session.feed(audio) if isinstance(e, SpeechSegment)]
    early = session.take_jobs()
    assert early, "full windows go out while the stream is still open"
    released = [s.index for j in early for s in j.segments]
    assert released == [s.index for s in segs[: len(released)]]  # in stream order
    assert len(released) < len(segs)  # the window still filling waits for the next segment
    for job in early:
        assert sum(s.duration_s for s in job.segments) + 0.3 * (len(job.segments) - 1) <= 6.0 or len(job.segments) == 1
    segs += [e for e in session.finish() if isinstance(e, SpeechSegment)]
    rest = session.take_jobs()
    assert rest
    assert [s.index for j in early + rest for s in j.segments] == [s.index for s in segs]


def test_bad_audio_is_refused():
    session = StreamSession(VadConfig(), sample_rate=16000, channels=2)
    with pytest.raises(SessionError):
        session.feed(np.zeros((100, 3), dtype=np.float32))
    with pytest.raises(SessionError):
        session.feed_pcm(b"\x00" * 7)  # not a whole stereo s16 frame
    session.finish()
    with pytest.raises(SessionError):
        session.feed(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        StreamSession(VadConfig(), sample_rate=1000)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_event(self, event) -> None:
        match event:
            case StreamStarted():
                self.calls.append("started")
            case VadOutput():
                self.calls.append(type(event.event).__name__)
            case AsrCompleted(run=run):
                assert run is not None and run.ended_ns >= run.started_ns and run.windows
                self.calls.append("asr")
            case FinalTranscript():
                self.calls.append("final")
            case StreamEnded():
                self.calls.append("ended")


def test_drive_yields_finals_and_calls_hooks(engine):
    audio, rate = sf.read(JFK, dtype="float32", always_2d=True)
    hooks = Recorder()
    session = StreamSession(VadConfig(), sample_rate=rate, channels=2, pack_s=24.0, observers=[hooks])
    events = list(drive(session, engine, (audio[i : i + rate] for i in range(0, len(audio), rate))))
    finals = [e for e in events if isinstance(e, FinalTranscript)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert finals and len(starts) >= len(finals)
    assert "ask not what your country can do for you" in " ".join(f.transcript.text for f in finals).lower().replace(
        ",", ""
    )
    assert session.done
    assert hooks.calls[0] == "started" and hooks.calls[-1] == "ended"
    assert hooks.calls.count("final") == len(finals) and "asr" in hooks.calls
    assert hooks.calls.index("asr") < hooks.calls.index("final")


def test_run_jobs_of_several_streams_share_one_call(engine):
    sessions, all_jobs = [], []
    for name in ("ljspeech_LJ001-0002.wav", "cmuarctic_aew_a0001.wav"):
        audio, rate = sf.read(SPEECH / name, dtype="float32")
        s = StreamSession(VadConfig(), sample_rate=rate, pack_s=0)
        s.feed(audio)
        s.finish()
        sessions.append(s)
        all_jobs.append(s.take_jobs())
    flat = [j for jobs in all_jobs for j in jobs]
    results = run_jobs(engine, flat)
    texts = {}
    for job, (transcripts, run) in zip(flat, results):
        session = next(s for s in sessions if s.stream_id == job.stream_id)
        for ev in session.complete(job, transcripts, run):
            texts.setdefault(job.stream_id, []).append(ev.transcript.text)
    a, b = (" ".join(texts[s.stream_id]).lower() for s in sessions)
    assert "comparatively modern" in a and "danger trail" in b  # no words crossed streams
    assert all(s.done for s in sessions)


def test_speculative_job_holds_exactly_the_audio_of_the_segment_that_closes():
    """During the hangover the session predicts the segment's audio; when the pause lasts, the
    prediction is sample for sample the closed segment (so its transcript can be the final)."""
    audio, _ = load_audio(JFK)
    session = StreamSession(pack_s=0)
    predictions: dict[tuple, np.ndarray] = {}
    segments: list[SpeechSegment] = []
    for i in range(0, audio.size, 320):
        segments += [e for e in session.feed(audio[i : i + 320]) if isinstance(e, SpeechSegment)]
        job = session.speculative_job()
        if job is not None:
            p = job.pieces[0]
            predictions[(p.index, p.start_sample, p.start_sample + p.audio.size)] = p.audio
    segments += [e for e in session.finish() if isinstance(e, SpeechSegment)]
    closed_by_silence = [s for s in segments if s.end_reason == END_SILENCE]
    assert closed_by_silence
    for seg in closed_by_silence:
        predicted = predictions[(seg.index, seg.start_sample, seg.end_sample)]
        assert np.array_equal(predicted, seg.audio)
        final = AsrJob("s", JobKind.FINAL, [AudioPiece(seg.index, seg.start_sample, seg.audio)], segments=[seg])
        spec = AsrJob("s", JobKind.SPECULATIVE, [AudioPiece(seg.index, seg.start_sample, predicted)])
        assert same_audio(spec, final)
    # Predictions made before speech resumed do not match any segment: they are never reused.
    assert len(predictions) >= len(closed_by_silence)


class Broken:
    """An observer that raises on every event of ``kinds`` (and records them all)."""

    def __init__(self, *kinds: type) -> None:
        self.kinds = kinds
        self.name = "broken-" + "-".join(k.__name__ for k in kinds)
        self.events: list = []

    def on_event(self, event) -> None:
        self.events.append(event)
        if not isinstance(event, self.kinds):
            return
        raise RuntimeError("broken on purpose")


def test_an_observer_that_raises_changes_no_final_and_no_loss(engine):
    """complete() makes every final whatever its observers do, and abandon() loses every segment
    left and ends the stream: an observer raising on each of those events changes nothing."""
    from speechpipe.pipeline.hooks import FAULTS, FinalLost

    audio, rate = sf.read(JFK, dtype="float32", always_2d=True)
    broken = Broken(FinalTranscript, AsrCompleted, FinalLost, StreamEnded)
    session = StreamSession(VadConfig(), sample_rate=rate, channels=2, observers=[broken])
    for i in range(0, len(audio), rate):
        session.feed(audio[i : i + rate])
    session.finish()
    jobs = session.take_jobs()
    assert len(jobs) >= 3
    first, *rest = jobs
    [(transcripts, run)] = run_jobs(engine, [first])
    finals = session.complete(first, transcripts, run)
    assert [f.segment for f in finals] == first.segments and session.finals_emitted == len(finals)
    with pytest.raises(SessionError):
        session.complete(first, transcripts, run)  # handed back once only: it left the session
    assert session.lose(rest[0], "asr_failed") == rest[0].segments
    pending = session.pending
    assert session.abandon(reason="disconnected") == pending == sum(len(j.segments) for j in rest[1:])
    lost = [e for e in broken.events if isinstance(e, FinalLost)]
    assert [e.segment for e in lost] == [s for j in rest for s in j.segments]
    assert isinstance(broken.events[-1], StreamEnded) and not broken.events[-1].finished
    assert FAULTS.errors()[broken.name] == 1 + len(finals) + len(lost) + 1


def test_observers_get_the_audio_fed_read_only():
    class Keep:
        def __init__(self) -> None:
            self.fed: list = []

        def on_event(self, event) -> None:
            if type(event).__name__ == "AudioFed":
                self.fed.append(event.samples)

    keep = Keep()
    session = StreamSession(VadConfig(), observers=[keep])
    chunk = np.zeros(1600, np.float32)
    session.feed(chunk)
    session.feed_pcm(np.zeros(1600, "<i2").tobytes())
    assert len(keep.fed) == 2 and not any(a.flags.writeable for a in keep.fed)
    assert chunk.flags.writeable  # the caller's own array is left as it was
