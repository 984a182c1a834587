"""The live core's review audio without sockets or threads (a fake clock): every clip sent to review
is the stream's own audio from a margin before its segment to a margin after it (less at the
stream's edges, and the after-margin brought later by ``AddMargin`` where the final left first),
and at ``vad_audit_share = 1`` the audio the VAD rejected goes to review in stretches that tile
the stream with the segments. Corpus speech joined by pauses of room noise (the ``noisy_speech``
stream), at level ``human``: no model runs, so finals are made the moment a segment closes and
every after-margin comes later."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_live_core import Harness, start

from speechpipe.pipeline.live.actions import AddMargin, SubmitReview
from speechpipe.pipeline.live.core import LiveCore
from speechpipe.pipeline.review.policy import VAD_AUDIT, audit_key, vad_audited
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings
from speechpipe.stages.pcm import SAMPLE_RATE, pcm_to_float

pytestmark = pytest.mark.corpus


def streamed(engine, frames: list[bytes], review: ReviewSettings, level: str = "human") -> tuple[Harness, list]:
    """``frames`` through a live core whose stream has a review queue; returns the harness and
    the ring's size after each frame."""
    h = Harness(engine, partials=False)
    context = replace(
        h.core.context, automation=AutomationSettings(level=level), on_review=lambda sid, r: None, review=review
    )
    h.core = LiveCore("audit-stream", context, h.now)
    h.send(start())
    held = []
    for f in frames:
        h.now += len(f) / 2 / SAMPLE_RATE
        h.send(f)
        h.run()
        held.append(h.core._audit.ring.held)
    h.send(json.dumps({"type": "stop"}))
    h.run()
    assert h.of_type("end"), "the stream did not end"
    return h, held


def audio_of(frames: list[bytes]) -> np.ndarray:
    return pcm_to_float(b"".join(frames), "pcm_s16le", 1)[:, 0]


def samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def test_every_clip_is_the_segment_with_its_margins_and_the_after_margin_follows(engine, noisy_speech):
    frames = noisy_speech[: len(noisy_speech) // 2]
    stream = audio_of(frames)
    h, held = streamed(engine, frames, ReviewSettings(margin_s=1.0))
    reviews = [a for a in h.actions if isinstance(a, SubmitReview)]
    finals = {m["segment"]: m for m in h.of_type("final")}
    assert len(reviews) == len(finals) >= 3 and all(r.reason == "level" for r in reviews)
    more = {a.segment: a for a in h.actions if isinstance(a, AddMargin)}
    spans = sorted((samples(r.start_s), samples(r.end_s)) for r in reviews)
    for r in reviews:
        a, b = samples(r.start_s), samples(r.end_s)
        before, after = samples(r.margin_before_s), samples(r.margin_after_s)
        assert (r.start_s, r.end_s) == (finals[r.segment]["start"], finals[r.segment]["end"])
        # a margin stops at the stream's edges and halfway to the neighbouring segment
        previous = max([e for _, e in spans if e <= a], default=None)
        following = min([s for s, _ in spans if s >= b], default=None)
        assert before == min(SAMPLE_RATE, a if previous is None else a - (previous + a) // 2)
        assert r.audio.size == before + (b - a) + after
        np.testing.assert_array_equal(r.audio, stream[a - before : b + after])
        # The final left when the segment closed: the rest of the after-margin came later, in
        # order (a segment the stream's end closed has no audio after it to wait for).
        total = min(SAMPLE_RATE, stream.size - b if following is None else (b + following) // 2 - b)
        assert after < SAMPLE_RATE and (r.segment in more) == (after < total)
        if after < total:
            m = more[r.segment]
            assert h.actions.index(m) > h.actions.index(r)
            assert m.after_from_s == r.margin_after_s
            assert samples(m.margin_after_s) == total and after + m.audio.size == total
            np.testing.assert_array_equal(m.audio, stream[b + after : b + total])
    assert more and set(more) <= {r.segment for r in reviews}
    # Without an audit the ring holds the margin, the pre-roll and the open segment at most.
    longest = max(samples(r.end_s) - samples(r.start_s) for r in reviews)
    assert max(held) <= longest + 3 * SAMPLE_RATE


def test_the_audio_the_vad_rejected_goes_to_review_in_stretches_that_tile_the_stream(engine, noisy_speech):
    frames = noisy_speech[: len(noisy_speech) // 2]
    stream = audio_of(frames)
    review = ReviewSettings(margin_s=0.5, vad_audit_share=1.0, vad_audit_min_s=0.5, vad_audit_max_s=1.5)
    h, held = streamed(engine, frames, review)
    reviews = [a for a in h.actions if isinstance(a, SubmitReview)]
    audits = [r for r in reviews if r.reason == VAD_AUDIT]
    segments = [r for r in reviews if r.reason != VAD_AUDIT]
    assert audits and segments
    for r in audits:
        a, b = samples(r.start_s), samples(r.end_s)
        assert r.segment == audit_key(a) < 0 and r.text is None and r.draft is None and r.confidence is None
        assert (r.margin_before_s, r.margin_after_s) == (0.0, 0.0)
        assert samples(0.5) <= b - a <= samples(1.5)
        np.testing.assert_array_equal(r.audio, stream[a:b])
    # Segments, their margins and audited stretches never overlap; together with the stretches
    # too short to audit they cover the whole stream (an audit starts and ends a margin away from
    # every segment, or at the stream's edges).
    margin = samples(0.5)
    spans = sorted(
        (
            samples(r.start_s) - (0 if r.reason == VAD_AUDIT else margin),
            samples(r.end_s) + (0 if r.reason == VAD_AUDIT else margin),
            r.reason,
        )
        for r in reviews
    )
    edge = 0
    for a, b, _ in spans:
        assert a >= edge - 2 * margin and a - edge < samples(0.5), (a, edge)  # two margins may share a gap
        edge = max(edge, b)
    assert stream.size - edge < samples(0.5)
    for r in audits:
        a, b = samples(r.start_s), samples(r.end_s)
        assert all(b <= samples(s.start_s) - margin or a >= samples(s.end_s) + margin for s in segments)
    assert len({r.segment for r in audits}) == len(audits)
    # The ring held the open segment, the margin and one stretch at most.
    longest = max(samples(r.end_s) - samples(r.start_s) for r in segments)
    assert max(held) <= longest + samples(1.5) + 3 * SAMPLE_RATE


def test_the_audit_takes_the_share_its_hash_gives(engine, noisy_speech):
    frames = noisy_speech[: len(noisy_speech) // 2]
    every = ReviewSettings(vad_audit_share=1.0, vad_audit_max_s=1.0)
    some = replace(every, vad_audit_share=0.5)
    all_audits = [a for a in streamed(engine, frames, every)[0].actions if getattr(a, "reason", "") == VAD_AUDIT]
    picked = [a for a in streamed(engine, frames, some)[0].actions if getattr(a, "reason", "") == VAD_AUDIT]
    chosen = [a.segment for a in all_audits if vad_audited("audit-stream", samples(a.start_s), 0.5)]
    assert [a.segment for a in picked] == chosen and 0 < len(chosen) < len(all_audits)
    none = streamed(engine, frames, replace(every, vad_audit_share=0.0))[0].actions
    assert not [a for a in none if getattr(a, "reason", "") == VAD_AUDIT]
