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


def test_feedback_that_cannot_be_written_is_kept_in_order_and_written_once_the_disk_has_room(tmpfs):
    """Accepted feedback is ground truth, kept in the state store with who sent it. On a full
    disk it still moves the figures, waits in memory in order, is reported unsaved, and is written
    at the first tick once there is room; a restart reads it back. Past the bound of what may
    wait, feedback is refused instead of held without limit."""
    import pytest

    from speechpipe.pipeline.deploy import DeploySettings, DeployStore
    from speechpipe.pipeline.deploy.deployment import Deployment, FeedbackBacklog
    from speechpipe.pipeline.deploy.ledger import Piece

    state = tmpfs / "deploy.db"
    settings = DeploySettings(mode="canary", primary="default", candidate="green", state_file=str(state))
    clock = [1000.0]
    dep = Deployment(settings, {"default": "a", "green": "b"}, clock=lambda: clock[0], max_unsaved_feedback=2)
    for k, session in enumerate(("s1", "s2", "s3")):
        dep.opened(session, dep.assign(f"client-{k}", session), shared_segments=False)
        dep.ledger.final(session, Piece(0, 0.0, 2.0, "the cat sat"))

    dep.feedback("s1", 0, "the cat sat", counted=True, keep=True, principal="carol")
    assert dep.feedback_saved() and [r["principal"] for r in DeployStore(state).feedback()] == ["carol"]
    filler = fill(tmpfs, 0)
    clock[0] += 5
    scores = dep.feedback("s2", 0, "the dog sat", counted=True, keep=True, principal="carol")
    assert scores[0].errors == 1  # scored and counted all the same
    dep.feedback("s3", None, "a cat sat", counted=False, keep=True, principal="alice")
    snap = dep.snapshot()
    assert not dep.feedback_saved() and snap["saved"] is False and snap["unsaved_since"] == 1005.0
    assert snap["feedback"] == {"counted": 2, "client": 1, "unsaved": 2}
    with pytest.raises(FeedbackBacklog):  # two wait: the third is refused, not dropped later
        dep.feedback("s1", 0, "one more", counted=True, keep=True, principal="carol")
    assert dep.snapshot()["feedback"]["counted"] == 2
    dep.tick()  # still full
    assert len(DeployStore(state).feedback()) == 1
    filler.unlink()
    dep.tick()
    assert dep.feedback_saved() and dep.snapshot()["saved"] is True
    rows = DeployStore(state).feedback()  # what a restart reads
    assert [(r["seq"], r["session"], r["principal"], r["counted"]) for r in rows] == [
        (1, "s1", "carol", True),
        (2, "s2", "carol", True),
        (3, "s3", "alice", False),
    ]
    assert rows[1]["text"] == "the dog sat" and rows[1]["scores"][0]["hypothesis"] == "the cat sat"
    assert rows[1]["at"] == 1005.0 and rows[2]["segment"] is None
    assert [r["seq"] for r in DeployStore(state).feedback(after=1, session="s3")] == [3]
