"""The audio a stream's reviews need beyond the segment, Sans-I/O: the margins around each segment
sent to review, and the audit of the audio the VAD rejected (docs/review.md).

**Margins.** A reviewer hears ``[review] margin_s`` of audio before and after the segment, so
the words the VAD cut off are heard and counted as its cuts. A margin holds only audio the VAD
rejected, and no sample is in two margins: it stops halfway to the neighbouring segment (whose
words are not cuts of this one), so two segments closer than twice the margin share the gap. The before-margin is taken when the
VAD announces the segment (its start is known then), the after-margin once that much audio has
come after its end. A segment's review leaves with its final, whatever the after-margin holds by
then (its client may have been told ``review: pending``, which must not wait): when more of the
after-margin comes later, :class:`AddMargin` brings it, and the stream's end sends what there is.
So nothing is ever held back, and a clip records the margins it really has (less at the start and
end of a stream).

**Rejected audio.** Everything outside the VAD's segments is audio it rejected (a discarded
region included). The audit takes what lies farther than the margin from every segment (what is
nearer is a margin's, heard with its segment): so a word the reviewers hear is a cut or a miss,
never both. As the VAD settles it (:attr:`VadSegmenter.settled_sample`: no segment can hold
audio before it any more), it is cut into stretches: a stretch ends a margin before a segment
starts, or after ``vad_audit_max_s``; one shorter than ``vad_audit_min_s`` is not audited. A stretch whose hash of session and start falls below
``vad_audit_share`` goes to review with the reason ``vad_audit`` and no AI text.

**Memory.** :class:`AudioRing` holds the 16 kHz audio still needed: from the earliest of the next
before-margin (the settled sample less the margin), the after-margins not yet complete, and the
rejected stretch being cut. While the VAD holds a segment open that is about the open segment
(which the VAD holds too, up to ``vad.max_segment_s``), else the margin, the pre-roll and one
stretch; a stream with no review queue keeps nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from speechpipe.pipeline.live.actions import Action, AddMargin, SubmitReview
from speechpipe.pipeline.review.policy import VAD_AUDIT, audit_key, vad_audited
from speechpipe.pipeline.review.settings import ReviewSettings
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment, SpeechStarted

_EMPTY = np.zeros(0, dtype=np.float32)


class AudioRing:
    """Contiguous 16 kHz stream audio from :attr:`start` to :attr:`end` (stream samples), kept as
    the blocks it came in (never copied until taken)."""

    def __init__(self, origin: int) -> None:
        self._blocks: deque[tuple[int, np.ndarray]] = deque()
        self.start = self.end = origin

    def add(self, start: int, audio: np.ndarray) -> None:
        if start != self.end:  # never happens with a session's tap; kept honest all the same
            self._blocks.clear()
            self.start = start
        self._blocks.append((start, audio))
        self.end = start + audio.size

    def take(self, a: int, b: int) -> np.ndarray:
        """A copy of the audio from ``a`` to ``b``, as far as it is held."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return _EMPTY
        parts = [x[max(0, a - s) : b - s] for s, x in self._blocks if s < b and s + x.size > a]
        return np.concatenate(parts).astype(np.float32, copy=False) if len(parts) > 1 else parts[0].copy()

    def trim(self, keep_from: int) -> None:
        """Let go of the blocks that end before ``keep_from``."""
        while self._blocks and self._blocks[0][0] + self._blocks[0][1].size <= keep_from:
            self._blocks.popleft()
        self.start = self._blocks[0][0] if self._blocks else self.end

    @property
    def held(self) -> int:
        """Samples held."""
        return self.end - self.start


@dataclass
class _Margins:
    """A segment's margins as they are gathered: the before-margin, and where its end lies."""

    before: np.ndarray
    end: int | None = None  # the segment's end sample, once it closed
    after: np.ndarray | None = None  # complete (the margin, or what the stream had)


@dataclass(frozen=True)
class _Extension:
    """A segment sent to review whose after-margin was short: ``have`` samples after ``end``."""

    segment: int
    end: int
    have: int


class ReviewAudio:
    """See the module docstring.

    Args:
        settings: the ``[review]`` table (the margin, the audit's share and lengths).
        session: the stream's session id (the audit's hash).
        origin: the stream sample of the stream's first audio (a resumed stream starts later).
    """

    def __init__(self, settings: ReviewSettings, session: str, origin: int = 0) -> None:
        self.session = session
        self.origin = origin
        self.margin = round(settings.margin_s * SAMPLE_RATE)
        self.share = settings.vad_audit_share
        self.min_len = round(settings.vad_audit_min_s * SAMPLE_RATE)
        self.max_len = round(settings.vad_audit_max_s * SAMPLE_RATE)
        self.ring = AudioRing(origin)
        self._margins: dict[int, _Margins] = {}
        self._extensions: list[_Extension] = []
        self._rejected_from = origin  # where the rejected stretch being cut began
        self._last_end: int | None = None  # where the last segment ended: margins share the gap
        self._settled = origin
        self._finished = False

    # -- inputs (the session's tap, its VAD events, its finals) -----------------------------------

    def fed(self, start: int, audio: np.ndarray) -> None:
        """16 kHz audio as the VAD gets it (the session's ``audio_tap``)."""
        self.ring.add(start, audio)

    def events(self, events: list) -> list[Action]:
        """The VAD's events of the audio just fed, in order: margins begun and ended, rejected
        stretches closed (their audits, if any)."""
        actions: list[Action] = []
        for ev in events:
            if isinstance(ev, SpeechStarted):
                actions += self._reject_upto(ev.start_sample - self.margin, closing=True)
                actions += self._close_afters(ev.start_sample)
                lo = max(ev.start_sample - self.margin, self.origin)
                if self._last_end is not None:
                    lo = max(lo, (self._last_end + ev.start_sample) // 2)
                self._margins[ev.index] = _Margins(self.ring.take(lo, ev.start_sample))
            elif isinstance(ev, SpeechSegment):
                actions += self._reject_upto(ev.start_sample - self.margin, closing=True)
                self._last_end = ev.end_sample
                self._rejected_from = ev.end_sample + self.margin
                self._margins.setdefault(ev.index, _Margins(_EMPTY)).end = ev.end_sample
            elif isinstance(ev, SpeechDiscarded):  # rejected: its audio stays in the stretch
                self._margins.pop(ev.index, None)
        return actions

    def settle(self, settled: int) -> list[Action]:
        """The VAD settled the audio before ``settled``: rejected stretches that reached
        ``vad_audit_max_s`` are cut, after-margins completed; the ring lets go of what no review
        needs any more."""
        self._settled = max(self._settled, settled)
        # a segment to come starts at the settled sample or later: its margin is not cut into
        actions = self._reject_upto(self._settled - self.margin, closing=False) + self._complete_margins()
        self._trim()
        return actions

    def finish(self) -> list[Action]:
        """The stream's audio is over: the rejected tail, and every margin with what there is."""
        self._finished = True
        self._settled = self.ring.end
        actions = self._reject_upto(self.ring.end, closing=True) + self._complete_margins()
        self._trim()
        return actions

    def reviewed(self, segment: int, actions: list[Action]) -> list[Action]:
        """A segment's final was made (``actions`` are its final's): its review, if any, gets its
        margins, and the segment is forgotten."""
        m = self._margins.pop(segment, None)
        out: list[Action] = []
        for a in actions:
            if isinstance(a, SubmitReview) and a.segment == segment and m is not None:
                a = self._clip(a, m)
            out.append(a)
        return out

    # -- margins -------------------------------------------------------------------------------------

    def _clip(self, request: SubmitReview, m: _Margins) -> SubmitReview:
        end = m.end if m.end is not None else round(request.end_s * SAMPLE_RATE)
        # a segment to come starts at the settled sample or later: halfway to it is the margin's
        after = m.after if m.after is not None else self.ring.take(end, min(end + self.margin, self._safe(end)))
        if m.after is None and after.size < self.margin and not self._finished:  # the rest comes later
            self._extensions.append(_Extension(request.segment, end, after.size))
        audio = np.concatenate([m.before, np.asarray(request.audio, dtype=np.float32), after])
        return replace(
            request,
            audio=audio,
            margin_before_s=m.before.size / SAMPLE_RATE,
            margin_after_s=after.size / SAMPLE_RATE,
        )

    def _safe(self, end: int) -> int:
        """How far after ``end`` a margin may reach now: halfway to the settled sample, before
        which no segment to come can start (all the audio there is, once the stream ended)."""
        return self.ring.end if self._finished else min(self.ring.end, (end + self._settled) // 2)

    def _close_afters(self, start: int) -> list[Action]:
        """A segment starts at ``start``: the after-margins still gathering stop halfway to it (the
        rest of the gap is its before-margin)."""
        for m in self._margins.values():
            if m.end is not None and m.after is None:
                m.after = self.ring.take(m.end, min(m.end + self.margin, (m.end + start) // 2))
        actions = [a for x in self._extensions for a in self._extend(x, min(x.end + self.margin, (x.end + start) // 2))]
        self._extensions = []
        return actions

    def _complete_margins(self) -> list[Action]:
        """After-margins whose audio has all come (or that the stream's end completes)."""
        for m in self._margins.values():
            if m.end is not None and m.after is None and (self._finished or self._safe(m.end) >= m.end + self.margin):
                m.after = self.ring.take(m.end, m.end + self.margin)
        actions: list[Action] = []
        waiting: list[_Extension] = []
        for x in self._extensions:
            if self._finished or self._safe(x.end) >= x.end + self.margin:
                actions += self._extend(x, x.end + self.margin)
            else:
                waiting.append(x)
        self._extensions = waiting
        return actions

    def _extend(self, x: _Extension, upto: int) -> list[Action]:
        """The rest of ``x``'s after-margin, up to stream sample ``upto`` (none if nothing came)."""
        more = self.ring.take(x.end + x.have, upto)
        if not more.size:
            return []
        return [AddMargin(x.segment, more, x.have / SAMPLE_RATE, (x.have + more.size) / SAMPLE_RATE)]

    # -- rejected audio --------------------------------------------------------------------------------

    def _reject_upto(self, upto: int, closing: bool) -> list[Action]:
        """Cut the rejected audio from where the stretch began to ``upto`` (settled): whole
        pieces of ``vad_audit_max_s``, and when ``closing`` (a segment starts there, or the stream
        ended) the rest."""
        if self.share <= 0:
            return []
        actions: list[Action] = []
        while upto - self._rejected_from >= self.max_len:
            actions += self._audit(self._rejected_from, self._rejected_from + self.max_len)
            self._rejected_from += self.max_len
        if closing:
            if upto - self._rejected_from >= self.min_len:
                actions += self._audit(self._rejected_from, upto)
            self._rejected_from = max(self._rejected_from, upto)
        return actions

    def _audit(self, a: int, b: int) -> list[Action]:
        a = max(a, self.ring.start)  # never short of audio with a session's tap; kept honest all the same
        if b - a < self.min_len or not vad_audited(self.session, a, self.share):
            return []
        audio = self.ring.take(a, b)
        return [SubmitReview(audit_key(a), a / SAMPLE_RATE, b / SAMPLE_RATE, audio, reason=VAD_AUDIT)]

    # -- memory ------------------------------------------------------------------------------------------

    def _trim(self) -> None:
        keep = [self.ring.end]
        if self.margin:
            keep.append(self._settled - self.margin)
            keep += [m.end for m in self._margins.values() if m.end is not None and m.after is None]
            keep += [x.end + x.have for x in self._extensions]
        if self.share > 0:
            keep.append(self._rejected_from)
        self.ring.trim(min(keep))
