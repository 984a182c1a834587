"""Why a segment is in the review queue, said to people (issue 28): an empty final has its own
reason, ``empty`` (it was queued as ``low_confidence`` with no confidence), and every reason reads
as a sentence with its figures; what a claim shows of the segments around an item. Pure."""

from __future__ import annotations

from dataclasses import replace

from speechpipe.pipeline.live.review import confidence_of
from speechpipe.pipeline.review.part import item_doc, neighbour_doc
from speechpipe.pipeline.review.policy import EMPTY, LOW_CONFIDENCE, VAD_AUDIT, decide, explain
from speechpipe.pipeline.review.settings import AutomationSettings
from speechpipe.pipeline.review.store import Item
from speechpipe.stages.asr import Transcript

PARTIAL = AutomationSettings(level="partial", review_below=0.6)


def test_an_empty_final_at_partial_is_queued_as_empty_and_a_doubtful_one_as_low_confidence():
    nothing = Transcript(3, 1.0, 1.42, "", [], avg_logprob=-1.0, no_speech_prob=0.9, compression_ratio=0.0)
    assert confidence_of(nothing) is None  # no words: no confidence at all
    empty = decide(PARTIAL, confidence_of(nothing), "s1", 3)
    assert (empty.reason, empty.queue, empty.review, empty.draft) == (EMPTY, True, "pending", True)
    low = decide(PARTIAL, 0.41, "s1", 4)
    assert (low.reason, low.queue, low.review) == (LOW_CONFIDENCE, True, "pending")
    assert not decide(PARTIAL, 0.6, "s1", 5).queue  # at the threshold: not under it
    # the other levels keep their reasons: every segment, or the audit sample
    assert {decide(AutomationSettings(level=lv), None, "s1", 3).reason for lv in ("human", "shadow", "assist")} == {
        "level"
    }
    assert decide(AutomationSettings(level="full", audit_share=1.0), None, "s1", 3).reason == "audit"


def test_each_reason_reads_as_what_happened_with_its_figures():
    empty = explain(EMPTY, "partial", None, 0.6)
    assert empty.label == "empty final" and empty.text.startswith("empty final: ") and "no words" in empty.text
    # an empty final queued before ``empty`` existed reads the same (the old value is kept working)
    assert explain(LOW_CONFIDENCE, "partial", None, 0.6) == empty
    low = explain(LOW_CONFIDENCE, "partial", 0.41, 0.6)
    assert low.label == "low confidence" and "0.41" in low.text and "review_below 0.6" in low.text
    moved = explain(LOW_CONFIDENCE, "partial", 0.7, 0.6)  # the threshold was lowered since
    assert "was under review_below when it was queued" in moved.text and "0.6 now" in moved.text
    assert "0.41" in explain(LOW_CONFIDENCE, "partial", 0.41, None).text
    assert explain("audit", "full", 0.97, 0.6).label == "audit"
    assert "sample" in explain("audit", "full", 0.97, 0.6).text
    vad = explain(VAD_AUDIT, "partial", None, 0.6)
    assert vad.label == "VAD audit" and "rejected" in vad.text
    levels = {lv: explain("level", lv, None, 0.6) for lv in ("human", "shadow", "assist")}
    assert {w.label for w in levels.values()} == {"every segment"}
    assert all(f"level {lv}" in w.text for lv, w in levels.items())
    assert "no words" in explain("level", "assist", None, 0.6, draft="").text
    assert "no words" not in explain("level", "assist", 0.9, 0.6, draft="hello").text
    assert explain("something_new", "partial", None, 0.6).label == "something_new"  # shown as it is


def item(**more) -> Item:
    base = Item(
        id="i1",
        session="s1",
        segment=3,
        variant="default",
        level="partial",
        reason=EMPTY,
        start_s=1.0,
        end_s=1.42,
        draft="",
        confidence=None,
        created_at=0.0,
        state="queued",
        claim=None,
        claimed_until=None,
        text=None,
        reviewer=None,
        done_at=None,
        audio="0/i1.flac",
        owner="alice",
    )
    return replace(base, **more)


def test_the_api_shows_the_reason_in_words_and_the_neighbours_text_the_level_lets_reviewers_see():
    doc = item_doc(item(), review_below=0.6)
    assert (doc["reason"], doc["reason_label"]) == (EMPTY, "empty final") and doc["reason_text"].startswith("empty")
    assert "owner" not in doc and doc["audio_url"] == "/v1/review/i1/audio"
    assert item_doc(item(reason=LOW_CONFIDENCE, confidence=0.41), 0.6)["reason_label"] == "low confidence"
    assert neighbour_doc(None) is None
    ai = neighbour_doc(item(segment=2, draft="the words before", reason=LOW_CONFIDENCE, confidence=0.5))
    assert ai == {"segment": 2, "start": 1.0, "end": 1.42, "state": "queued", "text": "the words before", "by": "ai"}
    human = neighbour_doc(item(segment=4, state="done", text="what was said", draft="what was sad"))
    assert (human["text"], human["by"]) == ("what was said", "human")
    hidden = neighbour_doc(item(segment=4, level="shadow", reason="level", draft=None))  # the AI's text is hidden
    assert (hidden["text"], hidden["by"]) == (None, None)
