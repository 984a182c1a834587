"""The live core without sockets, threads or an event loop: messages and a fake clock in, actions
out. ASR jobs the core submits are run inline on the real model, as an idle scheduler's worker
runs them (``transcribe_call``), on the bundled samples (no corpus needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
from conftest import SAMPLES

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.config import ServerSettings
from speechpipe.pipeline.evaluate.quality.wer import normalized_words, score
from speechpipe.pipeline.hooks import JobKind, SegmentCaptioned
from speechpipe.pipeline.live.actions import Close, DropSide, LiveContext, OfferSide, Promote, Reuse, Send, SubmitFinal
from speechpipe.pipeline.live.captions import erased
from speechpipe.pipeline.live.core import LiveCore, State
from speechpipe.pipeline.protocol import Start
from speechpipe.pipeline.scheduling.scheduler import transcribe_call
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE, sanitize
from speechpipe.stages.vad import VadConfig

JFK = SAMPLES / "jfk_inaugural_ask-not.flac"
FRAME = 320  # 20 ms at 16 kHz


def pcm(audio) -> bytes:
    return (audio.clip(-1, 32767 / 32768) * 32768).astype("<i2").tobytes()


class Harness:
    """Drives a :class:`LiveCore` as its connection would: carries out its actions, keeps a fake
    clock, and answers queued ASR jobs inline on the engine when asked (``run``)."""

    def __init__(self, engine, stream_observers=None, **settings) -> None:
        self.engine = engine
        self.now = 1000.0
        context = LiveContext(
            settings=replace(ServerSettings(), **settings),
            vad=VadConfig(),
            languages=("en",),
            model=engine.model_name,
            variant="default",
            stream_observers=stream_observers,
        )
        self.core = LiveCore("s1", context, self.now)
        self.sent: list[dict] = []
        self.sent_at: list[float] = []
        self.closed: Close | None = None
        self.queued: list = []  # jobs submitted or offered, not answered yet
        self.promoted: list = []
        self.reused: list = []  # speculative jobs that had run when their segment closed
        self.actions: list = []

    def apply(self, actions) -> None:
        self.actions += actions
        dropped = []
        for a in actions:
            if isinstance(a, Send):
                self.sent.append(a.message)
                self.sent_at.append(self.now)
            elif isinstance(a, SubmitFinal | OfferSide):
                if isinstance(a, OfferSide):  # the slot holds one job: a new offer replaces the old
                    dropped += [j for j in self.queued if j.kind is not JobKind.FINAL and j not in self.promoted]
                    self.queued = [j for j in self.queued if j not in dropped]
                self.queued.append(a.job)
            elif isinstance(a, DropSide):
                dropped += [j for j in self.queued if j.kind is not JobKind.FINAL and j not in self.promoted]
                self.queued = [j for j in self.queued if j not in dropped]
            elif isinstance(a, Promote):
                self.promoted.append(a.job)
            elif isinstance(a, Reuse):
                self.reused.append(a.job)
            elif isinstance(a, Close):
                self.closed = a
        for job in dropped:  # the scheduler answers a dropped job with None
            self.apply(self.core.asr_done(job, None, self.now))

    def send(self, message: str | bytes) -> None:
        self.apply(self.core.receive(message, self.now))

    def answer(self, job):
        """The job's (transcripts, run), as the worker's call gives them."""
        [result] = transcribe_call(self.engine, [job], self.engine.config.window_s, 1.0, 3.0)
        return result

    def run(self) -> None:
        """Answer every queued job (an idle worker), in order."""
        while self.queued:
            job = self.queued.pop(0)
            self.apply(self.core.asr_done(job, self.answer(job), self.now))

    def stream(self, audio, *, realtime: bool = True, run_each: bool = True) -> None:
        for i in range(0, audio.size, FRAME):
            if realtime:
                self.now += FRAME / SAMPLE_RATE
            self.send(pcm(audio[i : i + FRAME]))
            if run_each:
                self.run()

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.sent if m["type"] == kind]


@pytest.fixture(scope="module")
def jfk():
    return load_audio(JFK)[0]


def start(**fields) -> str:
    return json.dumps(Start(**fields).to_dict())


def test_a_stream_gets_ready_speech_starts_finals_and_end(engine, jfk):
    h = Harness(engine)
    h.send(start())
    h.stream(jfk)
    h.send(json.dumps({"type": "stop"}))
    h.run()
    types = [m["type"] for m in h.sent]
    assert types[0] == "ready" and types[-1] == "end" and h.closed == Close(P.CLOSE_NORMAL, "end of stream")
    finals = h.of_type("final")
    assert [f["segment"] for f in finals] == sorted(f["segment"] for f in finals)
    assert {s["segment"] for s in h.of_type("speech_start")} == {f["segment"] for f in finals}
    assert h.sent[-1] == {"type": "end", "reason": "stop", "segments": len(finals)}
    text = " ".join(f["text"] for f in finals)
    reference = JFK.with_suffix(".txt").read_text()
    assert normalized_words(text)[:4] == ["and", "so", "my", "fellow"]
    assert score(reference, text).wer < 0.5, text  # the words are the clip's, not another's
    # An idle worker answers the hangover's speculative job before the VAD decides: it is the final
    # of every segment a pause closed (the last one closes at the end of the stream).
    closed_in_pause = [f for f in finals if f["end"] < jfk.size / SAMPLE_RATE]
    assert closed_in_pause and h.core.stats.speculative_used == len(closed_in_pause)
    # each one the scheduler is told of, so that admission counts its call as the final's
    assert len(h.reused) + len(h.promoted) == len(closed_in_pause)
    assert h.of_type("partial"), "partials of the open segment"
    # each partial's committed words lead its line and are never taken back within the segment
    by_segment: dict[int, list[dict]] = {}
    for m in h.of_type("partial"):
        assert m["text"].startswith(m["stable"]), m
        by_segment.setdefault(m["segment"], []).append(m)
    for shown in by_segment.values():
        assert all(b["stable"].startswith(a["stable"]) for a, b in pairwise(shown))
    # a final that did not begin with its segment's committed words is counted
    final_of = {f["segment"]: f["text"] for f in finals}
    broken = sum(
        normalized_words(final_of[k])[: len(normalized_words(shown[-1]["stable"]))]
        != normalized_words(shown[-1]["stable"])
        for k, shown in by_segment.items()
    )
    assert h.core.stats.commits_broken == broken
    # the final is decoded on from the committed words (Whisper's prefix): it begins with them
    # as shown, character for character, unless counted as broken
    kept = [k for k, shown in by_segment.items() if final_of[k].startswith(shown[-1]["stable"])]
    assert len(kept) == len(by_segment) - broken
    assert h.core.state is State.CLOSED


class DisagreeingFinals(Harness):
    """A worker whose finals decoded without a prefix begin with a word nobody said: as if
    Whisper's decode of the whole segment disagreed with the words its partials committed."""

    def answer(self, job):
        transcripts, run = super().answer(job)
        if job.kind is not JobKind.PARTIAL and not job.decoding.prefix:
            transcripts = [replace(t, text="Banana " + t.text) for t in transcripts]
        return transcripts, run


def test_a_final_that_disagrees_with_the_committed_words_is_decoded_again_from_them(engine, jfk):
    h = DisagreeingFinals(engine)
    h.send(start())
    h.stream(jfk)
    h.send(json.dumps({"type": "stop"}))
    h.run()
    last_stable: dict[int, str] = {}
    for m in h.of_type("partial"):
        last_stable[m["segment"]] = m["stable"]
    committed = {k: v for k, v in last_stable.items() if v}
    assert committed, "words were committed"
    finals = {f["segment"]: f["text"] for f in h.of_type("final")}
    # every segment with committed words was decoded again from them and begins with them
    assert h.core.stats.commits_redecoded == len(committed)
    assert all(finals[k].startswith(v) and not finals[k].startswith("Banana") for k, v in committed.items())
    assert h.core.stats.commits_broken == 0
    # the others went out as their one decode gave them
    assert all(finals[k].startswith("Banana") for k in finals if k not in committed)


def test_a_partial_running_when_the_vad_pauses_still_shows_the_first_words(engine, jfk):
    """The hangover's speculative job supersedes the partial in the stream's slot; a partial
    already running finishes all the same, and while its segment has shown nothing yet its
    result is the segment's first words (else a segment the VAD keeps pausing in showed none
    before its end)."""
    h = Harness(engine, partial_first_interval_s=1.5)  # a partial with words in it ("And so my ...")
    h.send(start())
    running = None  # the partial a worker took: a new offer cannot drop it any more
    for i in range(0, jfk.size, FRAME):
        h.now += FRAME / SAMPLE_RATE
        h.send(pcm(jfk[i : i + FRAME]))
        partials = [j for j in h.queued if j.kind is JobKind.PARTIAL]
        if running is None and partials:
            running = partials[0]
            h.queued.remove(running)
        if running is not None and any(j.kind is JobKind.SPECULATIVE for j in h.queued):
            break
    else:
        pytest.fail("no pause in the first segment")
    assert not h.of_type("partial")
    h.apply(h.core.asr_done(running, h.answer(running), h.now))
    shown = h.of_type("partial")
    assert len(shown) == 1 and shown[0]["segment"] == running.pieces[0].index and shown[0]["text"]


def test_each_segment_reports_what_its_captions_cost_as_the_client_saw_them(engine, jfk):
    """The SegmentCaptioned event (speechpipe.partial.* metrics) is what the client saw: its
    partials, the time from speech_start to the first, the characters taken back."""
    caught: list[SegmentCaptioned] = []

    class Catch:
        def on_event(self, event) -> None:
            if isinstance(event, SegmentCaptioned):
                caught.append(event)

    h = Harness(engine, stream_observers=lambda _sid, _attrs: [Catch()])
    h.send(start())
    h.stream(jfk)
    h.send(json.dumps({"type": "stop"}))
    h.run()
    finals = h.of_type("final")
    assert [e.index for e in caught] == [f["segment"] for f in finals]
    for event, final in zip(caught, finals):
        seg = final["segment"]
        at = [(h.sent_at[k], m) for k, m in enumerate(h.sent) if m.get("segment") == seg]
        partials = [m for _t, m in at if m["type"] == "partial"]
        shown = [m["text"] for m in partials] + [final["text"]]
        stable = [m["stable"] for m in partials] + [final["text"]]
        assert event.partials == len(partials) and event.final_chars == len(final["text"])
        assert event.erased_chars == sum(erased(a, b) for a, b in pairwise(shown))
        assert event.stable_erased_chars == sum(erased(a, b) for a, b in pairwise(stable))
        if partials:
            began = next(t for t, m in at if m["type"] == "speech_start")
            first = next(t for t, m in at if m["type"] == "partial")
            assert event.first_partial_s == pytest.approx(first - began)
        else:
            assert event.first_partial_s is None
    assert sum(e.partials for e in caught) == h.core.stats.partials > 0


def test_partials_without_commit_are_the_newest_hypothesis(engine, jfk):
    """``server.partial_commit = false``: the behaviour before issue 27, kept to compare: no word
    is committed, and no final is counted as breaking a commitment."""
    h = Harness(engine, partial_commit=False)
    h.send(start())
    h.stream(jfk)
    h.send(json.dumps({"type": "stop"}))
    h.run()
    partials = h.of_type("partial")
    assert partials and all(m["stable"] == "" for m in partials)
    assert h.core.stats.commits_broken == 0


def test_final_latency_is_from_the_arrival_of_the_segment_end(engine, jfk):
    h = Harness(engine)
    h.send(start())
    arrivals = []  # (seconds of audio received, when)
    for i in range(0, jfk.size, FRAME):
        h.now += FRAME / SAMPLE_RATE
        h.send(pcm(jfk[i : i + FRAME]))
        arrivals.append((min(i + FRAME, jfk.size) / SAMPLE_RATE, h.now))
        h.now += 0.013  # the worker takes fake time to answer
        h.run()
    for k, msg in enumerate(h.sent):
        if msg["type"] != "final":
            continue
        arrived = next(when for received, when in arrivals if received >= msg["end"] - 1e-6)
        assert msg["latency_s"] == pytest.approx(h.sent_at[k] - arrived, abs=1e-3)
        assert msg["latency_s"] > 0


def test_backpressure_stops_reading_and_the_idle_timer(engine, jfk):
    h = Harness(engine, max_queued_finals=1, idle_timeout_s=5.0)
    h.send(start())
    assert h.core.reading and h.core.deadline == h.now + 5.0
    i = 0
    while h.core.reading:
        h.now += FRAME / SAMPLE_RATE
        h.send(pcm(jfk[i : i + FRAME]))
        i += FRAME
        assert i < jfk.size, "no final was queued"
    assert [a for a in h.actions if isinstance(a, SubmitFinal | Promote)]
    assert h.core.deadline is None  # the stream holds the client back: no idle timeout meanwhile
    h.now += 60.0
    assert h.core.tick(h.now) == []
    h.run()
    assert h.core.reading and h.core.deadline == h.now + 5.0  # the idle timer starts again
    assert h.of_type("final")


def test_idle_timeout_ends_the_stream_with_its_error(engine):
    h = Harness(engine, idle_timeout_s=2.0)
    h.send(start())
    h.now += 1.9
    h.apply(h.core.tick(h.now))
    assert h.closed is None
    h.now += 0.2
    h.apply(h.core.tick(h.now))
    assert [m["type"] for m in h.sent] == ["ready", "error", "end"]
    assert h.sent[1]["code"] == "idle_timeout" and h.closed.code == P.ERROR_CLOSE_CODES["idle_timeout"]


def test_drain_deadline_ends_a_stream_whose_finals_never_come(engine, jfk):
    h = Harness(engine, drain_timeout_s=3.0)
    h.send(start())
    h.stream(jfk[: 9 * SAMPLE_RATE], run_each=False)  # the first sentence closes; nothing answered
    h.send(json.dumps({"type": "stop"}))
    assert h.core.state is State.DRAINING and h.closed is None and h.core.deadline == h.now + 3.0
    h.now += 3.0
    h.apply(h.core.tick(h.now))
    assert h.sent[-1]["type"] == "end" and h.closed == Close(P.CLOSE_NORMAL, "end of stream")
    # Not silent: every segment announced gets its final, marked lost, in order.
    finals = h.of_type("final")
    assert [f["segment"] for f in finals] == [s["segment"] for s in h.of_type("speech_start")]
    assert finals and all(f["status"] == "lost" and f["reason"] == "drain_timeout" and not f["text"] for f in finals)
    assert h.core.stats.lost == len(finals)
    assert h.core.release() == 0  # nothing left to lose


def test_errors_before_start_close_at_once(engine):
    for first, code in [
        (b"\x00\x00" * 160, "binary_before_start"),
        (json.dumps({"type": "stop"}), "bad_message"),
        ("{", "bad_json"),
        (start(sample_rate=1000), "unsupported_rate"),
    ]:
        h = Harness(engine)
        h.send(first)
        assert [m["code"] for m in h.sent] == [code]
        assert h.closed.code == P.ERROR_CLOSE_CODES[code] and h.core.state is State.CLOSED
    h = Harness(engine)
    h.apply(h.core.shutdown(h.now))
    assert h.sent[0]["code"] == "shutting_down" and h.closed.code == P.CLOSE_GOING_AWAY


def test_errors_while_streaming_keep_the_audio_received(engine, jfk):
    h = Harness(engine, max_frame_bytes=4096)
    h.send(start())
    h.stream(jfk[: 9 * SAMPLE_RATE])
    h.send(b"\x00" * 8192)
    h.run()
    codes = [m["code"] for m in h.of_type("error")]
    assert codes == ["frame_too_large"] and h.sent[-1]["type"] == "end" and h.sent[-1]["reason"] == "error"
    assert h.of_type("final") and h.closed.code == P.CLOSE_TOO_BIG
    h.send(pcm(jfk[:FRAME]))  # what the client still sends is read and dropped
    assert h.actions[-1] == h.closed

    h = Harness(engine)
    h.send(start())
    h.send(start())
    assert h.of_type("error")[0]["code"] == "already_started" and h.closed.code == P.CLOSE_POLICY


def test_a_speculative_job_dropped_before_promotion_runs_as_a_final(engine, jfk):
    h = Harness(engine, partials=False)
    h.send(start())
    for i in range(0, jfk.size, FRAME):
        h.now += FRAME / SAMPLE_RATE
        h.send(pcm(jfk[i : i + FRAME]))
        if h.promoted:
            break
    (spec,) = h.promoted
    assert spec.kind is JobKind.SPECULATIVE and not [a for a in h.actions if isinstance(a, SubmitFinal)]
    h.queued.remove(spec)
    h.apply(h.core.asr_done(spec, None, h.now))  # the scheduler dropped it just before
    (submitted,) = [a for a in h.actions if isinstance(a, SubmitFinal)]
    assert submitted.job.kind is JobKind.FINAL and submitted.job.segments[0].index == spec.pieces[0].index
    h.run()
    assert h.of_type("final")[0]["segment"] == spec.pieces[0].index
    assert h.core.stats.speculative_used == 1


def test_a_failed_final_is_an_internal_error(engine, jfk):
    h = Harness(engine, speculative=False, partials=False)
    h.send(start())
    h.stream(jfk[: 9 * SAMPLE_RATE], run_each=False)
    job = next(j for j in h.queued if j.kind is JobKind.FINAL)
    h.apply(h.core.asr_failed(job, RuntimeError("CUDA out of memory"), h.now))
    assert h.sent[-1]["code"] == "internal_error" and h.closed.code == P.CLOSE_INTERNAL_ERROR


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_float_frames_with_nan_and_inf_are_repaired_not_fatal(engine, jfk):
    """NaN and infinite samples are repaired (as :func:`~speechpipe.stages.pcm.sanitize` does) and
    the stream goes on: its finals are those of its twin, the same audio with those samples
    repaired by the client, decoded on the same machine. (Not the reference's words: 110 bad
    samples 2.5 s in change the decode, and how differs between CPUs: an AVX2-only AMD EPYC read
    "and so am I" where AVX-512 machines read "and so my fellow".)"""
    broken = jfk.copy()
    broken[16000:16100] = np.nan
    broken[40000:40010] = np.inf

    def run(audio):
        h = Harness(engine)
        h.send(start(encoding="pcm_f32le"))
        for i in range(0, audio.size, FRAME):
            h.now += FRAME / SAMPLE_RATE
            h.send(audio[i : i + FRAME].astype("<f4").tobytes())
            h.run()
        h.send(json.dumps({"type": "stop"}))
        h.run()
        return h

    # the twin: each frame repaired as the server repairs what it is fed, one message at a time
    repaired = [sanitize(broken[i : i + FRAME].reshape(-1, 1))[0].ravel() for i in range(0, broken.size, FRAME)]
    h, twin = run(broken), run(np.concatenate(repaired))
    assert not h.of_type("error") and h.sent[-1]["type"] == "end"
    finals = [(f["segment"], f["text"]) for f in h.of_type("final")]
    assert finals and finals == [(f["segment"], f["text"]) for f in twin.of_type("final")]
    assert normalized_words(" ".join(text for _, text in finals))  # words, not an empty stream
    assert h.core.session.sanitized_samples == 110 and twin.core.session.sanitized_samples == 0


def test_observers_that_raise_or_cannot_be_made_change_nothing_for_the_client(engine, jfk):
    """The same stream with an observer raising on every event, and with a factory of observers
    that raises: the client gets the same messages as with no observer at all."""
    from speechpipe.pipeline.hooks import FAULTS

    class Raises:
        name = "core-raises-always"

        def on_event(self, event) -> None:
            raise RuntimeError("broken on purpose")

    def cannot(_sid, _attrs):
        raise RuntimeError("no observers today")

    runs = {}
    for label, factory in (("none", None), ("raising", lambda _sid, _attrs: [Raises()]), ("factory", cannot)):
        h = Harness(engine, stream_observers=factory)
        h.send(start(partials=False))
        h.stream(jfk)
        h.send(json.dumps({"type": "stop"}))
        h.run()
        runs[label] = [{k: v for k, v in m.items() if k not in ("session", "latency_s")} for m in h.sent]
        assert h.closed == Close(P.CLOSE_NORMAL, "end of stream")
    assert runs["raising"] == runs["none"] == runs["factory"]
    assert FAULTS.errors()["core-raises-always"] > len(jfk) // FRAME  # every event, each counted
