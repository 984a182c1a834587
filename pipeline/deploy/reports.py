"""What a live deployment reports to the server's observers (telemetry turns them into spans and
metrics, drift monitoring takes the human scores): every event names the variant and its role
then. Re-exported by :mod:`~speechpipe.pipeline.deploy.deployment`, which emits them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WeightChanged:
    """A variant's share of new streams moved by ``delta`` (its first weight at start)."""

    variant: str
    role: str
    delta: float


@dataclass(frozen=True)
class DeployChanged:
    """A change of the deployment (``doc``: the change as its history keeps it)."""

    variant: str
    role: str
    action: str
    reason: str
    doc: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RolledBack:
    """A rollback, by the gate that failed first (``admin`` when someone asked for it)."""

    variant: str
    role: str
    gate: str


@dataclass(frozen=True)
class ShadowSegment:
    """A shadow job ended: ``done`` (after ``latency_s``), ``failed`` or ``shed``."""

    variant: str
    role: str
    outcome: str
    latency_s: float | None


@dataclass(frozen=True)
class ShadowScored:
    """The shadow's transcript of a segment compared with the primary's."""

    variant: str
    role: str
    agreement: float
    empty_mismatch: bool


@dataclass(frozen=True)
class FeedbackScored:
    """A human reference scored against a variant's transcript of the same audio: of ``session``
    (whole when ``segment`` is None), "" when not known."""

    variant: str
    role: str
    errors: int
    words: int
    session: str = ""
    segment: int | None = None


@dataclass(frozen=True)
class ClientFeedback:
    """Feedback from a principal whose feedback does not count (a client with the ``stream``
    scope only), scored against the variant that served it: reported apart, never scored into
    the gates, drift or review figures (telemetry counts it as ``speechpipe.feedback.client``)."""

    variant: str
    role: str
    errors: int
    words: int
