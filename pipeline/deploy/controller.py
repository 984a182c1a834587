"""The deploy controller: which variant serves each new stream, and the canary's steps, gates,
rollbacks and promotions. Pure and synchronous: time comes in as ``now`` (seconds, any clock the
caller keeps to), decisions go out as :class:`~speechpipe.pipeline.deploy.events.Change` records
(the caller persists and reports them). Admin actions are its :meth:`~DeployController.apply`.

States: ``stable`` (single), ``shadowing`` (shadow), ``progressing`` (a canary ramping), ``live``
(blue/green, nothing switched yet), ``switched`` (blue/green after a switch or a promote),
``rolled_back`` / ``promoted`` after those decisions, and ``reverted`` (canary / shadow: a
promotion undone by the ``revert`` action: the previous primary serves every new stream again).

Canary rules:

* A failing gate rolls back at once, as soon as both sides have its data, whatever the step's
  minimums (early rollback): a bad candidate should not keep its share of the users until the
  step is over. A gate without its minimum evidence (:func:`~speechpipe.pipeline.deploy.gates.minimum_evidence`)
  neither passes nor fails.
* A step advances only once it has lasted ``step_min_s`` and seen ``step_min_streams`` candidate
  streams end, and only if at least one gate passed: a step where nothing could be measured (no
  candidate finals at all) holds until something can.
* The gates compare the candidate's window (the current step) with the primary's. Where the
  primary has fewer than ``gates.min_finals`` finals in the window (at 100 % it gets no new
  streams) its figures over the whole rollout so far stand in.
* After the last step (1.0) passes, the candidate is promoted: it becomes the primary.
* ``pause`` stops every automatic decision, rollbacks included; the gates are still evaluated
  (for the snapshot), and routing keeps the current weights.

Routing: a canary stream goes to the candidate when ``share_of(key, candidate) < weight``, the key
being the client key (``sticky = "client"`` and one given) or the stream id, so as the weight
ramps a client once on the candidate stays on it.

Restart: ``state`` (a :meth:`DeployController.snapshot`, e.g. from the store) is resumed when its
history's last change belongs to the deployment the settings describe (same mode, primary and
candidate); a ``start`` change records the resume. Otherwise the settings win: the history is
kept, the deployment starts over, and the ``start`` change says what changed. The window's
figures are not saved: a resumed step starts a new window (its clock and counts start again).
"""

from __future__ import annotations

from collections.abc import Mapping

from speechpipe.pipeline.deploy.actions import AdminActions
from speechpipe.pipeline.deploy.events import Assignment, Change, DeployError, share_of
from speechpipe.pipeline.deploy.gates import GateResult, WindowStats, evaluate_gates
from speechpipe.pipeline.deploy.golden import GoldenVerdict
from speechpipe.pipeline.deploy.settings import DeploySettings

INITIAL_STATE = {"single": "stable", "shadow": "shadowing", "canary": "progressing", "bluegreen": "live"}
#: a canary's or shadow's states before its candidate takes traffic, with a golden set: being
#: evaluated on it, and refused by it (:mod:`~speechpipe.pipeline.deploy.golden`).
GATING, REFUSED = "gating", "refused"
#: the states each mode can be in.
STATES = {
    "single": ("stable",),
    "shadow": ("shadowing", "rolled_back", "promoted", "reverted", GATING, REFUSED),
    "canary": ("progressing", "rolled_back", "promoted", "reverted", GATING, REFUSED),
    "bluegreen": ("live", "switched", "rolled_back"),
}


#: the changes after which the gates compare a new window.
WINDOW_ACTIONS = frozenset({"start", "advance", "rollback", "promote", "set_weight", "revert", "golden"})


class DeployController(AdminActions):
    """See the module docstring.

    Args:
        settings: the ``[deploy]`` table with ``primary`` resolved; checked against ``variants``
            (a ValueError names a missing variant).
        variants: every configured variant's config id, by name.
        now: the time (seconds).
        state: a :meth:`snapshot` to resume from (a restart).
    """

    def __init__(
        self, settings: DeploySettings, variants: Mapping[str, str], now: float, state: dict | None = None
    ) -> None:
        settings.check(set(variants))
        self.settings = settings
        self.variants = dict(variants)
        self.mode = settings.mode
        self.load(state, now)

    def load(self, state: dict | None, now: float) -> None:
        """Start from ``state`` (a :meth:`snapshot`; None: from the settings), as a restart does:
        see the module docstring. A ``start`` change says what happened."""
        self.history: list[Change] = []
        self.streams: dict[str, int] = {name: 0 for name in self.variants}
        self.paused = False
        self.state = ""
        self.golden: dict | None = None  # the golden set's verdict (GoldenVerdict.to_dict)
        self._start_over()
        self.last_gates: list[GateResult] = []
        self._unkeyed = 0
        self._windows: dict[str, WindowStats] = {}
        self._baseline = WindowStats()
        self._window_started = now
        if state is None:
            self._new_window(now, keep_baseline=False)
            self._record(now, "start", f"deploy started: {self._describe(self.deployment)}", self._initial())
            return
        try:
            self.history = [Change.from_dict(c) for c in state.get("history", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged file must not stop a start
            self._new_window(now, keep_baseline=False)
            self._record(
                now,
                "start",
                f"the saved history could not be read ({exc!r}): the deployment starts over",
                self._initial(),
            )
            return
        saved = self.history[-1].deployment if self.history else {}
        if saved == self.deployment and state.get("mode") == self.mode and self._resume(state):
            self._new_window(now, keep_baseline=False)
            self._record(now, "start", f"restart: resumed the saved state ({self._where()})", self.state)
            return
        self._start_over()  # _resume may have taken part of the state before it gave up
        self.state = str(state.get("state", ""))  # the start's from_state: the one dropped
        self.streams = {name: 0 for name in self.variants}
        self._new_window(now, keep_baseline=False)
        why = (
            f"settings changed from {self._describe(saved)} to {self._describe(self.deployment)}: "
            f"the saved state is dropped, the deployment starts over"
            if saved != self.deployment
            else f"the saved state could not be resumed: {self._describe(self.deployment)} starts over"
        )
        self._record(now, "start", why, self._initial())

    def adopt(self, state: dict, now: float) -> list[Change] | None:
        """Take another replica's snapshot as this one's (a shared deployment: a change decided
        elsewhere): the routing state and the history, nothing recorded. Returns the changes new
        here; None when ``state`` is of another deployment or unreadable (nothing taken). A new
        change that starts a window (start, advance, rollback, promote, set_weight) starts one
        here, from the ``window.started_at`` of ``state``."""
        try:
            history = [Change.from_dict(c) for c in state.get("history", [])]
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        saved = history[-1].deployment if history else {}
        if saved != self.deployment or state.get("mode") != self.mode:
            return None
        mine = [c.to_dict() for c in self.history]
        common = 0
        while common < min(len(mine), len(history)) and mine[common] == history[common].to_dict():
            common += 1
        kept = (self.primary, self.candidate, self.active, self.paused, self.step, self.weight, self.state)
        streams = dict(self.streams)
        self._start_over()
        if not self._resume(state):
            self.primary, self.candidate, self.active, self.paused, self.step, self.weight, self.state = kept
            self.streams = streams
            return None
        self.history = history
        new = history[common:]
        if any(c.action in WINDOW_ACTIONS for c in new):
            window = state.get("window") if isinstance(state.get("window"), dict) else {}
            started = window.get("started_at", now)
            keep = not any(c.action in ("start", "promote", "revert") for c in new)
            self._new_window(float(started) if isinstance(started, int | float) else now, keep_baseline=keep)
        return new

    def begin_window(self, started: float) -> None:
        """A new window from ``started``, without the baseline (a shared deployment's new leader
        rebuilds the window from every replica's evidence since it began)."""
        self._new_window(started, keep_baseline=False)

    @property
    def deployment(self) -> dict[str, str]:
        """What the settings deploy: mode, primary, candidate (recorded on every change)."""
        return {"mode": self.mode, "primary": self.settings.primary, "candidate": self.settings.candidate}

    # -- routing ----------------------------------------------------------------------------------

    def assign(self, now: float, client_key: str | None = None, stream_id: str = "", count: bool = True) -> Assignment:
        """The variant of a new stream; see the module docstring for the canary's routing.
        ``count``: add it to the variant's streams (a shared deployment's leader counts every
        replica's instead)."""
        if self.mode == "bluegreen":
            out = Assignment(self.active, "primary")
        elif self.mode == "shadow" and self.state == "shadowing":
            out = Assignment(self.primary, "primary", shadow=self.candidate)
        elif self.mode == "canary" and self.candidate and self.weight > 0:
            if client_key and self.settings.sticky == "client":
                key = f"client:{client_key}"
            elif stream_id:
                key = f"stream:{stream_id}"
            else:  # nothing to hash: a count, so successive streams still spread over the weights
                self._unkeyed += 1
                key = f"unkeyed:{self._unkeyed}"
            if share_of(key, self.candidate) < self.weight:
                out = Assignment(self.candidate, "candidate")
            else:
                out = Assignment(self.primary, "primary")
        else:
            out = Assignment(self.primary, "primary")
        for name in (out.variant, out.shadow):
            if name and count:
                self.streams[name] = self.streams.get(name, 0) + 1
        return out

    def role_of(self, variant: str) -> str:
        """``primary``, ``candidate``, ``shadow`` (shadow mode's candidate), ``standby`` (blue/green's
        inactive one) or ``idle`` (configured but not deployed)."""
        if self.mode == "bluegreen":
            if variant == self.active:
                return "primary"
            return "standby" if variant in (self.primary, self.candidate) else "idle"
        if variant == self.primary:
            return "primary"
        if variant and variant == self.candidate:
            return "shadow" if self.mode == "shadow" else "candidate"
        return "idle"

    def weight_of(self, variant: str) -> float:
        """The share of new streams ``variant`` serves now (a shadow serves none)."""
        role = self.role_of(variant)
        if self.mode == "canary" and self.candidate:
            return {"candidate": self.weight, "primary": 1.0 - self.weight}.get(role, 0.0)
        return 1.0 if role == "primary" else 0.0

    def weights(self) -> dict[str, float]:
        """Each deployed (not idle) variant's share of the new streams."""
        return {name: self.weight_of(name) for name in self.variants if self.role_of(name) != "idle"}

    # -- what the streams produce -----------------------------------------------------------------
    # Figures of a variant that is not deployed now (e.g. the old primary's open streams after a
    # promotion) are dropped: they belong to no window.

    def stream_ended(self, variant: str, now: float) -> None:
        """A stream served by ``variant`` ended."""
        if variant in self._windows:
            self._windows[variant].streams_ended += 1

    def record_final(
        self,
        variant: str,
        now: float,
        *,
        latency_s: float | None = None,
        error: bool = False,
        empty: bool = False,
        avg_logprob: float | None = None,
        guard_dropped: bool = False,
        est_errors: float | None = None,
        est_words: float | None = None,
    ) -> None:
        """A final of ``variant`` (``error``: it failed or was lost; ``est_errors`` and
        ``est_words``: its expected word errors and reference words, estimated without a reference)."""
        if variant in self._windows:
            self._windows[variant].add_final(
                latency_s=latency_s,
                error=error,
                empty=empty,
                avg_logprob=avg_logprob,
                guard_dropped=guard_dropped,
                est_errors=est_errors,
                est_words=est_words,
            )

    def record_feedback(self, variant: str, now: float, errors: int, words: int) -> None:
        """Human feedback scored on ``variant``'s transcript: ``errors`` over ``words`` reference words."""
        if variant in self._windows:
            self._windows[variant].add_feedback(errors, words)

    def record_agreement(self, variant: str, now: float, score: float) -> None:
        """An agreement score between the candidate and the primary; it is the pair's figure, kept
        on the candidate's side whichever of the two ``variant`` names."""
        if self.candidate and variant in (self.primary, self.candidate):
            self._windows[self.candidate].add_agreement(score)

    # -- decisions --------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Change]:
        """Evaluate the gates; in a canary that runs (not paused), roll back or advance."""
        if not self.candidate or (self.mode, self.state) not in (("canary", "progressing"), ("shadow", "shadowing")):
            return []
        results = self.evaluate()
        self.last_gates = results
        if self.mode != "canary" or self.paused:
            return []
        failed = [g for g in results if g.passed is False]
        if failed:
            return [self._rollback(now, "; ".join(g.failure() for g in failed), results)]
        s = self.settings
        ended = self._windows[self.candidate].streams_ended
        if ended < s.step_min_streams or now - self._window_started < s.step_min_s:
            return []
        passed = [g for g in results if g.passed]
        if not passed or any(g.held for g in results):
            return []  # nothing measured yet, or a gate not sure yet: the step holds
        what = f"step {self.step} ({self.weight:.0%}) passed {len(passed)} of {len(results)} gates"
        if self.step >= len(s.steps) - 1:
            return [self._promote(now, f"{what}: the last step, promoted", results)]
        self.step += 1
        self.weight = s.steps[self.step]
        change = self._record(now, "advance", f"{what}: on to {self.weight:.0%}", self.state, results)
        self._new_window(now)
        return [change]

    def evaluate(self) -> list[GateResult]:
        """The gates over the current window (see the module docstring for the primary's side)."""
        if not self.candidate:
            return []
        primary = self._windows[self.primary]
        if primary.finals < self.settings.gates.min_finals:
            merged = WindowStats()
            merged.merge(self._baseline)
            merged.merge(primary)
            primary = merged
        return evaluate_gates(self._windows[self.candidate], primary, self.settings.gates)

    # -- the golden set (see :mod:`~speechpipe.pipeline.deploy.golden`) ------------------------------

    def _gated(self) -> bool:
        """A canary or shadow whose candidate must first pass the golden set."""
        return bool(self.settings.golden and self.settings.candidate) and self.mode in ("canary", "shadow")

    def _initial(self) -> str:
        return GATING if self._gated() else INITIAL_STATE[self.mode]

    def golden_wanted(self) -> tuple[str, str] | None:
        """``(primary, candidate)`` to evaluate on the golden set now (None: nothing to evaluate):
        a canary or shadow still ``gating``, or a blue/green pair without a verdict."""
        if not self.settings.golden:
            return None
        if self._gated() and self.state == GATING:
            return self.primary, self.candidate
        if self.mode == "bluegreen" and self.golden is None:
            return self.settings.primary, self.settings.candidate
        return None

    def record_golden(self, now: float, verdict: GoldenVerdict) -> Change | None:
        """The golden set's ``verdict``: a gating canary or shadow starts (its first step, its
        first copy) or is ``refused`` (no traffic); blue/green notes it (a switch to the candidate
        needs it passed). None when it is not the evaluation wanted now (the deployment moved on)."""
        if (verdict.primary, verdict.candidate) != self.golden_wanted():
            return None
        self.golden = verdict.to_dict()
        gate, text = verdict.gate(), verdict.describe()
        if self.mode == "bluegreen":
            what = "admitted" if verdict.passed else f"refused ({verdict.candidate} cannot be switched to)"
            return self._record(now, "golden", f"{what}: {text}", self.state, [gate])
        if not verdict.passed:
            return self._record(now, "golden", f"refused: {text}; {self.candidate} takes no traffic", REFUSED, [gate])
        if self.mode == "canary":
            self.step, self.weight = 0, self.settings.steps[0]
        change = self._record(now, "golden", f"admitted: {text}", INITIAL_STATE[self.mode], [gate])
        self._new_window(now)
        return change

    def _golden_block(self, action: str, variant: str) -> None:
        """Refuse an action that would send traffic to ``variant`` before the golden set admitted
        it (still evaluating, or refused), saying why with the figures."""
        if not self.settings.golden or variant != self.settings.candidate:
            return
        if self.golden is None:
            raise DeployError(
                f"{action}: {variant!r} is being evaluated against {self.settings.primary!r} on the golden set "
                f"({self.settings.golden}); it takes no traffic until it is admitted"
            )
        verdict = GoldenVerdict.from_dict(self.golden)
        if not verdict.passed:
            raise DeployError(f"{action}: {variant!r} was refused by the {verdict.describe()}")

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The deploy state, JSON-serialisable: what an admin reads and a restart resumes."""
        out: dict = {
            "mode": self.mode,
            "variants": {
                name: {
                    "role": self.role_of(name),
                    "weight": self.weight_of(name),
                    "streams": self.streams.get(name, 0),
                    "config_id": config_id,
                }
                for name, config_id in self.variants.items()
            },
            "step": self.step,
            "state": self.state,
            "history": [c.to_dict() for c in self.history],
        }
        if self.mode == "bluegreen":
            out["active"] = self.active
        out["paused"] = self.paused
        out["golden"] = self.golden
        out["window"] = {
            "started_at": self._window_started,
            "streams": {name: w.streams_ended for name, w in self._windows.items()},
            "finals": {name: w.finals for name, w in self._windows.items()},
            "figures": {name: w.figures() for name, w in self._windows.items()},
            "gates": [g.to_dict() for g in self.last_gates],
        }
        return out

    def _start_over(self) -> None:
        """The deployment as the settings start it."""
        s = self.settings
        self.primary, self.candidate = s.primary, (s.candidate if self.mode != "single" else "")
        self.active, self.paused = self.primary, False
        self.step = 0 if self.mode == "canary" and not self._gated() else -1
        self.weight = s.steps[0] if self.mode == "canary" and not self._gated() else 0.0

    def _resume(self, state: dict) -> bool:
        """Take mode-specific state from a snapshot; False when it does not make sense here."""
        name = state.get("state")
        if name not in STATES[self.mode]:
            return False
        if name == "promoted":
            self.primary, self.candidate, self.active = self.settings.candidate, "", self.settings.candidate
        if name in ("reverted", GATING, REFUSED):
            self.weight, self.step = 0.0, -1
        golden = state.get("golden")
        if isinstance(golden, dict) and all(
            self.variants.get(golden.get(k)) == golden.get(f"{k}_id") for k in ("primary", "candidate")
        ):
            self.golden = golden  # a verdict holds for the configurations it judged only
        variants = state.get("variants") or {}
        if self.mode == "canary" and self.candidate:
            weight = (variants.get(self.candidate) or {}).get("weight", self.weight)
            step = state.get("step", 0)
            if not isinstance(weight, int | float) or not 0 <= weight <= 1 or not isinstance(step, int):
                return False
            self.weight = float(weight)
            self.step = min(max(step, -1), len(self.settings.steps) - 1)  # the steps may have been edited
        else:
            self.weight, self.step = 0.0, -1
        if self.mode == "bluegreen":
            active = state.get("active", self.primary)
            if active not in (self.primary, self.candidate):
                return False
            self.active = active
        self.state = name
        self.paused = bool(state.get("paused", False)) and self.mode == "canary"
        for variant, doc in variants.items():
            if variant in self.streams and isinstance(doc, dict) and isinstance(doc.get("streams"), int):
                self.streams[variant] = doc["streams"]
        return True

    def _describe(self, deployment: Mapping[str, str]) -> str:
        mode, primary, candidate = (deployment.get(k, "") for k in ("mode", "primary", "candidate"))
        if not mode:
            return "an unknown deployment"
        if mode == "single":
            return f"single ({primary})"
        if mode == "bluegreen":
            return f"bluegreen ({primary} live, {candidate} standby)"
        return f"{mode} of {candidate} over {primary}"

    def _where(self) -> str:
        where = f"{self.mode}, {self.state}"
        if self.mode == "canary" and self.candidate:
            where += f", step {self.step}, {self.candidate} at {self.weight:.0%}"
        if self.mode == "bluegreen":
            where += f", {self.active} live"
        return where + (", paused" if self.paused else "")

    # -- changes ------------------------------------------------------------------------------------

    def _rollback(self, now: float, reason: str, gates: list[GateResult] = ()) -> Change:
        """Canary: the candidate's weight to 0; shadow: stop shadowing."""
        self.weight = 0.0
        change = self._record(now, "rollback", reason, "rolled_back", gates)
        self._new_window(now)
        return change

    def _promote(self, now: float, reason: str, gates: list[GateResult] = ()) -> Change:
        """Canary/shadow: the candidate becomes the primary, alone."""
        self.primary, self.candidate, self.active = self.candidate, "", self.candidate
        self.weight, self.step, self.paused = 0.0, -1, False
        change = self._record(now, "promote", reason, "promoted", gates)
        self._new_window(now, keep_baseline=False)
        return change

    def _new_window(self, now: float, keep_baseline: bool = True) -> None:
        """Start a new window for the deployed variants; the primary's old one joins the baseline."""
        if keep_baseline and self.primary in self._windows:
            self._baseline.merge(self._windows[self.primary])
        elif not keep_baseline:
            self._baseline = WindowStats()
        self._windows = {name: WindowStats() for name in (self.primary, self.candidate) if name}
        self._window_started = now
        self.last_gates = []

    def _record(self, now: float, action: str, reason: str, to_state: str, gates: list[GateResult] = ()) -> Change:
        change = Change(
            at=now,
            action=action,
            reason=reason,
            from_state=self.state,
            to_state=to_state,
            weights=self.weights(),
            step=self.step,
            gates=list(gates),
            deployment=self.deployment,
        )
        self.state = to_state
        self.history.append(change)
        return change
