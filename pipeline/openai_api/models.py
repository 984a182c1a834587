"""Which served pipeline answers an OpenAI request's ``model``, and ``GET /v1/models`` (pure).

* ``speechpipe`` (and ``whisper-1``, the name OpenAI clients send by default): the deployment
  decides, as for a WebSocket stream; canary, shadow and blue/green apply.
* the model name of the primary variant (``tiny.en``): the same, routed.
* a variant's name (``default``, ``candidate``...) or the model name of exactly one other variant:
  that variant itself (pinned; see
  :meth:`~speechpipe.pipeline.deploy.router.StreamRouter.pinned_context`).

Anything else is unknown (404 ``model_not_found``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the names that mean "whatever the deployment serves".
ROUTED_NAMES = ("speechpipe", "whisper-1")


@dataclass(frozen=True)
class ModelChoice:
    """``variant`` None: routed by the deployment; else that variant, pinned."""

    model: str
    variant: str | None


def choose(requested: str, models: dict[str, str], primary: str) -> ModelChoice | None:
    """The choice for ``requested`` among variants ``models`` (name -> model name), or None.

    ``requested`` empty is the routed default (OpenAI's SDK always sends a model, curl may not).
    """
    requested = requested.strip()
    if not requested or requested in ROUTED_NAMES:
        return ModelChoice(requested or ROUTED_NAMES[0], None)
    if requested in models:
        return ModelChoice(requested, requested)
    if requested == models.get(primary):
        return ModelChoice(requested, None)
    serving = [name for name, model in models.items() if model == requested]
    if len(serving) == 1:
        return ModelChoice(requested, serving[0])
    return None


def listing(models: dict[str, str], primary: str, created: int) -> dict:
    """``GET /v1/models``: the routed names, every variant, and their model names."""
    seen: set[str] = set()
    data = []
    for model_id in (*ROUTED_NAMES, *models, *models.values()):
        if model_id in seen or choose(model_id, models, primary) is None:
            continue  # a model name two non-primary variants share names neither
        seen.add(model_id)
        data.append({"id": model_id, "object": "model", "created": created, "owned_by": "speechpipe"})
    return {"object": "list", "data": data}
