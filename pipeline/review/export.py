"""``speechpipe review export``'s core: which reviewed segments become a training set, cut how,
in which split, described by which manifest line. Pure but for the clip reader it is handed.

The reviewed segments (state ``done``; ``vad_audit`` items aside: they hold audio the VAD
rejected, to measure the VAD, not segments) are taken in four steps, each counting what it leaves
out by cause (:data:`CAUSES`):

1. **scope** (:func:`in_scope`): ``--since`` (reviewed at or after), ``--variant``, and the audio
   still kept (none after ``[review] keep_days``);
2. **audio** (:func:`cut`): each clip cut to its segment and a margin; a clip missing, unreadable
   or shorter than its row says is reported and left out, the rest go on;
3. **duplicates** (:func:`dedupe`): the same segment samples twice (two items of one audio, a
   resumed session's audio sent again): one kept where the human texts agree once normalised,
   none (``conflicting``) where they do not;
4. **content** (:func:`admit`): "no speech" reviews (an empty text) skipped or kept, and
   ``--min-agreement``: the AI's text must agree with the human's at least that much (1 - WER).

Each segment's split comes from a hash of its session and the seed (:func:`split_of`), so no
session is in two splits, an export is the same every time, and a session keeps its split as more
of its reviews come. docs/review.md, "Export for training", documents the layout and the fields.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np

from speechpipe.pipeline.evaluate.quality import normalized_words, score
from speechpipe.pipeline.review.policy import VAD_AUDIT
from speechpipe.pipeline.review.settings import MAX_MARGIN_S
from speechpipe.pipeline.review.store import samples
from speechpipe.stages.pcm import SAMPLE_RATE

#: the splits, in the order ``--splits`` gives their shares.
SPLITS = ("train", "dev", "test")
NO_SPEECH = ("skip", "keep")
#: why a reviewed item is not in the export, in the order they are reported.
CAUSES = (
    "vad_audit",  # audio the VAD rejected, reviewed to measure the VAD: not a segment
    "before_since",  # reviewed before --since
    "other_variant",  # not --variant
    "no_audio",  # its audio was deleted after [review] keep_days
    "missing_audio",  # its FLAC is not in the data directory
    "unreadable_audio",  # not a 16 kHz mono audio file
    "short_audio",  # the clip holds less than its segment
    "changed_audio",  # the clip changed (deleted, replaced) between the export's reading and its writing
    "duplicate",  # the same samples exported once already, with the same text
    "conflicting",  # the same samples reviewed with different texts: all copies left out
    "no_speech",  # reviewed as no speech (an empty text), with --no-speech skip
    "no_ai_text",  # --min-agreement above 0, and no AI text to measure it by (level human)
    "below_agreement",  # the AI text agrees with the human's less than --min-agreement
)


class ClipError(Exception):
    """An item's clip cannot be exported; ``cause`` is one of :data:`CAUSES`."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause, self.message = cause, message


@dataclass(frozen=True)
class Reviewed:
    """A reviewed item as the store holds it: ``text`` the human's words of the segment,
    ``text_before``/``text_after`` those heard in the clip's margins (VAD cuts), ``ai_text`` the
    item's variant's transcript (None: no model ran), ``audio`` its clip under the data directory
    (None: deleted), ``done_at`` when it was reviewed (Unix seconds)."""

    id: str
    session: str
    segment: int
    variant: str
    reason: str
    start_s: float
    end_s: float
    text: str
    ai_text: str | None
    reviewer: str
    done_at: float
    audio: str | None
    margin_before_s: float | None = None
    margin_after_s: float | None = None
    text_before: str | None = None
    text_after: str | None = None


@dataclass(frozen=True)
class ExportOptions:
    """What to export (the command's options; see :func:`plan`). ``splits`` are the shares of
    train, dev and test (normalised to sum 1); ``margin_s`` the audio kept on each side of a
    segment (at most what its clip holds); ``no_speech`` ``skip`` or ``keep``."""

    since: float | None = None
    variant: str | None = None
    min_agreement: float = 0.0
    margin_s: float = 0.1
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    no_speech: str = "skip"

    def __post_init__(self) -> None:
        if len(self.splits) != 3 or any(not math.isfinite(s) or s < 0 for s in self.splits) or sum(self.splits) <= 0:
            raise ValueError("--splits: three shares TRAIN,DEV,TEST, none negative, not all 0 (e.g. 0.8,0.1,0.1)")
        object.__setattr__(self, "splits", tuple(s / sum(self.splits) for s in self.splits))
        if not 0.0 <= self.margin_s <= MAX_MARGIN_S:
            raise ValueError(f"--margin-s must lie in [0, {MAX_MARGIN_S:g}] s")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError("--min-agreement must lie in [0, 1] (1 - WER)")
        if self.no_speech not in NO_SPEECH:
            raise ValueError(f"--no-speech must be one of {', '.join(NO_SPEECH)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["splits"] = dict(zip(SPLITS, (round(s, 6) for s in self.splits), strict=True))
        d["since"] = iso(self.since) if self.since is not None else None
        return d


def parse_since(text: str) -> float:
    """``--since``: Unix seconds, or an ISO 8601 date or time (UTC unless it says its zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected Unix seconds or an ISO date (2024-05-01, 2024-05-01T12:00Z)"
        ) from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def split_of(session: str, seed: int, shares: tuple[float, float, float]) -> str:
    """The split of every segment of ``session``: a hash of the seed and the session id, as a
    number in [0, 1), against the cumulative shares. Nothing else enters it, so the split holds
    whatever else the store holds, and changes only with the seed or the shares."""
    u = int.from_bytes(hashlib.sha256(f"split:{seed}:{session}".encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, share in zip(SPLITS, shares, strict=True):
        edge += share
        if u < edge:
            return name
    return next(name for name, share in reversed(list(zip(SPLITS, shares, strict=True))) if share > 0)


def file_stem(session: str, segment: int) -> str:
    """A segment's file name without suffix: ``<session>-<segment, 5 digits>``; a session id with
    characters other than letters, digits, ``_`` and ``-`` has them replaced and a hash of the id
    added, so two ids never share a name."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", session)[:64]
    if safe != session:
        safe += "_" + hashlib.sha256(session.encode()).hexdigest()[:8]
    return f"{safe}-{segment:05d}"


def _out_of_scope(r: Reviewed, options: ExportOptions) -> str | None:
    if r.reason == VAD_AUDIT:
        return "vad_audit"
    if options.since is not None and r.done_at < options.since:
        return "before_since"
    if options.variant is not None and r.variant != options.variant:
        return "other_variant"
    return None if r.audio else "no_audio"


def in_scope(rows: Iterable[Reviewed], options: ExportOptions, left_out: Counter) -> list[Reviewed]:
    """The reviewed segments the options select with their audio still kept; the others counted
    in ``left_out`` by cause."""
    out = []
    for r in rows:
        cause = _out_of_scope(r, options)
        if cause is None:
            out.append(r)
        else:
            left_out[cause] += 1
    return out


@dataclass(frozen=True)
class Cut:
    """Where the exported audio lies in an item's clip: ``offset`` and ``frames`` (16 kHz
    samples), ``margin_s`` on each side of the segment, and ``digest`` of the segment's own
    samples (the duplicates' key: margins aside, so two clips of one segment with different
    margins still match)."""

    offset: int
    frames: int
    margin_s: float
    digest: str

    def of(self, clip: np.ndarray) -> np.ndarray:
        return clip[self.offset : self.offset + self.frames]


def cut(clip: np.ndarray, row: Reviewed, margin_s: float) -> Cut:
    """The segment of ``row`` in its ``clip`` (int16 samples) with ``margin_s`` on both sides, or
    less: as much as the clip holds on its shorter side (the same on both, so the segment lies in
    the middle), and none where the reviewer heard words in a margin (those words are not in
    ``text``: the audio is the segment exactly as the VAD cut it). Raises :class:`ClipError`
    (``short_audio``) for a clip shorter than its segment."""
    before = samples(row.margin_before_s or 0.0)
    length = samples(row.end_s) - samples(row.start_s)
    if length <= 0 or clip.size < before + length:
        raise ClipError("short_audio", f"the clip holds {clip.size} samples, its segment needs {before + length}")
    heard = normalized_words(row.text_before or "") or normalized_words(row.text_after or "")
    after = min(samples(row.margin_after_s or 0.0), clip.size - before - length)
    m = 0 if heard else min(samples(margin_s), before, after)
    digest = hashlib.sha256(clip[before : before + length].astype("<i2").tobytes()).hexdigest()
    return Cut(before - m, length + 2 * m, m / SAMPLE_RATE, digest)


def dedupe(found: list[tuple[Reviewed, Cut]], left_out: Counter) -> list[tuple[Reviewed, Cut]]:
    """One of each set of items whose segments hold the same samples, where their human texts
    agree once normalised (the one reviewed first; the others count as ``duplicate``); none where
    they do not (all count as ``conflicting``: which text is right is not known)."""
    groups: dict[str, list[tuple[Reviewed, Cut]]] = {}
    for row, c in sorted(found, key=lambda f: (f[0].done_at, f[0].id)):
        groups.setdefault(c.digest, []).append((row, c))
    kept = []
    for group in groups.values():
        texts = {" ".join(normalized_words(row.text)) for row, _ in group}
        if len(texts) > 1:
            left_out["conflicting"] += len(group)
            continue
        kept.append(group[0])
        left_out["duplicate"] += len(group) - 1
    return kept


def ai_wer(row: Reviewed) -> float | None:
    """The WER of the AI's text against the human's (the project's: an empty human text counts
    the AI's words as errors); None where no model ran."""
    return None if row.ai_text is None else score(row.text, row.ai_text).wer


def admit(row: Reviewed, options: ExportOptions) -> str | None:
    """Why the content of a reviewed segment keeps it out (a cause of :data:`CAUSES`), or None."""
    if not row.text.strip() and options.no_speech == "skip":
        return "no_speech"
    if options.min_agreement > 0:
        wer = ai_wer(row)
        if wer is None:
            return "no_ai_text"
        if 1.0 - wer < options.min_agreement:
            return "below_agreement"
    return None


def record(row: Reviewed, c: Cut, name: str, model: str) -> dict:
    """The manifest line of an exported segment (docs/review.md lists the fields and types);
    ``name`` is its WAV's name in its split's folder."""
    wer = ai_wer(row)
    return {
        "file_name": name,
        "audio_filepath": name,
        "duration": c.frames / SAMPLE_RATE,
        "text": " ".join(row.text.split()),
        "variant": row.variant,
        "model": model,
        "ai_text": None if row.ai_text is None else " ".join(row.ai_text.split()),
        "ai_wer": None if wer is None else round(wer, 4),
        "reason": row.reason,
        "reviewed_at": iso(row.done_at),
        "reviewer": row.reviewer,
        "session": row.session,
        "segment": row.segment,
        "start": row.start_s,
        "end": row.end_s,
        "margin_s": c.margin_s,
    }


@dataclass(frozen=True)
class Entry:
    """A segment to export: its item, where it lies in its clip, its split and manifest line."""

    row: Reviewed
    cut: Cut
    split: str
    record: dict

    @property
    def name(self) -> str:
        return self.record["file_name"]


@dataclass
class Plan:
    """What an export writes: ``entries`` in manifest order (split, session, segment) cut with
    ``margin_s`` asked for, what was left out by cause, and the items whose audio failed
    (``problems``: item, session, segment, cause, error)."""

    margin_s: float
    entries: list[Entry] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)
    problems: list[dict] = field(default_factory=list)

    def fail(self, row: Reviewed, exc: ClipError) -> None:
        """``row``'s audio cannot be exported: counted, and reported with the error."""
        self.left_out[exc.cause] += 1
        self.problems.append(
            {"item": row.id, "session": row.session, "segment": row.segment, "cause": exc.cause, "error": exc.message}
        )

    def totals(self) -> dict[str, dict]:
        """Per split: segments, seconds of audio and the human texts' (normalised) words."""
        out = {s: {"segments": 0, "seconds": 0.0, "words": 0} for s in SPLITS}
        for e in self.entries:
            t = out[e.split]
            t["segments"] += 1
            t["seconds"] += e.record["duration"]
            t["words"] += len(normalized_words(e.record["text"]))
        for t in out.values():
            t["seconds"] = round(t["seconds"], 3)
        return out

    def left_out_dict(self) -> dict[str, int]:
        return {cause: self.left_out[cause] for cause in CAUSES if self.left_out[cause]}


def plan(
    rows: Iterable[Reviewed],
    options: ExportOptions,
    read_clip: Callable[[Reviewed], np.ndarray],
    model_of: Callable[[str], str] = lambda variant: variant,
) -> Plan:
    """The export of ``rows`` under ``options``: each clip read once (``read_clip``: its int16
    samples, or :class:`ClipError`) to find its cut and its segment's digest, the steps of the
    module docstring applied in order. ``model_of`` names the model of a variant (the
    manifest's ``model``)."""
    p = Plan(options.margin_s)
    found = []
    for row in in_scope(rows, options, p.left_out):
        try:
            found.append((row, cut(read_clip(row), row, options.margin_s)))
        except ClipError as exc:
            p.fail(row, exc)
    for row, c in dedupe(found, p.left_out):
        cause = admit(row, options)
        if cause is not None:
            p.left_out[cause] += 1
            continue
        name = file_stem(row.session, row.segment) + ".wav"
        p.entries.append(
            Entry(
                row, c, split_of(row.session, options.seed, options.splits), record(row, c, name, model_of(row.variant))
            )
        )
    order = {s: k for k, s in enumerate(SPLITS)}
    p.entries.sort(key=lambda e: (order[e.split], e.row.session, e.row.segment))
    return p
