"""What each recent live session produced, per variant: the primary's finals and the shadow's
transcripts of the same audio, so that the two can be compared segment by segment and human
feedback (``POST /v1/feedback``) can be scored against every variant that transcribed it.

Pure and synchronous (the deployment holds the lock). Sessions are kept for the last
``max_sessions`` streams; feedback on an older one is refused as unknown.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from speechpipe.pipeline.evaluate.quality import normalized_words, score

#: client feedback kept per session (the oldest dropped beyond it): enough to look at, bounded.
MAX_CLIENT_REFERENCES = 20


@dataclass
class Piece:
    """One segment's transcript by one variant."""

    index: int
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Comparison:
    """The shadow's transcript of a segment against the primary's final of the same audio."""

    stream_id: str
    index: int
    agreement: float  # 1 - WER(shadow vs primary), floored at 0; 1.0 when both are empty
    empty_mismatch: bool  # one of them is empty, the other is not


@dataclass(frozen=True)
class Score:
    """A variant's transcript against a human reference."""

    variant: str
    role: str
    errors: int
    words: int
    hypothesis: str

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else float(self.errors)


@dataclass
class SessionRecord:
    """One stream: who served it, and the transcripts of each side by segment index."""

    stream_id: str
    variant: str
    role: str
    shadow: str | None
    shared_segments: bool  # the shadow transcribes the primary's own segments (same VAD)
    principal: str | None = None  # who opened it (a resume must come from the same principal)
    finals: dict[int, Piece] = field(default_factory=dict)
    shadow_pieces: dict[int, Piece] = field(default_factory=dict)
    shadow_pending: int = 0
    shadow_lost: int = 0  # shadow jobs shed or failed: their audio has no shadow transcript
    ended: bool = False
    compared: set[int] = field(default_factory=set)
    #: feedback waiting for shadow transcripts still pending: (segment or None, text)
    references: list[tuple[int | None, str]] = field(default_factory=list)
    #: client feedback (from a principal whose feedback does not count), kept apart: the last
    #: :data:`MAX_CLIENT_REFERENCES` (segment or None, text); never scored into any figure
    client_references: list[tuple[int | None, str]] = field(default_factory=list)

    def to_doc(self) -> dict:
        """What a shared ledger keeps of the session (JSON): who, which variant, the texts."""

        def pieces(d: dict[int, Piece]) -> list:
            return [[p.index, p.start_s, p.end_s, p.text] for _, p in sorted(d.items())]

        return {
            "session": self.stream_id,
            "variant": self.variant,
            "role": self.role,
            "shadow": self.shadow,
            "shared_segments": self.shared_segments,
            "principal": self.principal,
            "finals": pieces(self.finals),
            "shadow_pieces": pieces(self.shadow_pieces),
            "shadow_pending": self.shadow_pending,
            "shadow_lost": self.shadow_lost,
            "ended": self.ended,
        }

    @classmethod
    def from_doc(cls, doc: dict) -> SessionRecord:
        """A session kept by another replica (:meth:`to_doc`); not open here, so ``ended``, and
        the shadow work that replica still had pending will not come (counted lost)."""

        def pieces(rows: list) -> dict[int, Piece]:
            return {int(r[0]): Piece(int(r[0]), float(r[1]), float(r[2]), str(r[3])) for r in rows}

        rec = cls(
            str(doc["session"]),
            str(doc["variant"]),
            str(doc["role"]),
            doc.get("shadow") or None,
            bool(doc.get("shared_segments", True)),
            doc.get("principal"),
        )
        rec.finals, rec.shadow_pieces = pieces(doc.get("finals", [])), pieces(doc.get("shadow_pieces", []))
        rec.shadow_lost = int(doc.get("shadow_lost", 0)) + int(doc.get("shadow_pending", 0))
        rec.ended = True
        return rec

    def text(self, pieces: dict[int, Piece], segment: int | None) -> str:
        if segment is not None:
            piece = pieces.get(segment)
            return piece.text if piece is not None else ""
        return " ".join(p.text for _, p in sorted(pieces.items()) if p.text)

    def shadow_ready(self, segment: int | None) -> bool | None:
        """Whether the shadow's transcript of ``segment`` (None: the whole session) is complete:
        True, False (not yet), None (never: the shadow's work on it was shed)."""
        if segment is not None and self.shared_segments and segment in self.shadow_pieces:
            return True
        if not (self.ended and self.shadow_pending == 0):
            return False
        if self.shadow_lost and (segment is None or not self.shared_segments):
            return None
        return True if segment is None or not self.shared_segments else None

    def shadow_text(self, segment: int | None) -> str:
        """The shadow's words for ``segment`` (by its time span when it ran its own VAD)."""
        if segment is None or self.shared_segments:
            return self.text(self.shadow_pieces, segment)
        final = self.finals.get(segment)
        if final is None:
            return ""
        inside = [
            p
            for _, p in sorted(self.shadow_pieces.items())
            if final.start_s <= (p.start_s + p.end_s) / 2 <= final.end_s
        ]
        return " ".join(p.text for p in inside if p.text)


def agreement(primary: str, shadow: str) -> tuple[float, bool]:
    """``(1 - WER(shadow vs primary) floored at 0, empty mismatch)``; two empty texts agree."""
    p_empty, s_empty = not normalized_words(primary), not normalized_words(shadow)
    if p_empty or s_empty:
        return (1.0 if p_empty and s_empty else 0.0), p_empty != s_empty
    return max(0.0, 1.0 - score(primary, shadow).wer), False


class Ledger:
    """The recent sessions (see the module docstring)."""

    def __init__(self, max_sessions: int = 2000) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()

    def open(
        self,
        stream_id: str,
        variant: str,
        role: str,
        shadow: str | None,
        shared_segments: bool,
        principal: str | None = None,
    ) -> None:
        self.put(SessionRecord(stream_id, variant, role, shadow, shared_segments, principal))

    def put(self, record: SessionRecord) -> None:
        """Keep ``record`` (a new session, or one another replica kept), as the newest."""
        self._sessions[record.stream_id] = record
        self._sessions.move_to_end(record.stream_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def get(self, stream_id: str) -> SessionRecord | None:
        return self._sessions.get(stream_id)

    def final(self, stream_id: str, piece: Piece) -> list[Comparison]:
        rec = self._sessions.get(stream_id)
        if rec is None:
            return []
        rec.finals[piece.index] = piece
        return self._compare(rec)

    def shadow_queued(self, stream_id: str) -> None:
        rec = self._sessions.get(stream_id)
        if rec is not None:
            rec.shadow_pending += 1

    def shadow_done(self, stream_id: str, pieces: list[Piece] | None) -> tuple[list[Comparison], list[Score]]:
        """The shadow's transcripts of one job (None: it was shed or failed); returns the new
        comparisons, and the scores of feedback that waited for the shadow."""
        rec = self._sessions.get(stream_id)
        if rec is None:
            return [], []
        rec.shadow_pending = max(0, rec.shadow_pending - 1)
        if pieces is None:
            rec.shadow_lost += 1
        for piece in pieces or ():
            rec.shadow_pieces[piece.index] = piece
        return self._compare(rec), self._waiting_scores(rec)

    def ended(self, stream_id: str) -> tuple[list[Comparison], list[Score]]:
        rec = self._sessions.get(stream_id)
        if rec is None:
            return [], []
        rec.ended = True
        return self._compare(rec), self._waiting_scores(rec)

    def _waiting_scores(self, rec: SessionRecord) -> list[Score]:
        """Feedback that waited for the shadow, scored now that its transcript is complete
        (dropped where the shadow's work was shed: a missing transcript is not an error of it)."""
        scores, waiting = [], []
        for segment, text in rec.references:
            ready = rec.shadow_ready(segment)
            if ready:
                scores.append(self._score(rec, rec.shadow, "shadow", text, rec.shadow_text(segment)))
            elif ready is False:
                waiting.append((segment, text))
        rec.references = waiting
        return scores

    def unknown(self, stream_id: str) -> KeyError:
        """The error of a session this ledger does not know; also what a caller who may not see
        a session is told, word for word, so that the answer never reveals that it exists."""
        return KeyError(f"unknown session {stream_id!r} (sessions are kept for the last {self.max_sessions} streams)")

    def feedback(self, stream_id: str, segment: int | None, text: str, counted: bool = True) -> list[Score]:
        """Score a human reference against each variant that transcribed the audio. Raises
        KeyError for an unknown session or segment. The shadow is scored now if its transcripts
        are in, else once they are (returned by :meth:`shadow_done`).

        ``counted=False`` (client feedback): kept apart on the session
        (:attr:`SessionRecord.client_references`) and scored for the answer only; it never waits
        for the shadow, so nothing of it reaches a figure later either."""
        rec = self._sessions.get(stream_id)
        if rec is None:
            raise self.unknown(stream_id)
        if segment is not None and segment not in rec.finals:
            known = ", ".join(str(i) for i in sorted(rec.finals)) or "none yet"
            raise KeyError(f"session {stream_id!r} has no final for segment {segment} (finals: {known})")
        scores = [self._score(rec, rec.variant, rec.role, text, rec.text(rec.finals, segment))]
        if not counted:
            rec.client_references = [*rec.client_references, (segment, text)][-MAX_CLIENT_REFERENCES:]
        if rec.shadow:
            ready = rec.shadow_ready(segment)
            if ready:
                scores.append(self._score(rec, rec.shadow, "shadow", text, rec.shadow_text(segment)))
            elif ready is False and counted:
                rec.references.append((segment, text))
        return scores

    @staticmethod
    def _score(rec: SessionRecord, variant: str, role: str, reference: str, hypothesis: str) -> Score:
        result = score(reference, hypothesis)
        return Score(variant, role, result.errors, result.ref_words, hypothesis)

    def _compare(self, rec: SessionRecord) -> list[Comparison]:
        """Segments both sides have transcribed and that were not compared yet. With its own VAD
        the shadow is compared once the stream is over and all of its work is in."""
        if rec.shadow is None:
            return []
        if not rec.shared_segments and not (rec.ended and rec.shadow_pending == 0):
            return []
        out = []
        for index in sorted(rec.finals):
            if index in rec.compared or (rec.shared_segments and index not in rec.shadow_pieces):
                continue
            rec.compared.add(index)
            value, mismatch = agreement(rec.finals[index].text, rec.shadow_text(index))
            out.append(Comparison(rec.stream_id, index, value, mismatch))
        return out
