"""The deploy controller's admin actions (``POST /admin/deploy``): a base class of
:class:`~speechpipe.pipeline.deploy.controller.DeployController`, which holds the state they act
on and records their changes (``_record``, ``_rollback``, ``_promote``, ``_new_window``). Pure and
synchronous, like the controller: time comes in as ``now``; an action that cannot be carried out
raises :class:`~speechpipe.pipeline.deploy.events.DeployError` saying why, changing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from speechpipe.pipeline.deploy.events import Change, DeployError

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


class AdminActions:
    """The admin actions of a deploy controller (see :meth:`apply`)."""

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
        self._golden_block("switch", target)
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
        if self.state in ("gating", "refused"):
            raise DeployError(f"rollback: {self.candidate!r} takes no traffic ({self.mode} {self.state})")
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
            self._golden_block("promote", self._other())
            self.active = self._other()
            return self._record(now, "promote", reason, "switched")
        if not self.candidate:
            raise DeployError(f"promote: the {self.mode} was promoted already; {self.primary!r} is the primary")
        self._golden_block("promote", self.candidate)
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
        if (float(weight) if variant == self.candidate else 1.0 - float(weight)) > 0:
            self._golden_block("set_weight", self.candidate)
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
