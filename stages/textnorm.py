"""Text normalization for WER scoring.

:func:`normalize` runs Whisper's standard English normalizer
(``whisper_normalizer.english.EnglishTextNormalizer``, the one used for published Whisper WERs) and
then tidies its output. References and hypotheses must both go through it before they are compared.

What it does, in order of effect:

* **Case**: everything is lowercased.
* **Bracketed and filler text**: ``[laughs]``, ``(noise)``, ``<unk>`` and hesitations such as
  "uh", "um", "hmm" are removed.
* **Contractions and clitics** are expanded: "can't" -> "can not", "won't" -> "will not",
  "don't" -> "do not", "I'm" -> "i am", "he'd" -> "he would", and ``'s`` becomes "is" even when
  it is a possessive ("Smith's" -> "smith is"). Archaic "'st" turns into "saint"
  ("Feed'st" -> "feed saint") because "st" is read as the abbreviation. Both sides get the same
  treatment, so this only matters when reading normalized text.
* **Titles and spellings** are standardised: "Mr." -> "mister", "St." -> "saint", British to
  American spellings ("colour" -> "color").
* **Punctuation and symbols** are removed (replaced by a space), accents are stripped
  ("Café" -> "cafe"). Hyphens and dashes separate words: "self-substantial" -> "self substantial",
  "a-b-c" -> "a b c".
* **Numbers**: spelled-out numbers become digits and digit strings are kept, so both spellings
  agree: "twenty one", "twenty-one" and "21" all give "21"; "one hundred and one" -> "101";
  "nineteen ninety" -> "1990"; ordinals become "1st", "2nd" ("second" -> "2nd"). Adjacent number
  words merge ("one two three" -> "123"). Two exceptions keep the word "one": a lone "one" stays
  "one" and a lone digit "1" becomes "one" ("1 From" -> "one from"). Currency and percent words fold
  into symbols ("five pounds" -> "£5", "1,000 dollars" -> "$1000"), "minus five" -> "-5". A lone "o"
  reads as zero ("O Romeo" -> "0 romeo", "o'clock" -> "0 clock").
* **Whitespace**: the result has single spaces between words and no leading or trailing space;
  text with nothing left is ``""``.

Examples::

    >>> normalize("But thou, contracted to thine own bright eyes,")
    'but thou contracted to thine own bright eyes'
    >>> normalize("Twenty-one self-substantial fuels; I can't!")
    '21 self substantial fuels i can not'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

# A hyphen left between two word characters (e.g. produced by the number normalizer) still joins
# two words; "minus five" -> "-5" keeps its sign.
_INNER_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")


@lru_cache(maxsize=1)
def _whisper_normalizer() -> Callable[[str], str]:
    # Imported and built on first use: the normalizer compiles many regexes and number tables.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Normalize ``text`` for WER scoring (see the module docstring for the exact rules)."""
    normalized = _whisper_normalizer()(text)
    normalized = _INNER_HYPHEN.sub(" ", normalized)
    return " ".join(normalized.split())
