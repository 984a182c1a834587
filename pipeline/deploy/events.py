"""What the deploy controller hands out: stream assignments, changes of the deployment, errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from speechpipe.pipeline.deploy.gates import GateResult

#: every action a :class:`Change` can record.
ACTIONS = ("start", "advance", "rollback", "promote", "switch", "set_weight", "pause", "resume", "revert", "golden")


class DeployError(ValueError):
    """An admin action that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Assignment:
    """Where a new stream goes.

    Attributes:
        variant: the variant whose transcripts the client gets.
        role: ``primary`` or ``candidate``.
        shadow: a variant to run hidden beside it on the same audio (shadow mode: the candidate),
            else None.
    """

    variant: str
    role: str
    shadow: str | None = None


@dataclass
class Change:
    """One change of the deployment, as kept in its history.

    Attributes:
        at: when (the caller's clock, seconds).
        action: one of :data:`ACTIONS`.
        reason: why, e.g. ``gate latency_p95_ratio failed: ...`` or ``admin``.
        from_state / to_state: the deploy state before and after.
        weights: after the change, each deployed variant's share of the new streams it serves.
        step: after the change, the index of the canary's step in ``deploy.steps`` (-1: none).
        gates: the gate results the decision was taken on (none for admin actions).
        deployment: the settings this change belongs to (mode, primary, candidate), so that a
            restart can tell whether a saved state is about the deployment configured now.
    """

    at: float
    action: str
    reason: str
    from_state: str
    to_state: str
    weights: dict[str, float]
    step: int
    gates: list[GateResult] = field(default_factory=list)
    deployment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable (the gates as dicts)."""
        return {
            "at": self.at,
            "action": self.action,
            "reason": self.reason,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "weights": dict(self.weights),
            "step": self.step,
            "gates": [g.to_dict() for g in self.gates],
            "deployment": dict(self.deployment),
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Change:
        """The inverse of :meth:`to_dict`."""
        return cls(
            at=float(doc["at"]),
            action=str(doc["action"]),
            reason=str(doc.get("reason", "")),
            from_state=str(doc.get("from_state", "")),
            to_state=str(doc.get("to_state", "")),
            weights={str(k): float(v) for k, v in doc.get("weights", {}).items()},
            step=int(doc.get("step", -1) if doc.get("step") is not None else -1),
            gates=[GateResult.from_dict(g) for g in doc.get("gates", [])],
            deployment={str(k): str(v) for k, v in doc.get("deployment", {}).items()},
        )


def share_of(key: str, salt: str = "") -> float:
    """Where ``key`` falls in [0, 1), from the first 8 bytes of sha256(salt NUL key).

    The same key always falls at the same place, so a weight that only grows keeps every key it
    already sent to the candidate there. The controller salts with the candidate's name, so that
    successive canaries do not always try a new variant on the same few clients.
    """
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
