"""Telemetry of deployments: changes (a span with its event, a metric, a log line), weights,
shadow work and its agreement with the primary, and human feedback scored per variant, the
pieces of feedback that count and those of clients (``stream`` scope only) counted apart.

Each function takes the :class:`~speechpipe.telemetry.instruments.Instrumentation` labelled for
the variant concerned (its ``pipeline.variant``, ``pipeline.variant_id`` and ``deploy.role``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context

from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation

log = logging.getLogger("speechpipe.deploy")


def deploy_changed(inst: Instrumentation, action: str, reason: str, figures: Mapping[str, Any]) -> None:
    """One change of the deployment: a ``deploy`` span with a ``deploy.change`` event carrying
    ``figures`` (JSON where not a plain value), the ``deploy.changes`` counter, and a log line."""
    attrs = inst.base_attributes()
    inst.instruments[n.DEPLOY_CHANGES].add(1, attrs | {n.DEPLOY_ACTION: action})
    event = {n.DEPLOY_ACTION: action, "deploy.reason": reason}
    for key, value in figures.items():
        event[f"deploy.{key}"] = value if isinstance(value, (str, bool, int, float)) else json.dumps(value)
    with inst.tracer.start_as_current_span(n.SPAN_DEPLOY, context=Context(), attributes=attrs) as span:
        span.add_event(n.EVENT_DEPLOY_CHANGE, event)
    refused = action == "golden" and reason.startswith("refused")
    level = logging.WARNING if action in ("rollback", "revert") or refused else logging.INFO
    log.log(level, "deploy: %s (%s) %s", action, reason, json.dumps(dict(figures), default=str))


def rolled_back(inst: Instrumentation, gate: str) -> None:
    """A canary went back to 0 % because ``gate`` failed (``admin`` when rolled back by hand)."""
    inst.instruments[n.DEPLOY_ROLLBACKS].add(1, inst.base_attributes() | {n.DEPLOY_GATE: gate})


def weight_changed(inst: Instrumentation, delta: float) -> None:
    """The share of new streams routed to this variant changed by ``delta``."""
    if delta:
        inst.instruments[n.DEPLOY_WEIGHT].add(delta, inst.base_attributes())


def shadow_segment(inst: Instrumentation, outcome: str, latency_s: float | None = None) -> None:
    """A shadow job ended: ``done`` (``latency_s`` after its segment closed), ``shed`` (never run:
    load) or ``failed``."""
    attrs = inst.base_attributes()
    inst.instruments[n.SHADOW_SEGMENTS].add(1, attrs | {n.SHADOW_OUTCOME: outcome})
    if latency_s is not None:
        inst.instruments[n.SHADOW_LATENCY].record(max(0.0, latency_s), attrs)


def shadow_scored(inst: Instrumentation, agreement: float, empty_mismatch: bool) -> None:
    """A shadow segment compared with the primary's final of the same audio."""
    attrs = inst.base_attributes() | {n.SHADOW_EMPTY_MISMATCH: empty_mismatch}
    inst.instruments[n.SHADOW_AGREEMENT].record(agreement, attrs)


def feedback_scored(inst: Instrumentation, errors: int, words: int) -> None:
    """Human feedback scored against this variant's transcript: ``errors`` in ``words`` reference words."""
    attrs = inst.base_attributes()
    inst.instruments[n.FEEDBACK_WORDS].add(words, attrs)
    inst.instruments[n.FEEDBACK_ERRORS].add(errors, attrs)


def feedback_counted(inst: Instrumentation) -> None:
    """One piece of feedback that counts, on a session this variant served (a shadow's scores of
    the same feedback are not another piece of it)."""
    inst.instruments[n.FEEDBACK_COUNTED].add(1, inst.base_attributes())


def client_feedback(inst: Instrumentation) -> None:
    """One piece of client feedback (``stream`` scope only) on a session this variant served:
    counted apart from the feedback that counts, so a flood of it shows without moving anything."""
    inst.instruments[n.FEEDBACK_CLIENT].add(1, inst.base_attributes())
