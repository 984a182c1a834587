"""Admin actions on a :class:`~speechpipe.pipeline.deploy.controller.DeployController`.

An action is a JSON object (``POST /admin/deploy``):

* ``{"action": "switch", "active": NAME}``: blue/green only; new streams go to NAME, which must be
  one of the pair (``deploy.primary``, ``deploy.candidate``); open streams keep their variant.
* ``{"action": "rollback"}``: canary: the candidate's weight to 0 (state ``rolled_back``); shadow:
  stop shadowing; blue/green: switch back to the variant that was live before.
* ``{"action": "promote"}``: canary / shadow: the candidate becomes the primary, at 100 %;
  blue/green: the standby goes live.
* ``{"action": "set_weight", "variant": NAME, "weight": W}``: canary only. NAME is the candidate
  (its weight becomes W) or the primary (its share becomes W, so the candidate's is 1 - W). W = 0
  is a rollback; otherwise the canary runs again from there: its next advance goes to the first
  step above the candidate's weight (W = 1.0: the last step, promoted once its gates pass).
* ``{"action": "pause"}`` / ``{"action": "resume"}``: canary only; stop / restart the automatic
  decisions (advance, promote and rollback); routing keeps the current weights.

Anything else raises :class:`~speechpipe.pipeline.deploy.events.DeployError` saying why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from speechpipe.pipeline.deploy.events import Change, DeployError

if TYPE_CHECKING:
    from speechpipe.pipeline.deploy.controller import DeployController

#: each action's fields besides "action".
FIELDS: dict[str, tuple[str, ...]] = {
    "switch": ("active",),
    "rollback": (),
    "promote": (),
    "set_weight": ("variant", "weight"),
    "pause": (),
    "resume": (),
}


def apply_action(ctl: DeployController, action: Mapping, now: float, reason: str = "admin") -> Change:
    """Carry out ``action`` on ``ctl`` at ``now``; the change, recorded in ``ctl.history``."""
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
    if ctl.mode == "single":
        raise DeployError(f"{name}: mode single deploys one variant ({ctl.primary}); there is nothing to {name}")
    return _HANDLERS[name](ctl, action, now, reason if isinstance(reason, str) and reason else "admin")


def _variant(ctl: DeployController, value: object, action: str, key: str) -> str:
    configured = ", ".join(ctl.variants)
    if not isinstance(value, str) or not value:
        raise DeployError(f'{action}: "{key}" must name a variant (configured: {configured})')
    if value not in ctl.variants:
        raise DeployError(f"{action}: unknown variant {value!r} (configured: {configured})")
    return value


def _other(ctl: DeployController) -> str:
    return ctl.candidate if ctl.active == ctl.primary else ctl.primary


def _switch(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    if ctl.mode != "bluegreen":
        raise DeployError(f"switch is a blue/green action; this deployment is {ctl.mode}")
    target = _variant(ctl, action.get("active"), "switch", "active")
    if target not in (ctl.primary, ctl.candidate):
        raise DeployError(f"switch: {target!r} is not one of the blue/green pair ({ctl.primary}, {ctl.candidate})")
    if target == ctl.active:
        raise DeployError(f"switch: {target!r} is live already")
    ctl.active = target
    return ctl._record(now, "switch", reason, "switched")


def _rollback(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    if ctl.mode == "bluegreen":
        if ctl.state == "live":
            raise DeployError(f"rollback: nothing to roll back to; {ctl.active!r} has been live since the start")
        ctl.active = _other(ctl)
        return ctl._record(now, "rollback", reason, "rolled_back")
    if not ctl.candidate:
        raise DeployError(
            f"rollback: the {ctl.mode} was promoted; {ctl.primary!r} is the primary and there is no candidate"
        )
    if ctl.state == "rolled_back":
        raise DeployError(f"rollback: the {ctl.mode} of {ctl.candidate!r} is rolled back already")
    return ctl._rollback(now, reason)


def _promote(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    if ctl.mode == "bluegreen":
        ctl.active = _other(ctl)
        return ctl._record(now, "promote", reason, "switched")
    if not ctl.candidate:
        raise DeployError(f"promote: the {ctl.mode} was promoted already; {ctl.primary!r} is the primary")
    return ctl._promote(now, reason)


def _set_weight(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    if ctl.mode != "canary":
        raise DeployError(f"set_weight is a canary action; this deployment is {ctl.mode}")
    variant = _variant(ctl, action.get("variant"), "set_weight", "variant")
    if not ctl.candidate:
        raise DeployError(f"set_weight: the canary was promoted; {ctl.primary!r} serves every stream")
    if variant not in (ctl.primary, ctl.candidate):
        raise DeployError(f"set_weight: {variant!r} is not in this canary ({ctl.candidate} over {ctl.primary})")
    weight = action.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise DeployError(f"set_weight: weight must be a number from 0 to 1, not {weight!r}")
    if not 0.0 <= weight <= 1.0:
        raise DeployError(f"set_weight: weight must be from 0 to 1, not {weight!r}")
    ctl.weight = float(weight) if variant == ctl.candidate else 1.0 - float(weight)
    if ctl.weight == 0.0:
        to_state = "rolled_back"
    else:
        to_state = "progressing"
        at_or_below = [i for i, s in enumerate(ctl.settings.steps) if s <= ctl.weight + 1e-9]
        ctl.step = at_or_below[-1] if at_or_below else -1  # the next advance: the first step above
    change = ctl._record(now, "set_weight", reason, to_state)
    ctl._new_window(now)
    return change


def _pausable(ctl: DeployController, name: str) -> None:
    if ctl.mode != "canary":
        raise DeployError(f"{name}: only a canary steps by itself; this deployment is {ctl.mode}")
    if not ctl.candidate:
        raise DeployError(f"{name}: the canary was promoted; nothing steps any more")


def _pause(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    _pausable(ctl, "pause")
    if ctl.paused:
        raise DeployError("pause: the canary is paused already")
    ctl.paused = True
    return ctl._record(now, "pause", reason, ctl.state)


def _resume(ctl: DeployController, action: Mapping, now: float, reason: str) -> Change:
    _pausable(ctl, "resume")
    if not ctl.paused:
        raise DeployError("resume: the canary is not paused")
    ctl.paused = False
    return ctl._record(now, "resume", reason, ctl.state)


_HANDLERS: dict[str, Callable[[DeployController, Mapping, float, str], Change]] = {
    "switch": _switch,
    "rollback": _rollback,
    "promote": _promote,
    "set_weight": _set_weight,
    "pause": _pause,
    "resume": _resume,
}
