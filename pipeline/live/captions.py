"""Committed text of a live stream's partials (issue 27), pure.

The open segment is transcribed again from its start at each partial, and each hypothesis may
rewrite the last: a reader sees words change under their eyes. LocalAgreement-2 (the policy
whisper_streaming commits by) fixes a word once two successive hypotheses agree on it and on every
word before it: the longest common prefix of the last two hypotheses, compared as the WER compares
words (case and punctuation aside), is **committed** and no later partial of the segment takes it
back. A ``partial`` then carries ``stable`` (the committed words, as first shown) and ``text``
(``stable`` and the newest hypothesis' words after them: the unstable tail).

A hypothesis that disagrees with words already committed does not take them back: the tail is
what it says after as many words as are committed. The final is Whisper's decode of the whole
segment; :meth:`Captions.final` says whether it kept the committed words, so that a stream counts
the finals that did not (``StreamStats.commits_broken``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechpipe.pipeline.evaluate.quality import normalized_words


def _key(word: str) -> str:
    """A word as agreement compares it: lower case, punctuation aside ("" for punctuation alone)."""
    return " ".join(normalized_words(word))


@dataclass
class Caption:
    """One partial's text as shown: the committed words and the whole line."""

    stable: str
    text: str


@dataclass
class Captions:
    """The committed words of a stream's open segment (see the module docstring)."""

    segment: int | None = None
    committed: list[str] = field(default_factory=list)
    _previous: list[str] = field(default_factory=list)

    def update(self, segment: int, hypothesis: str) -> Caption:
        """A new hypothesis of ``segment`` (a later segment starts afresh): the caption to show."""
        if segment != self.segment:
            self.segment, self.committed, self._previous = segment, [], []
        words = hypothesis.split()
        agreed = 0
        for a, b in zip(self._previous, words):
            if _key(a) != _key(b):
                break
            agreed += 1
        n = len(self.committed)
        # the agreement extends the committed words only where both hypotheses also hold them
        if agreed > n and all(_key(c) == _key(w) for c, w in zip(self.committed, words[:n])):
            self.committed += words[n:agreed]
        self._previous = words
        tail = words[len(self.committed) :]
        stable = " ".join(self.committed)
        return Caption(stable, " ".join([*self.committed, *tail]))

    def final(self, segment: int, text: str) -> bool:
        """The segment's final is ``text``: whether it begins with the committed words (True when
        none were); the segment is done with."""
        committed = self.committed if segment == self.segment else []
        if segment == self.segment:
            self.segment, self.committed, self._previous = None, [], []
        kept = normalized_words(" ".join(committed))  # as the WER reads them
        return normalized_words(text)[: len(kept)] == kept
