"""The deploy state when its disk refuses a write (issue 23: the same care as review items).

The file system is real: the ``tmpfs`` fixture (tests/conftest.py) mounts a 1 MiB tmpfs, filled
to its last page; where mounting is not allowed the test skips and says so.
"""

from __future__ import annotations

from conftest import fill


def test_a_change_that_cannot_be_written_is_served_and_written_once_the_disk_has_room(tmpfs):
    """The deploy state on a real 1 MiB tmpfs filled to the last page: a rollback is applied and
    served while its write fails (SQLite cannot grow its file or journal), reported as unsaved,
    and written at the first tick once the filler is gone; a restart then resumes it."""
    from speechpipe.pipeline.deploy import DeploySettings, DeployStore
    from speechpipe.pipeline.deploy.deployment import Deployment

    state = tmpfs / "deploy.db"
    settings = DeploySettings(mode="canary", primary="default", candidate="green", state_file=str(state))
    clock = [1000.0]
    dep = Deployment(settings, {"default": "a", "green": "b"}, clock=lambda: clock[0])
    assert dep.snapshot()["saved"] is True
    filler = fill(tmpfs, 0)
    clock[0] += 5
    change = dep.apply({"action": "rollback"})
    assert change.to_state == "rolled_back" and dep.controller.weight == 0.0  # served from memory
    snap = dep.snapshot()
    assert snap["saved"] is False and snap["unsaved_since"] == 1005.0
    assert DeployStore(state).load()["state"] != "rolled_back"  # not on disk
    dep.tick()  # still full: still unsaved, nothing raised
    assert dep.snapshot()["saved"] is False
    filler.unlink()
    clock[0] += 1
    dep.tick()
    assert dep.snapshot()["saved"] is True
    assert DeployStore(state).load()["state"] == "rolled_back"
