"""Committed partial text (issue 27): LocalAgreement-2 over successive hypotheses of a segment,
pure; what a reader sees committed is never taken back."""

from __future__ import annotations

from itertools import pairwise

from speechpipe.pipeline.live.captions import Captions


def test_two_hypotheses_that_agree_commit_their_common_prefix():
    c = Captions()
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
    c = Captions()
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
    c = Captions()
    c.update(0, "hello there")
    c.update(0, "hello there world")
    assert c.final(0, "Hello there, world.")  # committed "hello there" kept (case, punctuation aside)
    assert c.update(1, "something else").stable == ""  # segment 1: nothing committed yet
    c.update(1, "something else entirely")
    assert not c.final(1, "some thing else")  # the final rewrote committed words
    assert c.final(2, "no partial came before it")


def test_the_microphone_client_shows_committed_words_plainly_and_the_tail_dimmed():
    from speechpipe.pipeline.clients.mic import caption_line

    assert caption_line("and so my fellow", "and so") == "and so\x1b[2m my fellow\x1b[0m"
    assert caption_line("and so", "and so") == "and so"  # nothing unstable: no escape codes
    assert caption_line("and so", "") == "\x1b[2mand so\x1b[0m"
    long = "word " * 60
    shown = caption_line(long.strip(), long[:250].strip(), width=200)  # the last 200 characters
    assert shown.replace("\x1b[2m", "").replace("\x1b[0m", "") == long.strip()[-200:]
