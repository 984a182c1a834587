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

import math
from collections.abc import Mapping

from speechpipe.pipeline.deploy.events import Assignment, Change, DeployError, share_of
from speechpipe.pipeline.deploy.gates import GateResult, WindowStats, evaluate_gates
from speechpipe.pipeline.deploy.settings import DeploySettings

INITIAL_STATE = {"single": "stable", "shadow": "shadowing", "canary": "progressing", "bluegreen": "live"}
#: the states each mode can be in.
STATES = {
    "single": ("stable",),
    "shadow": ("shadowing", "rolled_back", "promoted", "reverted"),
    "canary": ("progressing", "rolled_back", "promoted", "reverted"),
    "bluegreen": ("live", "switched", "rolled_back"),
}


#: the changes after which the gates compare a new window.
WINDOW_ACTIONS = frozenset({"start", "advance", "rollback", "promote", "set_weight", "revert"})

#: each action's fields besides "action".
FIELDS: dict[str, tuple[str, ...]] = {
    "switch": ("active",),
    "rollback": (),
    "promote": (),
    "revert": (),
    "set_weight": ("variant", "weight"),
    "pause": (),
    "resume": (),
}


class DeployController:
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
        self._start_over()
        self.last_gates: list[GateResult] = []
        self._unkeyed = 0
        self._windows: dict[str, WindowStats] = {}
        self._baseline = WindowStats()
        self._window_started = now
        if state is None:
            self._new_window(now, keep_baseline=False)
            self._record(now, "start", f"deploy started: {self._describe(self.deployment)}", INITIAL_STATE[self.mode])
            return
        try:
            self.history = [Change.from_dict(c) for c in state.get("history", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged file must not stop a start
            self._new_window(now, keep_baseline=False)
            self._record(
                now,
                "start",
                f"the saved history could not be read ({exc!r}): the deployment starts over",
                INITIAL_STATE[self.mode],
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
        self._record(now, "start", why, INITIAL_STATE[self.mode])

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

    def apply(self, action: Mapping, now: float, reason: str = "admin") -> Change:
        """Carry out an admin action (``POST /admin/deploy``) at ``now``: the change, recorded in
        :attr:`history`; :class:`~speechpipe.pipeline.deploy.events.DeployError` saying why when it
        cannot be done.

        * ``{"action": "switch", "active": NAME}``: blue/green only; new streams go to NAME, which must be
          one of the pair (``deploy.primary``, ``deploy.candidate``); open streams keep their variant.
        * ``{"action": "rollback"}``: canary: the candidate's weight to 0 (state ``rolled_back``); shadow:
          stop shadowing; blue/green: switch back to the variant that was live before.
        * ``{"action": "promote"}``: canary / shadow: the candidate becomes the primary, at 100 %;
          blue/green: the standby goes live.
        * ``{"action": "revert"}``: canary / shadow after a promotion: back to the previous primary
          (``deploy.primary``), which serves every new stream again; the promoted variant is the
          candidate again at weight 0 (state ``reverted``: ``set_weight`` or ``promote`` may try it
          again). Blue/green goes back with ``rollback``.
        * ``{"action": "set_weight", "variant": NAME, "weight": W}``: canary only. NAME is the candidate
          (its weight becomes W) or the primary (its share becomes W, so the candidate's is 1 - W). W = 0
          is a rollback; otherwise the canary runs again from there: its next advance goes to the first
          step above the candidate's weight (W = 1.0: the last step, promoted once its gates pass).
        * ``{"action": "pause"}`` / ``{"action": "resume"}``: canary only; stop / restart the automatic
          decisions (advance, promote and rollback); routing keeps the current weights.
        """
        known = ", ".join(FIELDS)
        if not isinstance(action, Mapping):
            raise DeployError(f'an action is an object with "action": one of {known}; got {action!r}')
        name = action.get("action")
        if not isinstance(name, str) or not name:
            raise DeployError(f'an action needs "action": one of {known}')
        if name not in FIELDS:
            raise DeployError(f"unknown action {name!r}; known: {known}")
        extra = sorted(set(action) - {"action", *FIELDS[name]})
        if extra:
            takes = ", ".join(FIELDS[name]) or "no fields"
            raise DeployError(f"{name}: unknown field(s) {', '.join(map(str, extra))} ({name} takes {takes})")
        if self.mode == "single":
            raise DeployError(f"{name}: mode single deploys one variant ({self.primary}); there is nothing to {name}")
        return getattr(self, f"_action_{name}")(action, now, reason if isinstance(reason, str) and reason else "admin")

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
        self.step = 0 if self.mode == "canary" else -1
        self.weight = s.steps[0] if self.mode == "canary" else 0.0

    def _resume(self, state: dict) -> bool:
        """Take mode-specific state from a snapshot; False when it does not make sense here."""
        name = state.get("state")
        if name not in STATES[self.mode]:
            return False
        if name == "promoted":
            self.primary, self.candidate, self.active = self.settings.candidate, "", self.settings.candidate
        if name == "reverted":
            self.weight, self.step = 0.0, -1
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

    # -- admin actions (see :meth:`apply`) ----------------------------------------------------------

    def _named_variant(self, value: object, action: str, key: str) -> str:
        configured = ", ".join(self.variants)
        if not isinstance(value, str) or not value:
            raise DeployError(f'{action}: "{key}" must name a variant (configured: {configured})')
        if value not in self.variants:
            raise DeployError(f"{action}: unknown variant {value!r} (configured: {configured})")
        return value

    def _other(self) -> str:
        return self.candidate if self.active == self.primary else self.primary

    def _action_switch(self, action: Mapping, now: float, reason: str) -> Change:
        if self.mode != "bluegreen":
            raise DeployError(f"switch is a blue/green action; this deployment is {self.mode}")
        target = self._named_variant(action.get("active"), "switch", "active")
        if target not in (self.primary, self.candidate):
            raise DeployError(
                f"switch: {target!r} is not one of the blue/green pair ({self.primary}, {self.candidate})"
            )
        if target == self.active:
            raise DeployError(f"switch: {target!r} is live already")
        self.active = target
        return self._record(now, "switch", reason, "switched")

    def _action_rollback(self, action: Mapping, now: float, reason: str) -> Change:
        if self.mode == "bluegreen":
            if self.state == "live":
                raise DeployError(f"rollback: nothing to roll back to; {self.active!r} has been live since the start")
            self.active = self._other()
            return self._record(now, "rollback", reason, "rolled_back")
        if not self.candidate:
            raise DeployError(
                f"rollback: the {self.mode} was promoted; {self.primary!r} is the primary and there is no candidate"
            )
        if self.state in ("rolled_back", "reverted"):
            what = "rolled back" if self.state == "rolled_back" else "reverted to its primary"
            raise DeployError(f"rollback: the {self.mode} of {self.candidate!r} is {what} already")
        return self._rollback(now, reason)

    def _action_revert(self, action: Mapping, now: float, reason: str) -> Change:
        if self.mode == "bluegreen":
            raise DeployError(
                f"revert undoes a canary's or a shadow's promotion; blue/green goes back to the variant "
                f"live before with rollback ({self.active!r} is live)"
            )
        if self.candidate:
            raise DeployError(
                f"revert: nothing was promoted; {self.primary!r} is the primary "
                f"({'roll back' if self.state in ('progressing', 'shadowing') else 'set_weight'} acts on the candidate)"
            )
        previous, promoted = self.settings.primary, self.primary
        self.primary, self.candidate, self.active = previous, promoted, previous
        self.weight, self.step, self.paused = 0.0, -1, False
        change = self._record(now, "revert", reason, "reverted")
        self._new_window(now, keep_baseline=False)
        return change

    def _action_promote(self, action: Mapping, now: float, reason: str) -> Change:
        if self.mode == "bluegreen":
            self.active = self._other()
            return self._record(now, "promote", reason, "switched")
        if not self.candidate:
            raise DeployError(f"promote: the {self.mode} was promoted already; {self.primary!r} is the primary")
        return self._promote(now, reason)

    def _action_set_weight(self, action: Mapping, now: float, reason: str) -> Change:
        if self.mode != "canary":
            raise DeployError(f"set_weight is a canary action; this deployment is {self.mode}")
        variant = self._named_variant(action.get("variant"), "set_weight", "variant")
        if not self.candidate:
            raise DeployError(f"set_weight: the canary was promoted; {self.primary!r} serves every stream")
        if variant not in (self.primary, self.candidate):
            raise DeployError(f"set_weight: {variant!r} is not in this canary ({self.candidate} over {self.primary})")
        weight = action.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise DeployError(f"set_weight: weight must be a number from 0 to 1, not {weight!r}")
        if not 0.0 <= weight <= 1.0:
            raise DeployError(f"set_weight: weight must be from 0 to 1, not {weight!r}")
        self.weight = float(weight) if variant == self.candidate else 1.0 - float(weight)
        if self.weight == 0.0:
            to_state = "rolled_back"
        else:
            to_state = "progressing"
            at_or_below = [i for i, s in enumerate(self.settings.steps) if s <= self.weight + 1e-9]
            self.step = at_or_below[-1] if at_or_below else -1  # the next advance: the first step above
        change = self._record(now, "set_weight", reason, to_state)
        self._new_window(now)
        return change

    def _pausable(self, name: str) -> None:
        if self.mode != "canary":
            raise DeployError(f"{name}: only a canary steps by itself; this deployment is {self.mode}")
        if not self.candidate:
            raise DeployError(f"{name}: the canary was promoted; nothing steps any more")

    def _action_pause(self, action: Mapping, now: float, reason: str) -> Change:
        self._pausable("pause")
        if self.paused:
            raise DeployError("pause: the canary is paused already")
        self.paused = True
        return self._record(now, "pause", reason, self.state)

    def _action_resume(self, action: Mapping, now: float, reason: str) -> Change:
        self._pausable("resume")
        if not self.paused:
            raise DeployError("resume: the canary is not paused")
        self.paused = False
        return self._record(now, "resume", reason, self.state)

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
