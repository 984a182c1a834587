"""Deployment: which pipeline variant serves each new live stream, and how that changes.

The pure, synchronous core (no asyncio, threads or sockets; time is passed in, the caller
serialises the calls): ``settings`` (the ``[deploy]`` table), ``gates`` (a canary's window of
figures and its gates), ``events`` (assignments, changes, errors), ``controller`` (routing, canary
steps, rollbacks, promotions, admin actions, snapshots), ``store`` (the state in SQLite).

Around it: ``variants`` (the pipelines a server runs side by side), ``ledger`` (what each session
produced, per variant), ``deployment`` (the live service: one lock, the store, its reports as
events), ``router`` (what a new stream is given), ``part`` (the admin API, feedback and the gates'
tick, as a part of the server), ``cli`` (``speechpipe deploy``) and ``telemetry`` (spans, metrics
and logs of changes, which the server's telemetry part calls on the deployment's events).
"""

from speechpipe.pipeline.deploy.controller import DeployController
from speechpipe.pipeline.deploy.events import ACTIONS, Assignment, Change, DeployError, share_of
from speechpipe.pipeline.deploy.gates import GateResult, WindowStats, evaluate_gates, p95
from speechpipe.pipeline.deploy.settings import MODES, STICKY, DeploySettings, GateSettings
from speechpipe.pipeline.deploy.store import SCHEMA_VERSION, DeployStore

__all__ = [
    "ACTIONS",
    "MODES",
    "SCHEMA_VERSION",
    "STICKY",
    "Assignment",
    "Change",
    "DeployController",
    "DeployError",
    "DeploySettings",
    "DeployStore",
    "GateResult",
    "GateSettings",
    "WindowStats",
    "evaluate_gates",
    "p95",
    "share_of",
]

#: the modules other features may import; the rest are this package's own (tests/importgraph.py).
PUBLIC = ("cli", "deployment", "golden", "part", "router", "variants")
