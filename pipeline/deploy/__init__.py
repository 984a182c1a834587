"""Deployment patterns, pure and synchronous: which pipeline variant serves each new live stream.

``settings`` (the ``[deploy]`` table), ``gates`` (a canary's window of figures and its gates),
``events`` (assignments, changes, errors), ``controller`` (routing, canary steps, rollbacks,
promotions, snapshots), ``admin`` (the admin actions), ``store`` (the state in SQLite). No
asyncio, threads or sockets here: time is passed in, and the caller serialises the calls.
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
