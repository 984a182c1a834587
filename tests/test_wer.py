"""Text normalization, WER/CER and word alignment against the corpus reference transcripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechpipe.pipeline.evaluate.quality.wer import (
    AlignedOp,
    align,
    normalized_words,
    score,
    score_corpus,
)
from speechpipe.stages.textnorm import normalize

pytestmark = pytest.mark.corpus  # reads ../shared/corpus

# The corpus sits next to the checkout (../shared/corpus), as in CI.
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "speech"


def reference(name: str) -> str:
    path = SPEECH / f"{name}.txt"
    if not path.exists():
        pytest.skip(f"corpus transcript missing: {path}")
    return path.read_text(encoding="utf-8")


STEW = "librispeech-test-clean_1089-134686-0000"  # upper case, no punctuation
JFK = "jfk_inaugural_ask-not"
SONNET = "librivox_shakespeare-sonnet-001"


# ------------------------------------------------------------------------------- normalizer


def test_normalize_case_punctuation_and_spaces() -> None:
    messy = "  Ask NOT,   what your country -- can do!  "
    assert normalize(messy) == "ask not what your country can do"
    assert normalize(reference(JFK)) == normalize(reference(JFK).upper().replace(",", ""))


def test_normalize_splits_hyphenated_words() -> None:
    assert normalize("self-substantial fuel") == "self substantial fuel"
    assert normalize("self-substantial") == normalize("self substantial")
    assert normalize("a-b-c") == "a b c"


def test_normalize_numbers_agree_whatever_the_spelling() -> None:
    assert normalize("twenty one") == normalize("21") == normalize("twenty-one") == "21"
    assert normalize("One hundred and one") == "101"
    # a lone "1" is written as the word, so both spellings still agree
    assert normalize("1 From fairest") == normalize("One from fairest") == "one from fairest"


def test_normalize_contractions() -> None:
    assert normalize("I can't") == "i can not"
    assert normalize("can't") == normalize("can not")
    assert normalize("won't") == "will not"


def test_normalize_empty() -> None:
    assert normalize("") == ""
    assert normalize(" ,.; ") == ""


def test_normalize_sonnet() -> None:
    text = reference(SONNET)
    norm = normalize(text)
    assert norm.startswith("one from fairest creatures we desire increase that thereby")
    assert "self substantial fuel" in norm
    assert norm.endswith("by the grave and thee")
    assert norm == norm.lower()
    assert "  " not in norm and norm == norm.strip()
    assert not set(norm) - set("abcdefghijklmnopqrstuvwxyz0123456789 ")
    # what a recogniser would typically write: spelled number, no punctuation, no hyphen
    hyp = "One" + text[1:].lower().replace("-", " ")
    for ch in ",:.":
        hyp = hyp.replace(ch, "")
    assert score(text, hyp).wer == 0.0


# ------------------------------------------------------------------------------------ score


def test_reference_against_itself_is_zero() -> None:
    for name in (STEW, JFK, SONNET):
        text = reference(name)
        result = score(text, text)
        n = len(normalized_words(text))
        assert result.wer == 0.0 and result.cer == 0.0
        assert (result.hits, result.ref_words, result.hyp_words) == (n, n, n)
        assert result.substitutions == result.deletions == result.insertions == 0


def test_one_substitution_deletion_insertion() -> None:
    text = reference(STEW)
    n = len(normalized_words(text))
    assert n == 28

    sub = score(text, text.replace("STEW", "soup"))
    assert (sub.substitutions, sub.deletions, sub.insertions, sub.hits) == (1, 0, 0, n - 1)
    assert sub.wer == pytest.approx(1 / n)

    dele = score(text, text.replace("TURNIPS ", ""))
    assert (dele.substitutions, dele.deletions, dele.insertions, dele.hits) == (0, 1, 0, n - 1)
    assert dele.wer == pytest.approx(1 / n)
    assert dele.hyp_words == n - 1

    ins = score(text, text.replace("FOR DINNER", "FOR A DINNER"))
    assert (ins.substitutions, ins.deletions, ins.insertions, ins.hits) == (0, 0, 1, n)
    assert ins.wer == pytest.approx(1 / n)
    assert ins.hyp_words == n + 1
    assert 0 < ins.cer < ins.wer


def test_formatting_differences_are_not_errors() -> None:
    assert score(reference(STEW), reference(STEW).lower()).wer == 0.0
    assert score("It cost twenty-one dollars.", "it cost twenty one dollars").wer == 0.0


def test_empty_reference() -> None:
    both = score("", "")
    assert both.wer == 0.0 and both.cer == 0.0 and both.ref_words == 0
    ins = score("", "hello there")
    assert ins.wer == 2.0 and ins.cer is None and ins.insertions == 2
    missing = score("hello there", "")
    assert missing.wer == 1.0 and missing.cer == 1.0 and missing.deletions == 2


def test_corpus_wer_is_pooled_not_averaged() -> None:
    stew, jfk = reference(STEW), reference(JFK)
    n_stew, n_jfk = len(normalized_words(stew)), len(normalized_words(jfk))
    assert n_stew != n_jfk
    pairs = [(stew, stew.replace("STEW", "soup")), (jfk, jfk.replace("ask not ", ""))]
    corpus = score_corpus(pairs)
    assert (corpus.substitutions, corpus.deletions, corpus.insertions) == (1, 2, 0)
    assert corpus.ref_words == n_stew + n_jfk
    assert corpus.wer == pytest.approx(3 / (n_stew + n_jfk))
    mean = (score(*pairs[0]).wer + score(*pairs[1]).wer) / 2
    assert corpus.wer != pytest.approx(mean)


def test_corpus_of_nothing() -> None:
    assert score_corpus([]).wer == 0.0


def test_to_dict() -> None:
    d = score("a b c", "a x c").to_dict()
    assert d["substitutions"] == 1 and d["ref_words"] == 3
    assert d["wer"] == pytest.approx(1 / 3)
    assert set(d) == {
        "wer",
        "cer",
        "substitutions",
        "deletions",
        "insertions",
        "hits",
        "ref_words",
        "hyp_words",
    }


# ------------------------------------------------------------------------------------ align


def test_align_ops() -> None:
    ops = align("The cat sat on the mat.", "the bat sat the mat, down")
    assert ops == [
        AlignedOp("equal", 0, 0, "the", "the"),
        AlignedOp("substitute", 1, 1, "cat", "bat"),
        AlignedOp("equal", 2, 2, "sat", "sat"),
        AlignedOp("delete", 3, None, "on", None),
        AlignedOp("equal", 4, 3, "the", "the"),
        AlignedOp("equal", 5, 4, "mat", "mat"),
        AlignedOp("insert", None, 5, None, "down"),
    ]


def test_align_covers_every_word_and_matches_counts() -> None:
    text = reference(STEW)
    hyp = text.replace("STEW", "soup").replace("TURNIPS ", "").replace("FOR DINNER", "FOR A DINNER")
    ops = align(text, hyp)
    ref_words, hyp_words = normalized_words(text), normalized_words(hyp)
    assert [o.ref_index for o in ops if o.ref_index is not None] == list(range(len(ref_words)))
    assert [o.hyp_index for o in ops if o.hyp_index is not None] == list(range(len(hyp_words)))
    result = score(text, hyp)
    counts = {op: sum(o.op == op for o in ops) for op in ("substitute", "delete", "insert")}
    assert (
        counts
        == {
            "substitute": result.substitutions,
            "delete": result.deletions,
            "insert": result.insertions,
        }
        == {"substitute": 1, "delete": 1, "insert": 1}
    )
    sub = next(o for o in ops if o.op == "substitute")
    assert (sub.ref_word, sub.hyp_word) == ("stew", "soup")
    assert ref_words[sub.ref_index] == "stew"


def test_align_empty_sides() -> None:
    assert align("", "") == []
    assert [o.op for o in align("", "a b")] == ["insert", "insert"]
    assert [o.op for o in align("a b", "")] == ["delete", "delete"]
