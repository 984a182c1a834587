"""Committed partial text (issue 27): LocalAgreement-2 over successive hypotheses of a segment,
pure; what a reader sees committed is never taken back."""

from __future__ import annotations

from itertools import pairwise

from speechpipe.pipeline.live.captions import Captions


def test_two_hypotheses_that_agree_commit_their_common_prefix():
    c = Captions(hold=0)
    shown = [
        c.update(0, h)
        for h in (
            "the quick",
            "the quick brown fax",
            "the quick brown fox jumps",
            "The quick brown fox jumped over",
        )
    ]
    assert [s.stable for s in shown] == ["", "the quick", "the quick brown", "the quick brown fox"]
    assert shown[1].text == "the quick brown fax" and shown[3].text == "the quick brown fox jumped over"
    # case and punctuation aside: "The" agreed with "the", shown as first committed


def test_committed_words_are_never_taken_back_and_lead_every_line():
    c = Captions(hold=0)
    c.update(3, "and so my fellow")
    c.update(3, "and so my fellow americans")
    rewrite = c.update(3, "and so am I fellow Americans, ask")  # disagrees with what is committed
    assert rewrite.stable == "and so my fellow"
    assert rewrite.text == "and so my fellow fellow Americans, ask"  # its words after as many as committed
    lines = [
        c.update(3, h) for h in ("and so my fellow Americans, ask not", "and so my fellow Americans, ask not what")
    ]
    stables = [rewrite.stable] + [line.stable for line in lines]
    assert all(b.startswith(a) for a, b in pairwise(stables))
    assert all(line.text.startswith(line.stable) for line in lines)
    assert lines[-1].stable == "and so my fellow Americans, ask not"


def test_a_new_segment_starts_afresh_and_the_final_says_whether_it_kept_the_committed_words():
    c = Captions(hold=0)
    c.update(0, "hello there")
    c.update(0, "hello there world")
    assert c.final(0, "Hello there, world.").kept  # committed "hello there" kept (case, punctuation aside)
    assert c.update(1, "something else").stable == ""  # segment 1: nothing committed yet
    c.update(1, "something else entirely")
    assert not c.final(1, "some thing else").kept  # the final rewrote committed words
    report = c.final(2, "no partial came before it")
    assert report.kept and report.partials == 0 and report.erased_chars == 0 and report.final_chars == 25


def test_the_tail_holds_back_its_last_word_and_its_closing_punctuation():
    """The audio of a partial ends inside its last word more often than not; the full stop is the
    end of the audio, not of the sentence: neither is shown until a later hypothesis or the final."""
    c = Captions()  # hold = 1, the server's default
    assert c.update(0, "Hoped.").text == "Hoped"  # nothing else to show: the one word stays
    assert c.update(0, "He hoped.").text == "He"  # hypotheses disagree: nothing committed yet
    second = c.update(0, "He hoped there would be stewfort.")
    assert second.stable == "He hoped" and second.text == "He hoped there would be"  # "stewfort." held
    third = c.update(0, "He hoped there would be stew for")
    assert third.stable == "He hoped there would be" and third.text == "He hoped there would be stew"
    # agreed up to "for", but a hypothesis' last word is never committed: "stew" is, "for" held
    assert c.update(0, "He hoped there would be stew for") is None  # nothing new to show
    assert c.stable(0) == "He hoped there would be stew"
    report = c.final(0, "He hoped there would be stew for dinner.")
    assert report.partials == 4 and report.erased_chars == len("oped")  # "Hoped" -> "He", then every update appended
    assert report.stable_erased_chars == 0 and report.kept


def test_committed_words_end_without_their_closing_punctuation_which_the_next_words_decide():
    """Two hypotheses whose audio stopped after "evening" agree on "evening."; the decoder given
    that full stop as prefix went "evening. I've replied" for "evening, a reply"."""
    c = Captions(hold=0)
    c.update(0, "later in the evening.")
    first = c.update(0, "later in the evening. a")
    assert first.stable == "later in the evening" and first.text == "later in the evening. a"
    assert c.stable(0) == "later in the evening"  # the prefix of the segment's next decodes
    # the next decode goes on from "evening" and puts a comma: that is what gets committed
    second = c.update(0, "later in the evening, a reply that")
    assert second.stable == "later in the evening, a" and second.stable.startswith(first.stable)
    report = c.final(0, "later in the evening, a reply that had the interesting consequence.")
    assert report.kept and report.stable_erased_chars == 0


def test_a_final_with_the_committed_words_is_spelled_as_they_were_shown_else_decoded_again():
    c = Captions(hold=0)
    for h in ("And so my fellow", "And so my fellow Americans", "and so, my fellow Americans ask"):
        c.update(4, h)
    assert c.stable(4) == "And so my fellow Americans"
    # Whisper's own final (no prefix): the same words, its case and commas: the reader's kept
    spliced = c.splice(4, "and so, my fellow Americans, ask not.")
    assert spliced == "And so my fellow Americans, ask not."  # the WER reads the same words
    assert c.splice(4, "And so am I fellow Americans, ask not.") is None  # other words: decode again
    assert c.splice(4, "And so my") is None  # fewer words than committed
    assert c.splice(5, "anything at all") == "anything at all"  # nothing committed there
    c.update(5, "a next segment")  # another segment's captions do not touch segment 4's
    assert c.final(4, spliced).kept and c.final(4, spliced).partials == 0  # popped once final
    c.forget(5)
    assert c.stable(5) == ""


def test_the_tail_stops_before_a_word_whisper_was_unsure_of():
    c = Captions(min_probability=0.5)
    # the segment's first word is shown however unsure (Whisper's first words are, as a rule)
    assert c.update(0, "Unless to be rather", [0.3, 0.9, 0.4, 0.9]).text == "Unless"  # "to", then held
    assert c.update(0, "Unless to be rather cold", [0.6, 0.9, 0.9, 0.9, 0.9]).text == "Unless to be rather"
    # committed words stay, whatever the probability of the newest hypothesis' words
    line = c.update(0, "Unless to be rather cold-hearted and", [0.6, 0.9, 0.2, 0.9, 0.9, 0.9])
    assert line.stable == "Unless to be rather" and line.text == "Unless to be rather cold-hearted"
    assert c.update(0, "Unless to be rather cold-hearted and rather selfish", None).text.endswith("and rather")


def test_the_tail_shows_at_most_tail_words_after_the_committed_words():
    c = Captions(hold=0, tail_words=2)
    assert c.update(0, "Another case said John Wesley was").text == "Another case"
    line = c.update(0, "Another case said John Wesley was a little girl")
    assert line.stable == "Another case said John Wesley was"
    assert line.text == "Another case said John Wesley was a little"


def test_erasure_counts_what_the_reader_saw_taken_back():
    c = Captions(commit=False)  # the behaviour before: every hypothesis shown as it is
    assert c.update(0, " As never,").text == "As never,"
    assert c.update(0, "has never been").stable == ""
    report = c.final(0, "Has never been surpassed.")
    # "As never," -> "has never been": all 9 characters; "has never been" -> "Has...": all 14
    assert report.erased_chars == 9 + 14 and report.final_chars == 25
    assert report.erasure == (9 + 14) / 25
    assert report.stable_erased_chars == 0 and report.kept  # nothing was committed


def test_the_microphone_client_shows_committed_words_plainly_and_the_tail_dimmed():
    from speechpipe.pipeline.clients.mic import caption_line

    assert caption_line("and so my fellow", "and so") == "and so\x1b[2m my fellow\x1b[0m"
    assert caption_line("and so", "and so") == "and so"  # nothing unstable: no escape codes
    assert caption_line("and so", "") == "\x1b[2mand so\x1b[0m"
    long = "word " * 60
    shown = caption_line(long.strip(), long[:250].strip(), width=200)  # the last 200 characters
    assert shown.replace("\x1b[2m", "").replace("\x1b[0m", "") == long.strip()[-200:]
