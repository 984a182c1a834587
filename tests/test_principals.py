"""Principals on a real server (issue 23, finding 1): named stream keys, sessions that belong to
whoever opened them, feedback that moves the canary only from a principal trusted with it, every
variant's text to admins only, and tokens that never reach a log.

The issue's case: any holder of the stream token read other sessions' transcripts through
``POST /v1/feedback`` and rolled a good canary back with 60 made-up words of "feedback". Here the
same made-up words from a client key (``stream`` only) leave the canary alone and are kept apart
as client feedback, while from a key trusted with ``feedback`` they still roll it back: that is
the failing case as it was before, where every stream client's feedback counted."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import SPEECH
from livehelp import ServerThread, canary_config, key_for
from prometheus_client.parser import text_string_to_metric_families

from speechpipe.pipeline.clients.client import file_frames, file_start, paced, stream_pcm
from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.deploy import DeployStore
from speechpipe.pipeline.observability import start_telemetry
from speechpipe.pipeline.protocol import Start
from speechpipe.pipeline.server.auth import Principals
from speechpipe.pipeline.server.keys import AuthSettings, read_keys_file, token_digest

pytestmark = pytest.mark.corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
REFERENCE = " ".join(JFK.with_suffix(".txt").read_text().split())
#: 60 words that were never said: what the issue's stream client sent as "feedback".
MADE_UP = " ".join(["purple elephants dance quietly under"] * 12)
ADMIN, REVIEWER = "admin-secret", "reviewer-secret"
ALICE, BOB, CAROL, OPS = "alice-secret", "bob-secret", "carol-secret", "ops-secret"
KEYS = AuthSettings(
    (
        {"name": "alice", "token_sha256": token_digest(ALICE), "scopes": ["stream"]},
        {"name": "bob", "token": BOB, "scopes": ["stream"]},
        {"name": "carol", "token": CAROL, "scopes": ["stream", "feedback"]},
        # an admin who also labels: the admin token alone takes no feedback (the route needs
        # feedback, stream or review), a key may list both
        {"name": "ops", "token": OPS, "scopes": ["admin", "feedback"]},
    )
).keys


def http(srv: ServerThread, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(srv.http + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"text": raw.decode()}


def stream(srv: ServerThread, token: str, client: str | None = None):
    start = file_start(JFK)
    start = Start(start.sample_rate, start.encoding, start.channels, client=client)
    return asyncio.run(stream_pcm(srv.url, start, paced(file_frames(JFK), 0.02, 0.0), token=token))


def feedback(srv, session: str, text: str, token: str) -> tuple[int, dict]:
    return http(srv, "POST", "/v1/feedback", {"session": session, "text": text}, token=token)


def test_keys_are_checked_and_tokens_compared_by_digest():
    principals = Principals.from_tokens(stream="s", admin=ADMIN, keys=KEYS)
    assert principals.find(ALICE).name == "alice" and principals.find(ALICE).scopes == {"stream"}
    assert principals.find(CAROL).scopes == {"stream", "feedback"}
    assert principals.find("s").scopes == {"stream", "feedback"} and principals.find(ADMIN).name == "admin"
    assert principals.find("nobody's").name == "anonymous" and not principals.find("nobody's").scopes
    # Only digests are kept: no token is in the principals' memory, nor in a key's repr.
    assert ALICE not in repr(principals) and BOB not in repr(principals) and token_digest(ALICE) not in repr(KEYS)
    with pytest.raises(ConfigError, match="same token"):
        Principals.from_tokens(stream=BOB, keys=KEYS)
    with pytest.raises(ConfigError, match="given twice"):
        Config().with_overrides({"auth.keys": [{"name": "a", "token": "x", "scopes": ["stream"]}] * 2})
    with pytest.raises(ConfigError, match="token of another key"):
        Config().with_overrides({"auth.keys": [{"name": n, "token": "x", "scopes": ["stream"]} for n in ("a", "b")]})
    with pytest.raises(ConfigError, match="unknown scope"):
        Config().with_overrides({"auth.keys": [{"name": "a", "token": "x", "scopes": ["root"]}]})
    with pytest.raises(ConfigError, match="server's own"):
        Config().with_overrides({"auth.keys": [{"name": "admin", "token": "x", "scopes": ["admin"]}]})


def test_a_keys_file_holds_the_auth_table_only(tmp_path):
    good = tmp_path / "keys.toml"
    good.write_text(f'[[auth.keys]]\nname = "alice"\ntoken_sha256 = "{token_digest(ALICE)}"\nscopes = ["stream"]\n')
    assert [k.name for k in read_keys_file(good).keys] == ["alice"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = 1\n[[auth.keys]]\nname = "a"\ntoken = "x"\nscopes = ["stream"]\n')
    with pytest.raises(ValueError, match="only the \\[auth\\] table"):
        read_keys_file(bad)


def test_a_session_is_its_owners_reviewers_and_admins(engine, tmp_path):
    cfg = Config().with_overrides({"review.db": str(tmp_path / "reviews.db")})
    with ServerThread(engine, config=cfg, admin_token=ADMIN, reviewer_token=REVIEWER, keys=KEYS) as srv:
        mine = stream(srv, ALICE).ready["session"]
        unknown = "0" * len(mine)
        for path in (f"/v1/sessions/{mine}", f"/v1/sessions/{unknown}"):
            assert http(srv, "GET", path, token=ALICE)[0] == (200 if mine in path else 404)
        # Bob is answered about Alice's session exactly as about one that does not exist.
        theirs = http(srv, "GET", f"/v1/sessions/{mine}", token=BOB)
        none = http(srv, "GET", f"/v1/sessions/{unknown}", token=BOB)
        assert theirs[0] == none[0] == 404
        assert theirs[1]["error"] == none[1]["error"] and theirs[1]["message"] == none[1]["message"].replace(
            unknown, mine
        )
        theirs = feedback(srv, mine, REFERENCE, BOB)
        none = feedback(srv, unknown, REFERENCE, BOB)
        assert theirs[0] == none[0] == 404 and theirs[1]["message"] == none[1]["message"].replace(unknown, mine)
        # Reviewers and admins see every session.
        assert http(srv, "GET", f"/v1/sessions/{mine}", token=REVIEWER)[0] == 200
        assert http(srv, "GET", f"/v1/sessions/{mine}", token=ADMIN)[0] == 200
        # Alice's own feedback is answered, with her transcript, and kept apart as a client's.
        status, body = feedback(srv, mine, REFERENCE, ALICE)
        assert status == 200 and body["counted"] is False and set(body["scores"]) == {"default"}
        assert body["saved"] is True  # kept in the deploy state with who sent it
        assert http(srv, "GET", "/admin/deploy", token=ADMIN)[1]["feedback"] == {
            "counted": 0,
            "client": 1,
            "unsaved": 0,
        }


def test_a_clients_made_up_feedback_does_not_move_the_canary_a_trusted_one_does(engine, tmp_path):
    """The issue's rollback: a good candidate (the same pipeline under another name) and 60
    made-up words on its session. The primary's session gets the true reference from a reviewer
    (counted), so the WER gate has both sides as soon as the candidate's feedback counts."""
    cfg = canary_config("twin", tmp_path)
    with ServerThread(engine, config=cfg, admin_token=ADMIN, reviewer_token=REVIEWER, keys=KEYS) as srv:
        primary = stream(srv, ALICE, key_for("twin", 0.5, False)).ready
        candidate = stream(srv, ALICE, key_for("twin", 0.5, True)).ready
        assert (primary["role"], candidate["role"]) == ("primary", "candidate")
        assert feedback(srv, primary["session"], REFERENCE, REVIEWER)[1]["counted"] is True
        status, body = feedback(srv, candidate["session"], MADE_UP, ALICE)
        assert status == 200 and body["counted"] is False and body["scores"]["twin"]["wer"] > 0.9
        srv.tick()
        state = http(srv, "GET", "/admin/deploy", token=ADMIN)[1]
        assert state["state"] != "rolled_back", state["history"][-1]
        assert state["feedback"] == {"counted": 1, "client": 1, "unsaved": 0}
        # The same words from a principal trusted with feedback count: the gate sees them.
        trusted = stream(srv, CAROL, key_for("twin", 0.5, True)).ready
        assert trusted["role"] == "candidate"
        assert feedback(srv, trusted["session"], MADE_UP, CAROL)[1]["counted"] is True
        deadline = time.monotonic() + 20
        while state["state"] != "rolled_back" and time.monotonic() < deadline:
            srv.tick()
            state = http(srv, "GET", "/admin/deploy", token=ADMIN)[1]
        kept = http(srv, "GET", "/admin/deploy/feedback", token=ADMIN)[1]
        assert http(srv, "GET", "/admin/deploy/feedback", token=CAROL)[0] == 401  # not an admin
        listed = subprocess.run(
            [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", srv.http, "--admin-token", ADMIN]
            + ["feedback", "--session", candidate["session"]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert state["state"] == "rolled_back"
    failed = {g["name"] for g in state["history"][-1]["gates"] if g["passed"] is False}
    assert failed == {"wer_delta"}, state["history"][-1]["gates"]
    # Every accepted feedback is kept with who sent it and whether it counted, across a restart.
    assert kept["unsaved"] == 0
    who = [(r["session"], r["principal"], r["counted"]) for r in kept["feedback"]]
    assert who == [
        (primary["session"], "reviewer", True),
        (candidate["session"], "alice", False),
        (trusted["session"], "carol", True),
    ]
    assert kept["feedback"][1]["text"] == MADE_UP and kept["feedback"][1]["scores"][0]["variant"] == "twin"
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [kept["feedback"][1]]
    assert [r["principal"] for r in DeployStore(tmp_path / "deploy.db").feedback()] == ["reviewer", "alice", "carol"]


def test_an_admin_sees_every_variants_text_the_owner_its_own_and_no_token_is_logged(engine, caplog):
    cfg = Config().with_overrides(
        {"deploy.mode": "shadow", "deploy.candidate": "twin", "variants.twin.vad.backend": Config().vad.backend}
    )
    caplog.set_level(logging.DEBUG)
    with ServerThread(engine, config=cfg, admin_token=ADMIN, reviewer_token=REVIEWER, keys=KEYS) as srv:
        result = stream(srv, ALICE)
        session = result.ready["session"]
        deadline = time.monotonic() + 30
        while True:  # the shadow's transcripts of every final are in once it has as many finals
            figures = http(srv, "GET", "/admin/deploy", token=ADMIN)[1]["window"]["figures"]
            if figures.get("twin", {}).get("finals", 0) >= len(result.finals):
                break
            assert time.monotonic() < deadline, "the shadow never finished"
            time.sleep(0.2)
        own = feedback(srv, session, REFERENCE, ALICE)[1]
        everyone = feedback(srv, session, REFERENCE, OPS)[1]
        http(srv, "GET", f"/v1/sessions/{session}", token="a-wrong-token")
    assert set(own["scores"]) == {"default"} and own["counted"] is False
    assert set(everyone["scores"]) == {"default", "twin"} and everyone["counted"] is True
    assert everyone["scores"]["twin"]["role"] == "shadow" and everyone["scores"]["twin"]["text"]
    # The test's own client logs its headers at debug level; every record of the server is checked.
    server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "Bearer [redacted]" in server_log, "no handshake was logged: this check would be empty"
    for secret in (ALICE, BOB, CAROL, OPS, ADMIN, REVIEWER, "a-wrong-token", token_digest(ALICE), token_digest(BOB)):
        assert secret not in server_log


def metric(page: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on a Prometheus page whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_client_feedback_is_its_own_metric_apart_from_the_feedback_that_counts(engine):
    """Telemetry tells the two kinds of feedback apart: each piece of a stream-only client's
    feedback on ``speechpipe.feedback.client``, each piece that counts on
    ``speechpipe.feedback.counted``, and only the latter's words in ``speechpipe.feedback.words``."""
    cfg = Config()
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    with ServerThread(engine, config=cfg, admin_token=ADMIN, keys=KEYS, telemetry=telemetry) as srv:
        alices = stream(srv, ALICE).ready["session"]
        carols = stream(srv, CAROL).ready["session"]
        for _ in range(2):
            assert feedback(srv, alices, MADE_UP, ALICE)[1]["counted"] is False
        status, trusted = feedback(srv, carols, REFERENCE, CAROL)
        assert status == 200 and trusted["counted"] is True
        with urllib.request.urlopen(srv.http + "/metrics", timeout=10) as r:
            page = r.read().decode()
    assert metric(page, "speechpipe_feedback_client_total", pipeline_variant="default") == 2
    assert metric(page, "speechpipe_feedback_counted_total", pipeline_variant="default") == 1
    words = metric(page, "speechpipe_feedback_words_total", pipeline_variant="default")
    assert words == trusted["scores"]["default"]["words"] > 10
