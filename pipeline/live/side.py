"""A live stream's slot for non-final ASR work: the partial transcript of the open segment, or the
speculative job that transcribes it as it will close if the pause lasts.

One job at a time per stream. :class:`SideSlot` decides when to offer one, tells a closing
segment whether the speculative job predicted it exactly (then its transcription is the final),
and turns results into ``partial`` messages. Every result that does not become a final is handed
to the session once, so that observers account for the work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.config import ServerSettings
from speechpipe.pipeline.hooks import AsrJob, JobKind, SegmentCaptioned
from speechpipe.pipeline.live.actions import Action, DropSide, OfferSide, Send, StreamStats
from speechpipe.pipeline.live.captions import Captions
from speechpipe.pipeline.session import StreamSession, same_audio
from speechpipe.stages.asr import Transcript
from speechpipe.stages.pcm import SAMPLE_RATE

Result = tuple  # (transcripts, AsrRun)


@dataclass
class Side:
    """The stream's partial or speculative job, from the offer to its result."""

    job: AsrJob
    result: Result | None = None
    done: bool = False  # its result came back, or it was dropped
    used: bool = False  # it became a final
    reported: bool = False  # given to the session (and so its observers) already

    @property
    def index(self) -> int:
        return self.job.pieces[0].index

    @property
    def live_guess(self) -> bool:
        """A speculative job still waiting: its prediction may yet come true."""
        return self.job.kind is JobKind.SPECULATIVE and not self.used and not self.done


class SideSlot:
    """The slot of one stream's session (see the module docstring)."""

    def __init__(self, session: StreamSession, settings: ServerSettings, partials: bool, stats: StreamStats) -> None:
        self.session = session
        self.settings = settings
        self.partials = partials  # the client wants partial transcripts
        self.stats = stats
        self.current: Side | None = None
        self._pending: dict[int, Side] = {}  # jobs whose result has not come back
        self._spec_seen: set[tuple[int, int, int]] = set()
        self._last_partial_len = 0
        #: the open segment's committed words (each partial's ``stable``)
        self.captions = Captions(
            commit=settings.partial_commit,
            hold=settings.partial_hold_words,
            min_probability=settings.partial_min_probability,
            tail_words=settings.partial_tail_words,
        )
        self._started_at: dict[int, float] = {}  # speech_start of segments without a final yet
        self._first_partial: dict[int, float] = {}  # ... and the time their first partial was shown

    # -- segments -------------------------------------------------------------------------------

    def segment_started(self, index: int, now: float) -> None:
        self._last_partial_len = 0
        self._started_at[index] = now

    def captioned(self, index: int, text: str, again: bool = False) -> SegmentCaptioned | None:
        """The segment's final is ``text`` (``again``: decoded a second time, with the committed
        words as prefix): what its captions cost (for a client that wants partials; None
        otherwise)."""
        started, first = self._started_at.pop(index, None), self._first_partial.pop(index, None)
        if not self.partials:
            return None
        report = self.captions.final(index, text)
        return SegmentCaptioned(
            self.session.stream_id,
            index,
            report.partials,
            None if first is None or started is None else max(0.0, first - started),
            report.erased_chars,
            report.stable_erased_chars,
            report.final_chars,
            report.kept,
            again,
        )

    def segment_over(self) -> None:
        self._spec_seen.clear()

    def discarded(self, index: int) -> None:
        """The VAD discarded segment ``index``: it gets no final."""
        self.captions.forget(index)
        self._started_at.pop(index, None)
        self._first_partial.pop(index, None)

    def drop_if_stale(self, finals_made: bool) -> list[Action]:
        """Drop the waiting job once its segment is over and it did not become the final."""
        side = self.current
        if (
            (finals_made or self.session.vad.open_index is None)
            and side is not None
            and not side.used
            and not side.done
        ):
            return [DropSide()]
        return []

    def claim(self, final: AsrJob) -> Side | None:
        """The speculative job whose audio is exactly ``final``'s (its transcription is the final),
        or None; a claimed job is used, and no longer dropped."""
        side = self.current
        # Its prefix may be shorter than the final's: words its own result committed, shown as a
        # partial during the hangover, are words its transcript begins with.
        if side is None or side.job.kind is not JobKind.SPECULATIVE or side.used or not same_audio(side.job, final):
            return None
        if side.done and side.result is None:
            return None  # dropped before the segment closed
        side.used = True
        self.stats.speculative_used += 1
        return side

    def prefixed(self, job: AsrJob | None) -> AsrJob | None:
        """``job`` decoded on from its segment's committed words (Whisper's prefix), so that its
        transcript keeps them. Jobs of several segments, and segments without committed words,
        are left as they are."""
        if job is None or not self.settings.partial_commit or len(job.pieces) != 1:
            return job
        stable = self.captions.stable(job.pieces[0].index)
        return replace(job, decoding=replace(job.decoding, prefix=stable)) if stable else job

    def settled(
        self, job: AsrJob, transcripts: list[Transcript], again: bool
    ) -> tuple[list[Transcript], AsrJob | None]:
        """A final's transcripts as they go out: each begins with its segment's committed words as
        they were shown, where its words are those (:meth:`Captions.splice`: same words, same
        WER). A final whose words differ from them is decoded again with them as its prefix (the
        job returned; ``again``: this is that decode, and it goes out as it is, counted where it
        still differs: the hallucination guard dropped the committed words)."""
        out = []
        for t in transcripts:
            text = self.captions.splice(t.index, t.text)
            if text is None and not again and len(job.pieces) == 1:
                return transcripts, self.prefixed(job)
            out.append(t if text is None or text == t.text else _respelled(t, text))
        return out, None

    # -- offering ---------------------------------------------------------------------------------

    def next(self) -> list[Action]:
        """After new audio: void a guess that speech proved wrong, offer a speculative job during
        the hangover, or a partial once the open segment has grown enough."""
        session, vad, actions = self.session, self.session.vad, []
        side = self.current
        if side is not None and side.live_guess and not vad.pausing:
            actions.append(DropSide())  # speech resumed: the guess is void
        if self.settings.speculative:
            job = session.speculative_job()  # a final to be: decoded without a prefix, as finals are
            if job is not None:
                p = job.pieces[0]
                key = (p.index, p.start_sample, p.audio.size)
                if key not in self._spec_seen:
                    self._spec_seen.add(key)
                    return actions + self._offer(job)
        side = self.current
        if not self.partials or vad.open_index is None or (side is not None and not side.done):
            return actions  # one partial at a time per stream: the next one waits for this one
        if vad.pausing:
            return actions  # the segment may be closing: keep the worker free for its speculative job
        grown = session.stream_samples - vad.open_start
        shown = vad.open_index in self._first_partial
        interval = self.settings.partial_interval_s if shown else self.settings.partial_first_interval_s
        if grown - self._last_partial_len < interval * SAMPLE_RATE:
            return actions
        job = self.prefixed(session.partial_job())
        if job is None:
            return actions
        self._last_partial_len = grown
        return actions + self._offer(job)

    def _offer(self, job: AsrJob) -> list[Action]:
        old = self.current
        if old is not None and not old.used:
            self.report_unused(old)
        side = Side(job)
        self.current = side
        self._pending[job.job_id] = side
        self.session.job_queued(job)
        return [OfferSide(job, partial(self.session.job_dequeued, job))]

    # -- results ----------------------------------------------------------------------------------

    def done(self, job: AsrJob, result: Result | None) -> Side | None:
        """The job's result came back (None: dropped unrun); the side it belongs to, if still known."""
        side = self._pending.pop(job.job_id, None)
        if side is not None:
            side.done, side.result = True, result
        return side

    def shown(self, side: Side, streaming: bool, now: float) -> list[Action]:
        """The ``partial`` messages a finished job's result is worth (none once its segment is over)."""
        if side.result is None or side.used:
            return []
        # A partial superseded by the hangover's speculative job (the VAD paused within speech)
        # still shows the segment's first words: in a segment the VAD keeps pausing in, each
        # partial was superseded that way and the first words waited for the segment's end.
        first_words = side.job.kind is JobKind.PARTIAL and side.index not in self._first_partial
        superseded = side is not self.current and not first_words
        if not streaming or side.index != self.session.vad.open_index or superseded:
            self.report_unused(side)  # its segment closed differently, or it was superseded
            return []
        if side.job.kind is JobKind.PARTIAL:
            self.report_unused(side)  # a partial is done with once shown
        if not self.partials:
            return []  # a speculative job for a client that wants no partials: kept for the final
        actions: list[Action] = []
        for t in side.result[0]:
            probabilities = [w.probability for w in t.words]
            caption = self.captions.update(t.index, t.text, probabilities) if t.text.strip() else None
            if caption is None:
                continue  # nothing to show yet, or nothing new
            self.stats.partials += 1
            self._first_partial.setdefault(t.index, now)
            actions.append(Send(P.partial(t.index, t, caption.stable, caption.text)))
        return actions

    def report_unused(self, side: Side | None = None) -> None:
        """Hand a result that did not become a final to the session (and its observers), once;
        by default the current one's."""
        side = side or self.current
        if side is None or side.used or side.reported or side.result is None:
            return
        side.reported = True
        self.session.complete(side.job, *side.result)

    def clear(self) -> None:
        self.current = None
        self._pending.clear()


def _respelled(t: Transcript, text: str) -> Transcript:
    """``t`` with ``text``: its words spelled as ``text`` spells them where they are as many (the
    committed words' case and punctuation), else as they were."""
    spelled = text.split()
    words = t.words
    if len(spelled) == len(words):
        words = [replace(w, word=(" " if w.word.startswith(" ") else "") + s) for w, s in zip(words, spelled)]
    return replace(t, text=text, words=words)
