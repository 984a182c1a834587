"""The ASR scheduler: the pure queue's choice of each call (no thread, no model), and the worker
thread running it on the real model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import SPEECH

from speechpipe.pipeline.hooks import AsrJob, JobKind
from speechpipe.pipeline.scheduling.asr_queue import AsrQueue, Ticket
from speechpipe.pipeline.scheduling.scheduler import AsrScheduler
from speechpipe.stages.asr import AudioPiece, Decoding
from speechpipe.stages.audio import load_audio


def job(stream: str, kind: JobKind, audio: np.ndarray, index: int = 0) -> AsrJob:
    return AsrJob(stream, kind, [AudioPiece(index, 0, audio)])


@pytest.mark.corpus
def test_scheduler_order_fairness_and_staleness(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")  # 5.9 s
    piece = audio[: 4 * 16000]
    # Window of 10 s, 1 s between pieces: at most two 4 s pieces per call.
    small = type(engine)(replace(engine.config, window_s=10.0), model=engine.model)
    sched = AsrScheduler(
        small, pack_streams=True, stream_gap_s=1.0, partial_max_age_s=60.0, partial_window_s=10.0, tail_filler_s=0
    )
    left = []
    futures = {
        "A1": sched.submit_final(job("A", JobKind.FINAL, piece, 1), on_leave=lambda: left.append("A1")),
        "A2": sched.submit_final(job("A", JobKind.FINAL, piece, 2)),
        "A3": sched.submit_final(job("A", JobKind.FINAL, piece, 3)),
        "B1": sched.submit_final(job("B", JobKind.FINAL, piece, 1)),
        "Cp": sched.offer_partial(job("C", JobKind.PARTIAL, piece)),
        "Dp": sched.offer_partial(job("D", JobKind.PARTIAL, piece)),
        "As": sched.offer_partial(job("A", JobKind.SPECULATIVE, piece, 4)),
    }
    replaced = sched.offer_partial(job("D", JobKind.PARTIAL, piece))  # replaces D's queued partial
    assert futures["Dp"].result(0) is None  # dropped, not run
    assert sched.depth() == (4, 3)
    sched.start()
    results = {k: f.result(60) for k, f in futures.items() if k != "Dp"}
    replaced_result = replaced.result(60)
    sched.stop(10)
    started = {k: r[1].started_ns for k, r in results.items()}
    calls = sorted(set(started.values()))
    call_of = {k: calls.index(v) for k, v in started.items()}
    # Two streams with finals waiting: they share calls, one per stream per round.
    assert call_of["A1"] == call_of["B1"] == 0
    assert call_of["A2"] == call_of["A3"] == 1
    # Then the speculative job, then partials (never in a call with a final).
    assert call_of["As"] == 2
    assert call_of["Cp"] == 3 and replaced_result[1].started_ns == results["Cp"][1].started_ns
    assert left == ["A1"]
    assert all("Quilter" in r[0][0].text for r in results.values())
    st = sched.stats()
    assert (st.finals, st.speculative, st.partials, st.partials_dropped) == (4, 1, 2, 1)


@pytest.mark.corpus
def test_scheduler_keeps_streams_apart_by_default(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    sched = AsrScheduler(engine, partial_max_age_s=60.0)
    futures = [sched.submit_final(job(s, JobKind.FINAL, audio[: 2 * 16000], i)) for i in range(2) for s in "AB"]
    futures.append(sched.offer_partial(job("C", JobKind.PARTIAL, audio)))
    futures.append(sched.offer_partial(job("D", JobKind.PARTIAL, audio)))
    sched.start()
    runs = [f.result(60) for f in futures]
    sched.stop(10)
    calls: dict[int, set] = {}
    for (stream, _i), r in zip([(s, i) for i in range(2) for s in "AB"] + [("C", 0), ("D", 0)], runs):
        calls.setdefault(r[1].started_ns, set()).add(stream)
    assert all(len(streams) == 1 for streams in calls.values()), calls
    assert sched.stats().mixed_calls == 0 and sched.stats().max_batch == 2  # A's two finals, B's two


@pytest.mark.corpus
def test_scheduler_drops_stale_partials_never_finals(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    now = [100.0]
    sched = AsrScheduler(engine, partial_max_age_s=1.0, clock=lambda: now[0])
    stale = sched.offer_partial(job("A", JobKind.PARTIAL, audio))
    final = sched.submit_final(job("A", JobKind.FINAL, audio))
    now[0] += 1.5  # the partial has waited longer than partial_max_age_s
    sched.start()
    assert final.result(60)[0][0].text
    assert stale.result(60) is None
    sched.stop(10)
    assert sched.stats().partials_dropped == 1


# -- the queue alone: what each call takes ----------------------------------------------------------


def ticket(stream: str, kind: JobKind, seconds: float, submitted: float = 0.0, index: int = 0) -> Ticket:
    piece = AudioPiece(index, 0, np.zeros(int(seconds * 16000), np.float32))
    return Ticket(AsrJob(stream, kind, [piece]), submitted, kind)


def streams_of(batch: list[Ticket]) -> list[str]:
    return [t.stream_id for t in batch]


def test_queue_serves_finals_round_robin_then_speculative_then_partials():
    q = AsrQueue(budget_s=10.0, gap_s=1.0, partial_max_age_s=60.0)
    a1, a2, a3 = (ticket("A", JobKind.FINAL, 4.0, index=i) for i in range(3))
    b1 = ticket("B", JobKind.FINAL, 4.0)
    for t in (a1, a2, a3, b1):
        q.add_final(t)
    spec = ticket("C", JobKind.SPECULATIVE, 2.0)
    part = ticket("D", JobKind.PARTIAL, 2.0)
    q.offer_side(spec)
    q.offer_side(part)
    assert q.depth() == (4, 2)
    assert q.pick(0.0) == [a1, a2]  # two 4 s finals and a 1 s gap fit a 10 s window; not a third
    assert q.pick(0.0) == [b1]  # then the next stream in round-robin order
    assert q.pick(0.0) == [a3]
    assert q.pick(0.0) == [spec]  # no final waits: speculative before partials
    q.partials_after = 5.0
    assert q.pick(4.9) == []  # partials rest after a call
    assert q.pick(5.0) == [part]
    assert q.depth() == (0, 0) and q.stats.partials_dropped == 0


def test_queue_packs_streams_only_when_asked_and_under_backlog():
    q = AsrQueue(budget_s=10.0, gap_s=1.0, pack_streams=True, pack_backlog=2)
    tickets = [ticket(s, JobKind.FINAL, 2.5, index=i) for i in range(2) for s in "AB"]
    for t in tickets:
        q.add_final(t)
    first = q.pick(0.0)
    assert streams_of(first) == ["A", "B", "A"]  # one per stream per round, while they fit
    assert streams_of(q.pick(0.0)) == ["B"]


def test_a_job_decoded_on_from_committed_words_holds_its_window_alone():
    """A job with a prefix (its segment's committed words, issue 27): the prefix is the start of the
    window's transcript, so no other job shares its window, neither the stream's own final
    before it nor another stream's partial packed with it."""
    q = AsrQueue(budget_s=10.0, gap_s=1.0, pack_streams=True, pack_backlog=1, partial_max_age_s=60.0)
    plain = ticket("A", JobKind.FINAL, 2.0, index=0)
    committed = ticket("A", JobKind.FINAL, 2.0, index=1)
    committed.job.decoding = Decoding(prefix="and so my fellow")
    for t in (plain, committed):
        q.add_final(t)
    assert q.pick(0.0) == [plain]  # it would have fit the window: held apart by its prefix
    assert q.pick(0.0) == [committed]
    parts = [ticket(s, JobKind.PARTIAL, 1.0) for s in "BCD"]
    parts[1].job.decoding = Decoding(prefix="ask not")
    for t in parts:
        q.offer_side(t)
    assert streams_of(q.pick(0.0)) == ["B", "D"]  # packed, without C's
    assert q.pick(0.0) == [parts[1]]


def test_queue_slot_replaces_drops_stale_and_promotes():
    q = AsrQueue(budget_s=10.0, gap_s=1.0, partial_max_age_s=2.0)
    old = ticket("A", JobKind.PARTIAL, 1.0, submitted=0.0)
    new = ticket("A", JobKind.PARTIAL, 1.5, submitted=0.5)
    q.offer_side(old)
    q.offer_side(new)  # one slot per stream: the queued one is dropped
    assert old.future.result(0) is None and q.stats.partials_dropped == 1
    assert q.pick(2.6) == [] and new.future.result(0) is None  # waited 2.1 s > 2 s: stale
    spec = ticket("B", JobKind.SPECULATIVE, 2.0)
    q.offer_side(spec)
    assert q.promote(spec.future) and spec.kind is JobKind.FINAL
    assert q.depth() == (1, 0) and q.pick(0.0) == [spec]
    assert not q.promote(ticket("C", JobKind.SPECULATIVE, 1.0).future)  # not queued


def test_queue_cancel_forgets_a_stream_and_tells_telemetry():
    q = AsrQueue(budget_s=10.0, gap_s=1.0)
    left = []
    final = ticket("A", JobKind.FINAL, 1.0)
    final.on_leave = lambda: left.append("final")
    side = ticket("A", JobKind.PARTIAL, 1.0)
    side.on_leave = lambda: left.append("side")
    q.add_final(final)
    q.offer_side(side)
    q.add_final(ticket("B", JobKind.FINAL, 1.0))
    assert q.cancel_stream("A") == 2
    assert final.future.cancelled() and side.future.cancelled() and sorted(left) == ["final", "side"]
    assert q.streams() == {"B"} and streams_of(q.pick(0.0)) == ["B"]


@pytest.mark.corpus
def test_two_workers_run_two_streams_at_once(engine):
    """With a model of two CTranslate2 workers, two calls run at the same time, each stream's
    words still its own."""
    from speechpipe.stages.asr import AsrEngine

    two = AsrEngine(replace(engine.config, threads=1, workers=2))
    names = ["ljspeech_LJ001-0002.wav", "cmuarctic_aew_a0001.wav", "librispeech-dev-clean_1272-128104-0000.wav"]
    sched = AsrScheduler(two, workers=2, partial_max_age_s=60.0)
    futures = {n: sched.submit_final(job(n, JobKind.FINAL, load_audio(SPEECH / n)[0])) for n in names}
    sched.start()
    texts = {n: f.result(60)[0][0].text.lower() for n, f in futures.items()}
    sched.stop(10)
    assert sched.stats().max_concurrent == 2 and sched.stats().calls == 3
    assert "modern" in texts[names[0]] and "danger" in texts[names[1]] and "quilter" in texts[names[2]]


@pytest.mark.corpus
def test_a_speculative_call_counts_as_promised_work_only_once_it_is_a_final(engine):
    """Admission measures the calls of finals: a speculative job's call joins them when its
    segment closes as predicted (promoted, or reused after it ran), never when speech went on,
    and one never used is forgotten after a minute."""
    audio = load_audio(SPEECH / "ljspeech_LJ001-0002.wav")[0]
    now = [100.0]
    sched = AsrScheduler(engine, partial_max_age_s=60.0, clock=lambda: now[0])
    sched.start()
    try:
        final = sched.submit_final(job("a", JobKind.FINAL, audio))
        final.result(60)
        [call] = sched.take_calls()
        assert call.streams == {"a"} and call.seconds == 0.0  # the clock only moves when told

        wasted = job("a", JobKind.SPECULATIVE, audio, index=1)
        sched.offer_partial(wasted).result(60)
        used = job("b", JobKind.SPECULATIVE, audio, index=1)
        used_future = sched.offer_partial(used)
        used_future.result(60)
        assert sched.take_calls() == []  # neither is known to be a final yet
        sched.reused("b", used.job_id + 1)  # another job of the stream: nothing
        assert sched.take_calls() == []
        sched.reused("b", used.job_id)
        assert [c.streams for c in sched.take_calls()] == [{"b"}]
        sched.reused("b", used.job_id)  # counted once
        assert sched.take_calls() == []

        promoted = job("c", JobKind.SPECULATIVE, audio, index=1)
        future = sched.offer_partial(promoted)
        future.result(60)
        assert sched.promote(future) is True  # it ran: its result is the final's
        assert [c.streams for c in sched.take_calls()] == [{"c"}]

        now[0] += 61.0  # stream a's speech went on: its speculative call is spare-time work
        assert sched.take_calls() == []
        sched.reused("a", wasted.job_id)
        assert sched.take_calls() == []
    finally:
        sched.stop(10)


def test_queue_runs_shadow_work_last_sheds_the_oldest_and_keeps_it_past_the_stream():
    audio = np.zeros(16000, np.float32)
    q = AsrQueue(budget_s=20.0, gap_s=0.3, shadow_max_queued=2)
    shadows = [Ticket(job("A", JobKind.SHADOW, audio, k), float(k), JobKind.SHADOW) for k in range(3)]
    shed = [q.add_shadow(t) for t in shadows]
    assert shed == [0, 0, 1] and q.stats.shadow_shed == 1
    assert shadows[0].future.result(0) is None  # the oldest gave way, resolved unrun
    final = Ticket(job("B", JobKind.FINAL, audio), 5.0)
    q.add_final(final)
    q.offer_side(Ticket(job("B", JobKind.PARTIAL, audio), 5.0, JobKind.PARTIAL))
    assert q.pick(6.0) == [final]  # the clients' work first: the final...
    assert [t.kind for t in q.pick(6.0)] == [JobKind.PARTIAL]  # ...and the partial
    assert q.cancel_stream("A") == 0 and q.shadow_depth == 2  # a stream that ended keeps its shadow work
    assert q.pick(10.0, shadow_ok=False) == []  # no shadow call while the scheduler says no
    assert q.pick(10.0) == [shadows[1]] and q.pick(10.0) == [shadows[2]]
    q.add_shadow(Ticket(job("A", JobKind.SHADOW, audio), 11.0, JobKind.SHADOW))
    q.shed_all_shadow()
    assert q.stats.shadow_shed == 2 and q.shadow_depth == 0


@pytest.mark.corpus
def test_scheduler_runs_each_variant_on_its_engine_and_keeps_a_worker_for_clients(engine):
    audio, _ = load_audio(SPEECH / "librispeech-dev-clean_1272-128104-0000.wav")
    mute = type(engine)(replace(engine.config, min_avg_logprob=-0.0001), model=engine.model)
    sched = AsrScheduler(engine, engines={"mute": mute}, workers=2, tail_filler_s=0)
    shadow_job = replace(job("S", JobKind.SHADOW, audio), variant="mute")
    shadow = sched.submit_shadow(shadow_job)
    final = sched.submit_final(replace(job("P", JobKind.FINAL, audio), variant=""))
    sched.start()
    (primary_text,), _ = final.result(60)
    (shadow_text,), _ = shadow.result(60)
    sched.stop(10)
    assert "Quilter" in primary_text.text  # the scheduler's own engine
    assert shadow_text.text == "" and shadow_text.dropped >= 1  # the mute variant's guard dropped it all
    st = sched.stats()
    assert st.shadow == 1 and st.finals == 1 and st.shadow_shed == 0


def fixed(stream: str, seconds: float, index: int = 0) -> Ticket:
    """An upload's window: a final whose pieces are fixed by its audio."""
    piece = AudioPiece(index, 0, np.zeros(int(seconds * 16000), np.float32))
    return Ticket(AsrJob(stream, JobKind.FINAL, [piece], fixed=True), 0.0)


def test_upload_windows_run_alone_below_live_finals_and_round_robin_between_uploads():
    """An upload's window is one call of its own whatever else waits (never packed with another
    job, even of its own upload: the same audio, the same windows, the same text), after the
    live streams' finals and speculative jobs, before partials, and only while the scheduler
    allows one more upload call."""
    q = AsrQueue(budget_s=20.0, gap_s=1.0, pack_streams=True, partial_max_age_s=60.0)
    u1, u2 = fixed("U", 3.0, 0), fixed("U", 3.0, 1)
    v1 = fixed("V", 3.0, 0)
    live = ticket("A", JobKind.FINAL, 2.0)
    spec = ticket("B", JobKind.SPECULATIVE, 2.0)
    part = ticket("C", JobKind.PARTIAL, 2.0)
    for t in (u1, u2, v1, live):
        q.add_final(t)
    q.offer_side(spec)
    q.offer_side(part)
    assert q.depth() == (4, 2) and q.streams() == {"U", "V", "A", "B", "C"}
    assert q.pick(0.0) == [live]  # live finals first, though the uploads came before
    assert q.pick(0.0) == [spec]
    assert q.pick(0.0, fixed_ok=False) == [part]  # no upload call allowed now: partials go on
    assert q.pick(0.0) == [u1]  # alone, although u2 would fit the same window
    assert q.pick(0.0) == [v1]  # round-robin between uploads
    assert q.pick(0.0) == [u2]
    assert q.pick(0.0) == [] and q.depth() == (0, 0) and not q.has_finals


def test_cancelling_an_upload_forgets_its_windows():
    q = AsrQueue(budget_s=20.0, gap_s=1.0)
    u = fixed("U", 3.0)
    q.add_final(u)
    assert q.has_finals and [j.stream_id for j in q.fixed_waiting()] == ["U"]
    assert q.cancel_stream("U") == 1 and u.future.cancelled()
    assert q.pick(0.0) == [] and q.fixed_waiting() == []


@pytest.mark.corpus
def test_several_streams_windows_in_one_call_give_what_a_call_each_gives(engine):
    """Where the device decodes windows in batches (CUDA: ``batch_windows`` from the engine's
    ``batch_size``), one call takes a window of each of several streams waiting. The path runs
    here on the CPU with ``batch_size`` 1, each window decoded on its own inside the call: every
    stream's words are what a call of its own gives, and the call counts its windows."""
    from speechpipe.stages.asr import AsrEngine

    names = ["ljspeech_LJ001-0002.wav", "cmuarctic_aew_a0001.wav", "librispeech-dev-clean_1272-128104-0000.wav"]
    audio = {n: load_audio(SPEECH / n)[0] for n in names}
    one_by_one = AsrEngine(replace(engine.config, batch_size=1), model=engine.model)
    assert AsrScheduler(one_by_one).batch_windows == 1  # a CPU engine: a window per call
    texts, stats = {}, {}
    for label, windows in (("together", 3), ("alone", 1)):
        sched = AsrScheduler(one_by_one, batch_windows=windows, partial_max_age_s=60.0)
        futures = {n: sched.submit_final(job(n, JobKind.FINAL, a)) for n, a in audio.items()}
        sched.start()
        texts[label] = {n: [w.word for w in f.result(120)[0][0].words] for n, f in futures.items()}
        sched.stop(10)
        stats[label] = sched.stats()
    assert (stats["together"].calls, stats["together"].max_windows) == (1, 3)
    assert (stats["alone"].calls, stats["alone"].max_windows) == (3, 1)
    assert stats["together"].windows == stats["alone"].windows >= 3
    assert texts["together"] == texts["alone"] and all(texts["alone"].values())
