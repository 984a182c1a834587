"""What the live core asks its connection to do, and what it is given to work with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from speechpipe.pipeline.config import ServerSettings
from speechpipe.pipeline.hooks import AsrJob, Observer
from speechpipe.pipeline.protocol import Resume
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings
from speechpipe.stages.vad import VadConfig


@dataclass(frozen=True)
class Send:
    """Send ``message`` (a protocol message, JSON) to the client, after those sent before."""

    message: dict


@dataclass(frozen=True)
class SubmitFinal:
    """Queue a final job on the scheduler; ``on_leave`` is called when it leaves the queue."""

    job: AsrJob
    on_leave: Callable[[], None]


@dataclass(frozen=True)
class OfferSide:
    """Offer a partial or speculative job for the stream's slot on the scheduler."""

    job: AsrJob
    on_leave: Callable[[], None]


@dataclass(frozen=True)
class DropSide:
    """Drop the stream's queued partial or speculative job (its segment changed)."""


@dataclass(frozen=True)
class Promote:
    """Serve the queued speculative ``job`` as a final: the segment closed as it predicted."""

    job: AsrJob


@dataclass(frozen=True)
class Reuse:
    """The speculative ``job`` had already run when its segment closed as predicted: its
    transcription is the final (the scheduler counts its call as the final's work)."""

    job: AsrJob


@dataclass(frozen=True)
class Fetch:
    """``start`` resumes ``session``: look its record up where the server keeps sessions (off the
    event loop: a shared store may be another machine) and tell the core, which reads nothing more
    until then (:meth:`~speechpipe.pipeline.live.core.LiveCore.fetched`)."""

    session: str


@dataclass(frozen=True)
class SubmitShadow:
    """Queue a shadow variant's job (never shown to the client); its result is the shadow's."""

    job: AsrJob


@dataclass(frozen=True)
class SubmitReview:
    """Send a segment to the human review queue (its final has gone out, or goes with this).

    ``text`` is the AI's transcript (kept for scoring even where neither client nor reviewer sees
    it); ``draft`` what the reviewer starts from; ``confidence`` its mean word probability.
    ``audio`` is the clip the reviewer hears: ``margin_before_s`` of audio before the segment
    (``start_s`` to ``end_s``), the segment, and ``margin_after_s`` after it (an
    :class:`AddMargin` may bring more later). A ``vad_audit`` item holds audio the VAD rejected
    (``segment`` is then its negative key, :func:`~speechpipe.pipeline.review.policy.audit_key`)."""

    segment: int
    start_s: float
    end_s: float
    audio: np.ndarray = field(repr=False)
    reason: str = "level"
    text: str | None = None
    draft: str | None = None
    confidence: float | None = None
    margin_before_s: float = 0.0
    margin_after_s: float = 0.0


@dataclass(frozen=True)
class AddMargin:
    """More audio after a segment already sent to review: its clip held ``after_from_s`` seconds
    after the segment when it was sent (the audio had not come yet); ``audio`` follows them, and
    the clip then holds ``margin_after_s``."""

    segment: int
    audio: np.ndarray = field(repr=False)
    after_from_s: float
    margin_after_s: float


@dataclass(frozen=True)
class Close:
    """Send what is queued, then close the connection with ``code`` and ``reason``; the stream is over."""

    code: int
    reason: str


Action = (
    Send
    | SubmitFinal
    | OfferSide
    | DropSide
    | Promote
    | Reuse
    | Fetch
    | SubmitShadow
    | SubmitReview
    | AddMargin
    | Close
)
#: what a stream hands to the review queue
ReviewRequest = SubmitReview | AddMargin


@dataclass(frozen=True)
class LiveContext:
    """What a live stream needs from its server, and nothing more.

    Attributes:
        settings: the ``[server]`` limits and scheduling settings.
        vad: the VAD configuration of every stream.
        languages: language codes the model serves.
        model: the model name, told to the client in ``ready``.
        variant: the pipeline variant, told to the client in ``ready`` and on every final.
        stream_observers: builds the observers of a new stream's session from its id and the
            attributes of its audio format (telemetry).
        role: the variant's part in the deployment (``primary`` or ``candidate``), told in ``ready``.
        variant_id: the variant's config id, told in ``ready``.
        shadow_variant: a variant that transcribes the stream hidden beside it (shadow mode).
        shadow_vad: the shadow's VAD, when it differs from ``vad`` (a second VAD then runs on the
            same audio); None: the shadow transcribes the primary's own segments.
        on_shadow: given each shadow job and the future of its result (the deployment scores it).
        route: once ``start`` is read, gives the context of the variant that serves the stream,
            from the client's key in ``start`` (a canary's sticky routing) and the stream id.
        resume: once a ``start`` that resumes a session is read and the session fetched, gives
            the context of the variant that served it (raises a ProtocolError when the session
            is unknown, someone else's or still open); None: this route does not resume.
        fetch_session: looks a session up where the server keeps them (called off the event
            loop; raises when the store cannot answer).
        automation: the level of automation: what the client gets, what humans review.
        review: the ``[review]`` table: the margins of a segment sent to review, the audit of
            the audio the VAD rejected.
        on_review: given the stream id and each :class:`SubmitReview` and :class:`AddMargin`
            (None: no review queue).
        window_s / gap_s: the variant's Whisper window and the silence between packed pieces: an
            upload's finals are packed into windows of these, fixed by its audio, as offline.
    """

    settings: ServerSettings
    vad: VadConfig
    languages: tuple[str, ...]
    model: str
    variant: str
    stream_observers: Callable[[str, dict], Sequence[Observer]] | None = None
    role: str = "primary"
    variant_id: str = ""
    shadow_variant: str = ""
    shadow_vad: VadConfig | None = None
    on_shadow: Callable[[str, AsrJob, object], None] | None = None
    route: Callable[[str | None, str], LiveContext] | None = None
    resume: Callable[[Resume], LiveContext] | None = None
    fetch_session: Callable[[str], None] | None = None
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    on_review: Callable[[str, SubmitReview | AddMargin], None] | None = None
    window_s: float = 30.0
    gap_s: float = 0.2
    review: ReviewSettings = field(default_factory=ReviewSettings)


@dataclass
class StreamStats:
    """What a stream did, for logs and tests."""

    audio_s: float = 0.0
    messages: int = 0
    partials: int = 0
    speculative_used: int = 0
    lost: int = 0  # finals sent as lost (the server stopped or broke before they were ready)
    #: finals that did not begin with the words their partials had committed (live/captions.py)
    commits_broken: int = 0
    #: finals decoded a second time, with their segment's committed words as prefix (their words
    #: differed from them)
    commits_redecoded: int = 0
    #: the latency of every final sent, in order
    latencies: list[float] = field(default_factory=list)

    @property
    def finals(self) -> int:
        return len(self.latencies)
