"""Committed text of a live stream's partials (issue 27), pure.

The open segment is transcribed again from its start at each partial, and each hypothesis may
rewrite the last: a reader sees words change under their eyes. LocalAgreement-2 (the policy
whisper_streaming commits by) fixes a word once two successive hypotheses agree on it and on every
word before it: the longest common prefix of the last two hypotheses, compared as the WER compares
words (case and punctuation aside), is **committed** and no later partial of the segment takes it
back. A ``partial`` then carries ``stable`` (the committed words, as first shown) and ``text``
(``stable`` and the newest hypothesis' words after them: the unstable tail).

The partials after a commit are decoded with the committed words as Whisper's prefix
(:meth:`~speechpipe.pipeline.live.side.SideSlot.prefixed`): the hypotheses go on from them. The
final is Whisper's own decode of the whole segment (it may share a window with other streams');
where its first words are the committed ones, case and punctuation aside, it is spelled with them
as they were shown (:meth:`Captions.splice`: the same words, the same WER), and where they are not
it is decoded again with them as prefix (``StreamStats.commits_redecoded``). A hypothesis that
still disagrees with words already committed (Whisper's hallucination guard dropped them) does not
take them back: the tail is what it says after as many words as are committed;
:meth:`Captions.final` says whether the final kept the committed words, so that a stream counts
the finals that did not (``StreamStats.commits_broken``).

The audio of a partial ends where the client's stream is, often inside a word, and that last word
is the one the next hypothesis rewrites most ("stewfort." before "stew for dinner"); its
punctuation is Whisper's end of the audio, not of the sentence. So a hypothesis' last word is
never committed, and the committed words end without their closing punctuation (``stable``, the
decoder's prefix): two hypotheses whose audio stopped after "evening" agreed on "evening." and the
final, decoded on from the full stop, went "evening. I've replied" for "evening, a reply" (and
"one day, and," skipped seven words); the words that come next decide it. What the tail shows is
held back three ways: it stops before its first word whose Whisper probability is
under ``min_probability`` (the segment's first word aside: Whisper gives first words low
probabilities as a rule, median 0.53 against 0.98 for the rest), its last ``hold`` words are not
shown unless nothing else would be, it shows at most ``tail_words`` words, and its closing
punctuation is left out. Measured in benchmarks/partials.py (docs/benchmarks.md): with one
partial a segment (8 streams on 2 cores) nothing gets committed, a single hypothesis is all the
reader gets before the final, and the hypotheses of long segments that went wrong went wrong early
(one skipped the segment's first sentence): a short unstable tail is what keeps the reader from
reading a line that the final replaces whole.

**Erasure**, as the reader suffers it: at each update (the final included) the characters of the
text shown before that the new text does not keep as its start; a segment's normalized erasure is
their sum over the final's characters (:class:`CaptionReport`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechpipe.pipeline.evaluate.quality import normalized_words

#: punctuation a shown tail does not end with (the end of the audio is not the end of a sentence)
_CLOSING = ".,;:!?。，、！？…"


def _key(word: str) -> str:
    """A word as agreement compares it: lower case, punctuation aside ("" for punctuation alone)."""
    return " ".join(normalized_words(word))


def _open(text: str) -> str:
    """``text`` without its closing punctuation."""
    return text.rstrip(_CLOSING).rstrip()


def erased(before: str, after: str) -> int:
    """Characters of ``before`` that ``after`` does not keep as its start."""
    k = 0
    n = min(len(before), len(after))
    while k < n and before[k] == after[k]:
        k += 1
    return len(before) - k


@dataclass
class Caption:
    """One partial's text as shown: the committed words and the whole line."""

    stable: str
    text: str


@dataclass(frozen=True)
class CaptionReport:
    """What a segment's captions cost its reader, known at its final.

    ``kept``: the final begins with the committed words (True when none were). ``partials``: the
    partials shown. ``erased_chars`` / ``stable_erased_chars``: characters taken back from the
    text shown / from the committed text, over the updates and the final. ``final_chars``: the
    final's length."""

    kept: bool
    partials: int
    erased_chars: int
    stable_erased_chars: int
    final_chars: int

    @property
    def erasure(self) -> float:
        """Normalized erasure of the text shown (0 when every update only appended)."""
        return self.erased_chars / max(1, self.final_chars)


@dataclass
class _Segment:
    """One segment's captions so far."""

    committed: list[str] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)  # the last hypothesis' words
    shown: str = ""  # the last caption's text
    stable: str = ""  # ... and its committed words
    partials: int = 0
    erased: int = 0

    @property
    def prefix(self) -> str:
        return _open(" ".join(self.committed))


@dataclass
class Captions:
    """The committed words of a stream's segments, each until its final (see the module docstring).

    ``hold``: words at the end of each hypothesis not shown yet (0: the whole hypothesis).
    ``min_probability``: the tail stops before its first word less probable than this (0: none).
    ``tail_words``: the most words the tail shows (0: no limit).
    ``commit`` False: nothing is committed, every caption is the newest hypothesis as it is (the
    behaviour before issue 27, ``server.partial_commit = false``), its erasure still measured."""

    commit: bool = True
    hold: int = 1
    min_probability: float = 0.0
    tail_words: int = 0
    _segments: dict[int, _Segment] = field(default_factory=dict)

    def update(self, segment: int, hypothesis: str, probabilities: list[float] | None = None) -> Caption | None:
        """A new hypothesis of ``segment``, with its words' probabilities where known (one per word
        of ``hypothesis``): the caption to show, or None where it would show nothing or nothing
        new."""
        seg = self._segments.setdefault(segment, _Segment())
        if not self.commit:
            return self._show(seg, "", hypothesis.strip())
        words = hypothesis.split()
        agreed = 0
        for a, b in zip(seg.previous, words):
            if _key(a) != _key(b):
                break
            agreed += 1
        agreed = min(agreed, len(words) - 1)  # never the hypothesis' last word
        committed = seg.committed
        n = len(committed)
        # the agreement extends the committed words only where both hypotheses also hold them
        if agreed > n and all(_key(c) == _key(w) for c, w in zip(committed, words[:n])):
            if n and _open(words[n - 1]) == _open(committed[n - 1]):
                committed[n - 1] = words[n - 1]  # its closing punctuation was never shown committed
            committed += words[n:agreed]
        seg.previous = words
        start = len(committed)
        tail = words[start:]
        if self.min_probability > 0 and probabilities is not None and len(probabilities) == len(words):
            low = (i for i, p in enumerate(probabilities[start:]) if p < self.min_probability and start + i > 0)
            tail = tail[: next(low, len(tail))]
        if self.hold and (committed or len(tail) > self.hold):
            tail = tail[: max(0, len(tail) - self.hold)]
        if self.tail_words:
            tail = tail[: self.tail_words]
        shown, stable = _open(" ".join(tail)), seg.prefix
        line = " ".join(committed)  # the committed words' inner punctuation is theirs
        return self._show(seg, stable, f"{line} {shown}" if stable and shown else stable or shown)

    def stable(self, segment: int) -> str:
        """The committed words of ``segment`` as shown and as the decoder's prefix: without the
        closing punctuation of the last one, which the next words (or the final) decide ("" : none)."""
        seg = self._segments.get(segment)
        return seg.prefix if seg is not None else ""

    def _show(self, seg: _Segment, stable: str, text: str) -> Caption | None:
        if not text or text == seg.shown:
            return None
        seg.erased += erased(seg.shown, text)
        seg.shown, seg.stable = text, stable
        seg.partials += 1
        return Caption(stable, text)

    def splice(self, segment: int, text: str) -> str | None:
        """``text``, a final of ``segment`` decoded without a prefix, beginning with the committed
        words as they were shown where its first words are them (case and punctuation aside): the
        same words, so the same WER. None where its words differ from them (the final must be
        decoded again with them as its prefix)."""
        seg = self._segments.get(segment)
        if seg is None or not seg.committed:
            return text
        k, words = len(seg.committed), text.split()
        if len(words) < k or any(_key(c) != _key(w) for c, w in zip(seg.committed, words)):
            return None
        last = words[k - 1]
        rest = last[len(_open(last)) :] + "".join(" " + w for w in words[k:])  # its own punctuation on
        return seg.prefix + rest

    def final(self, segment: int, text: str) -> CaptionReport:
        """The segment's final is ``text``: what its captions cost (:class:`CaptionReport`); the
        segment is done with."""
        seg = self._segments.pop(segment, None) or _Segment()
        kept = normalized_words(" ".join(seg.committed))  # as the WER reads them
        return CaptionReport(
            kept=normalized_words(text)[: len(kept)] == kept,
            partials=seg.partials,
            erased_chars=seg.erased + erased(seg.shown, text),
            stable_erased_chars=erased(seg.stable, text),
            final_chars=len(text),
        )

    def forget(self, segment: int) -> None:
        """``segment`` will get no final (the VAD discarded it)."""
        self._segments.pop(segment, None)
