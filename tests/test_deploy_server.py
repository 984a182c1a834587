"""Deployment patterns on a real server with the real model and real speech: variants carried on
ready and finals, the admin API's auth, canary rollback and promotion, blue/green switches under a
live stream, shadow mode, feedback, and a restart that keeps the deploy state."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, SPEECH
from livehelp import ServerThread, canary_config, full_window, key_for

from speechpipe.pipeline.clients.client import file_frames, file_start, paced, stream_file, stream_pcm
from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.pipeline.protocol import Start
from speechpipe.pipeline.server.auth import Principals

pytestmark = pytest.mark.corpus

JFK = SPEECH / "jfk_inaugural_ask-not.flac"
REFERENCE = " ".join(JFK.with_suffix(".txt").read_text().split())
ADMIN = "admin-secret"


def http(srv: ServerThread, method: str, path: str, body=None, token: str | None = ADMIN) -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(srv.http + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read().decode()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, raw


def config(**overrides) -> Config:
    return Config().with_overrides(overrides)


def stream(srv: ServerThread, client: str | None = None, speed: float = 0.0):
    start = file_start(JFK)
    start = Start(start.sample_rate, start.encoding, start.channels, client=client)
    return settled(srv, asyncio.run(stream_pcm(srv.url, start, paced(file_frames(JFK), 0.02, speed))))


def settled(srv: ServerThread, result, timeout: float = 30.0):
    """``result`` once the server has let go of its stream. The server sends ``end`` only after
    the stream's observers took its finals (feedback posted then is scored against all of them),
    but the stream's end itself (``StreamEnded``: the streams a step counts, the ledger's
    comparisons) is reported as the connection closes: once the stream is gone from the server's
    streams, its observers have had all of its events."""
    srv.released(result.ready["session"], timeout)
    return result


def test_single_mode_names_the_variant_and_admin_is_off_without_a_token(engine):
    cfg = config(**{"pipeline.variant": "blue"})
    with ServerThread(engine, config=cfg) as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0))
        status, body = http(srv, "GET", "/admin/deploy")
    assert result.ready["variant"] == "blue" and result.ready["role"] == "primary"
    assert result.ready["variant_id"] == cfg.variant_id
    assert result.finals and {f["variant"] for f in result.finals} == {"blue"}
    assert status == 403 and body["error"] == "forbidden"


def test_admin_api_refuses_no_token_a_wrong_one_and_the_stream_token(engine):
    with ServerThread(engine, token="stream-secret", admin_token=ADMIN) as srv:
        for token in (None, "wrong", "stream-secret"):
            status, _ = http(srv, "GET", "/admin/deploy", token=token)
            assert status == 401, token
        status, state = http(srv, "GET", "/admin/deploy")
        assert status == 200
        assert {"mode", "variants", "step", "state", "history"} <= set(state)
        assert state["mode"] == "single" and state["variants"]["default"]["role"] == "primary"
        assert state["variants"]["default"]["config_id"] == Config().variant_id
        assert http(srv, "POST", "/admin/deploy", b"{not json")[0] == 400
        status, body = http(srv, "POST", "/admin/deploy", {"action": "explode"})
        assert status == 400 and "explode" in body["message"]
        status, body = http(srv, "POST", "/admin/deploy", {"action": "promote"})
        assert status == 400 and "single" in body["message"]
        # The server still serves streams, and the stream token is what feedback takes.
        assert http(srv, "POST", "/v1/feedback", {"session": "x", "text": "hi"}, token=ADMIN)[0] == 401
    with pytest.raises(ConfigError, match="differ"):
        Principals.from_tokens(stream="same", admin="same")


def wait_state(srv: ServerThread, want: set[str], timeout: float = 20.0) -> dict:
    """The deploy state once it is one of ``want`` (the gates judged at a tick each time)."""
    deadline = time.monotonic() + timeout
    while True:
        srv.tick()
        state = http(srv, "GET", "/admin/deploy")[1]
        if state["state"] in want or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_canary_rolls_back_a_harmful_candidate_at_the_first_step(engine, tmp_path):
    """The mute candidate returns nothing: every gate that compares it with the primary and has its
    data fails. Which gate fires is not left to timing: the server does not tick on its own here, so
    the first judgement (``wait_state``'s tick) comes after both streams ended and both feedbacks
    were scored, and every gate with data is judged at that one tick. (With a server ticking every
    second, an Intel Xeon's slower decode let a tick between the candidate's stream and its feedback
    roll back on the empty and guard-drop rates alone, before the WER gate had data.) The figures
    asserted hold on any CPU: the mute candidate's finals are empty by construction (rate 1.0, WER
    1.0) and the primary's WER on JFK is far under 0.2."""
    with ServerThread(engine, config=canary_config("mute", tmp_path), admin_token=ADMIN) as srv:
        for on_candidate in (False, True):
            result = stream(srv, key_for("mute", 0.5, on_candidate))
            assert result.ready["variant"] == ("mute" if on_candidate else "default")
            assert result.ready["role"] == ("candidate" if on_candidate else "primary")
            assert http(srv, "POST", "/v1/feedback", {"session": result.ready["session"], "text": REFERENCE})[0] == 200
        state = wait_state(srv, {"rolled_back"})
        # After the rollback every new stream goes to the primary, even the candidate's clients.
        after = stream(srv, key_for("mute", 0.5, True))
    assert state["state"] == "rolled_back" and state["variants"]["mute"]["weight"] == 0.0
    rollback = state["history"][-1]
    assert rollback["action"] == "rollback" and rollback["step"] == 0
    failed = {g["name"]: g for g in rollback["gates"] if g["passed"] is False}
    assert "empty_rate_delta" in failed and "wer_delta" in failed, rollback["gates"]
    assert failed["empty_rate_delta"]["candidate"] == 1.0 and failed["empty_rate_delta"]["primary"] == 0.0
    assert failed["wer_delta"]["candidate"] == 1.0 and failed["wer_delta"]["primary"] < 0.2
    assert "empty_rate_delta" in rollback["reason"]
    assert after.ready["variant"] == "default"


def test_canary_promotes_a_good_candidate_through_every_step(engine, tmp_path):
    with ServerThread(engine, config=canary_config("twin", tmp_path), admin_token=ADMIN) as srv:
        steps = []
        for _round in range(4):
            state = http(srv, "GET", "/admin/deploy")[1]
            if state["state"] == "promoted":
                break
            assert state["state"] != "rolled_back", state["history"][-1]
            weight = state["variants"]["twin"]["weight"]
            steps.append(weight)
            for on_candidate in (False, True) if weight < 1.0 else (True, True):  # at 100 % all go there
                result = stream(srv, key_for("twin", weight, on_candidate))
                assert result.ready["variant"] == ("twin" if on_candidate else "default")
                http(srv, "POST", "/v1/feedback", {"session": result.ready["session"], "text": REFERENCE})
            wait_state(srv, {"promoted", "progressing"}, timeout=3)  # a deploy tick
        state = http(srv, "GET", "/admin/deploy")[1]
        final = stream(srv)
        # Then the way back: `revert` through the CLI (the admin API underneath) to the old primary.
        cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", srv.http, "--admin-token", ADMIN]
        reverted = subprocess.run(
            [*cmd, "revert", "--reason", "back to the old VAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        again = http(srv, "POST", "/admin/deploy", {"action": "revert"})
        back = stream(srv)
        after = http(srv, "GET", "/admin/deploy")[1]
    assert steps == [0.5, 1.0]
    assert state["state"] == "promoted" and state["variants"]["twin"]["role"] == "primary"
    assert [c["action"] for c in state["history"]] == ["start", "advance", "promote"]
    assert all(g["passed"] is not False for c in state["history"] for g in c["gates"])
    assert final.ready["variant"] == "twin"
    assert reverted.returncode == 0, reverted.stderr
    change = json.loads(reverted.stdout)["change"]
    assert (change["action"], change["from_state"], change["to_state"]) == ("revert", "promoted", "reverted")
    assert change["reason"] == "admin: back to the old VAD" and change["weights"] == {"default": 1.0, "twin": 0.0}
    assert again[0] == 400 and "nothing was promoted" in again[1]["message"]
    assert back.ready["variant"] == "default" and back.ready["role"] == "primary"
    assert after["state"] == "reverted" and after["variants"]["twin"]["role"] == "candidate"
    assert [c["action"] for c in after["history"]] == ["start", "advance", "promote", "revert"]


def test_bluegreen_switch_and_rollback_under_a_live_stream(engine):
    cfg = config(**{"deploy.mode": "bluegreen", "deploy.candidate": "green", "variants.green.vad.backend": "webrtc"})
    with ServerThread(engine, config=cfg, admin_token=ADMIN) as srv:

        async def scenario():
            running = asyncio.create_task(asyncio.to_thread(stream, srv, None, 1.0))  # 11 s in real time
            # The switch comes once that stream has been routed (its session exists), while it runs.
            deadline = time.monotonic() + 30
            while not any(c.core.session is not None for c in list(srv.server.streams.values())):
                assert time.monotonic() < deadline, "the first stream was never routed"
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            status, body = await asyncio.to_thread(
                http, srv, "POST", "/admin/deploy", {"action": "switch", "active": "green"}
            )
            switched = await asyncio.to_thread(stream, srv)
            effect = time.monotonic() - t0
            back = await asyncio.to_thread(http, srv, "POST", "/admin/deploy", {"action": "rollback"})
            after = await asyncio.to_thread(stream, srv)
            return await running, status, body, switched, effect, back, after

        first, status, body, switched, effect, back, after = asyncio.run(scenario())
    assert status == 200 and body["deploy"]["active"] == "green"
    assert switched.ready["variant"] == "green" and {f["variant"] for f in switched.finals} == {"green"}
    # The stream open during both changes stayed on its variant, got every final, and ended normally.
    assert first.ready["variant"] == "default" and {f["variant"] for f in first.finals} == {"default"}
    assert first.finals and first.lost == 0 and not first.errors and first.close_code == 1000
    assert back[0] == 200 and back[1]["deploy"]["active"] == "default"
    assert after.ready["variant"] == "default"
    assert effect < 10.0  # the switched stream itself (11 s of audio sent at full speed) is most of it


def metric(srv: ServerThread, name: str, **labels: str) -> float:
    page = urllib.request.urlopen(srv.http + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in page.splitlines():
        head, _, value = line.rpartition(" ")
        if line.startswith(name) and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_shadow_transcribes_unseen_and_is_scored_against_primary_and_feedback(engine):
    from speechpipe.pipeline.observability import start_telemetry

    cfg = config(**{"deploy.mode": "shadow", "deploy.candidate": "twin", "variants.twin.vad.backend": "silero"})
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    # A twin agrees with the primary on every final where the words do not depend on what
    # shares a call: the full window (livehelp.full_window)
    with ServerThread(engine, config=full_window(cfg), admin_token=ADMIN, telemetry=telemetry) as srv:
        result = settled(srv, asyncio.run(stream_file(srv.url, JFK, speed=0)))
        deadline = time.monotonic() + 30
        while metric(srv, "speechpipe_shadow_segments_total", shadow_outcome="done") < len(result.finals):
            assert time.monotonic() < deadline, "the shadow never finished"
            time.sleep(0.2)
        status, fb = http(srv, "POST", "/v1/feedback", {"session": result.ready["session"], "text": REFERENCE})
        agreements = metric(srv, "speechpipe_shadow_agreement_count", pipeline_variant="twin")
        agreement_sum = metric(srv, "speechpipe_shadow_agreement_sum", pipeline_variant="twin")
        words = metric(srv, "speechpipe_feedback_words_total", pipeline_variant="twin", deploy_role="shadow")
        state = http(srv, "GET", "/admin/deploy")[1]
    # The client saw the primary only.
    assert result.ready["variant"] == "default" and {f["variant"] for f in result.finals} == {"default"}
    assert status == 200 and set(fb["scores"]) == {"default", "twin"}
    assert fb["scores"]["twin"]["role"] == "shadow" and fb["scores"]["default"]["role"] == "primary"
    # The same model on the same segments: the shadow agrees exactly, and scores the same.
    assert agreements == len(result.finals) and agreement_sum == agreements
    assert fb["scores"]["twin"]["wer"] == fb["scores"]["default"]["wer"] < 0.2
    assert words == fb["scores"]["twin"]["words"] > 10
    assert state["variants"]["twin"]["role"] == "shadow" and state["variants"]["twin"]["weight"] == 0.0
    shadow_figures = state["window"]["figures"]["twin"]
    assert shadow_figures["finals"] == len(result.finals) and shadow_figures["agreement"] == 1.0
    assert shadow_figures["wer"] == fb["scores"]["twin"]["wer"]


def test_feedback_rejects_what_it_cannot_score(engine):
    with ServerThread(engine, token="stream-secret") as srv:
        result = asyncio.run(stream_file(srv.url, JFK, speed=0, token="stream-secret"))
        session = result.ready["session"]

        def post(body, token="stream-secret"):
            return http(srv, "POST", "/v1/feedback", body, token=token)

        assert post({"session": session, "text": REFERENCE}, token=None)[0] == 401
        assert post({"session": "nope", "text": "x"})[0] == 404
        assert post({"session": session, "segment": 99, "text": "x"})[0] == 404
        assert post({"session": session, "segment": "one", "text": "x"})[0] == 400
        assert post({"session": session})[0] == 400
        assert post({"session": session, "text": "x", "extra": 1})[0] == 400
        assert post(b"\xff\xfe")[0] == 400
        status, body = post({"session": session, "segment": 0, "text": result.finals[0]["text"]})
        assert status == 200 and body["scores"]["default"]["wer"] == 0.0
        # The server is fine after all that.
        assert asyncio.run(stream_file(srv.url, JFK, speed=0, token="stream-secret")).finals


def test_a_restart_keeps_the_deploy_state(engine, tmp_path):
    cfg = canary_config("twin", tmp_path)
    with ServerThread(engine, config=cfg, admin_token=ADMIN) as srv:
        assert http(srv, "POST", "/admin/deploy", {"action": "set_weight", "variant": "twin", "weight": 0.25})[0] == 200
        assert http(srv, "POST", "/admin/deploy", {"action": "pause", "reason": "night"})[0] == 200
    with ServerThread(engine, config=cfg, admin_token=ADMIN) as srv:
        state = http(srv, "GET", "/admin/deploy")[1]
    assert state["mode"] == "canary" and state["paused"] is True
    assert state["variants"]["twin"]["weight"] == 0.25
    actions = [c["action"] for c in state["history"]]
    assert actions[:3] == ["start", "set_weight", "pause"] and actions[-1] == "start"
    assert "night" in state["history"][2]["reason"]


def test_a_variant_that_cannot_load_stops_serve_with_its_name():
    proc = subprocess.run(
        [sys.executable, "-m", "speechpipe.pipeline.cli", "serve", "--port", "0", "--log-level", "ERROR"]
        + ["--set", 'variants.broken.asr.model="/nonexistent/model"'],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "variant 'broken'" in proc.stderr and "/nonexistent/model" in proc.stderr


def test_the_deploy_command_drives_the_admin_api(engine):
    cfg = config(**{"deploy.mode": "bluegreen", "deploy.candidate": "green", "variants.green.vad.backend": "webrtc"})
    with ServerThread(engine, config=cfg, admin_token=ADMIN) as srv:

        def deploy(*args: str, token: str = ADMIN) -> subprocess.CompletedProcess:
            cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", srv.http, "--admin-token", token]
            return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

        switched = deploy("switch", "green", "--reason", "new VAD")
        refused = deploy("status", token="wrong")
        bad = deploy("weight", "green", "0.5")
        status = deploy("status")
    assert switched.returncode == 0, switched.stderr
    doc = json.loads(switched.stdout)
    assert doc["deploy"]["active"] == "green" and doc["change"]["reason"] == "admin: new VAD"
    assert refused.returncode == 1 and "401" in refused.stderr
    assert bad.returncode == 1 and "canary" in bad.stderr  # set_weight is not a blue/green action
    assert [c["action"] for c in json.loads(status.stdout)["history"]] == ["start", "switch"]


def golden_set(tmp_path) -> str:
    """A golden set: three corpus utterances with their references, as `speechpipe review export`
    writes a split (audio and a `.txt` beside it)."""
    import shutil

    folder = tmp_path / "golden"
    folder.mkdir()
    for name in ("cmuarctic_aew_a0001", "cmuarctic_aew_a0002", "cmuarctic_axb_a0004"):
        for ext in (".wav", ".txt"):
            shutil.copy(SPEECH / f"{name}{ext}", folder / f"{name}{ext}")
    return str(folder)


def test_the_golden_set_refuses_a_worse_candidate_and_admits_an_equal_one(engine, tmp_path):
    """The candidate is evaluated against the primary on the golden set before it takes any
    traffic, off the serving path: the mute candidate (every final dropped: WER 100 %, on any CPU)
    is refused with both figures and takes no stream, and an admin or the CLI cannot give it a
    weight; the twin (the same pipeline: the same WER) is admitted and the canary starts."""
    golden = golden_set(tmp_path)
    overrides = {"deploy.golden": golden, "deploy.max_golden_wer_delta": 0.02}
    mute = canary_config("mute", tmp_path / "a").with_overrides(overrides)
    with ServerThread(engine, config=mute, admin_token=ADMIN) as srv:
        during = http(srv, "GET", "/admin/deploy")[1]
        served = stream(srv, key_for("mute", 0.5, True))  # served meanwhile, by the primary
        assert srv.server.deployment.wait_golden(300)
        state = http(srv, "GET", "/admin/deploy")[1]
        weight = http(srv, "POST", "/admin/deploy", {"action": "set_weight", "variant": "mute", "weight": 0.5})
        cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "deploy", "--url", srv.http, "--admin-token", ADMIN]
        cli = subprocess.run([*cmd, "promote"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        after = stream(srv, key_for("mute", 0.5, True))
        page = dashboard_says(srv)
    assert during["state"] in ("gating", "refused") and served.ready["variant"] == "default"
    golden_change = state["history"][-1]
    (gate,) = golden_change["gates"]
    assert (state["state"], golden_change["action"], gate["name"], gate["passed"]) == (
        "refused",
        "golden",
        "golden_wer_delta",
        False,
    )
    assert gate["candidate"] == 1.0 and gate["primary"] < 0.2  # every word of the mute one is missing
    assert f"mute WER 100.0 % against default {100 * gate['primary']:.1f} %" in golden_change["reason"]
    assert state["golden"]["files"] == 3 and state["variants"]["mute"]["weight"] == 0.0
    assert weight[0] == 400 and "'mute' was refused by the golden set (3 files" in weight[1]["message"]
    assert cli.returncode == 1 and "'mute' was refused by the golden set" in cli.stderr
    assert after.ready["variant"] == "default"
    # the dashboard says why, and offers nothing that would send it traffic
    assert (
        page["next"].startswith("Refused by the golden set: golden set (3 files") and "mute WER 100.0 %" in page["next"]
    )
    assert page["step"] == "none (refused by the golden set)" and page["gate"] == "golden_wer_delta fail"
    assert (
        page["promote"] == "mute was refused by the golden set: WER 100.0 % against " + f"{100 * gate['primary']:.1f} %"
    )

    twin = canary_config("twin", tmp_path / "b").with_overrides(overrides)
    with ServerThread(engine, config=twin, admin_token=ADMIN) as srv:
        assert srv.server.deployment.wait_golden(300)
        state = http(srv, "GET", "/admin/deploy")[1]
        on_candidate = stream(srv, key_for("twin", 0.5, True))
    golden_change = next(c for c in state["history"] if c["action"] == "golden")
    assert state["state"] == "progressing" and golden_change["gates"][0]["passed"] is True
    assert golden_change["gates"][0]["value"] == 0.0 and golden_change["reason"].startswith("admitted: golden set")
    assert state["variants"]["twin"]["weight"] == 0.5 and on_candidate.ready["variant"] == "twin"


def dashboard_says(srv) -> dict:
    """What the dashboard shows of the deployment, read in headless Debian Chromium."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{srv.http}/dashboard?token={ADMIN}")
            page.wait_for_selector("#gate-rows tr[data-gate=golden_wer_delta]")
            return {
                "next": page.inner_text("#dep-next"),
                "step": page.inner_text("#dep-step"),
                "gate": " ".join(page.locator("#gate-rows tr td").all_inner_texts()[:2]),
                "promote": page.get_attribute("button[data-action=promote]", "title")
                if page.is_disabled("button[data-action=promote]")
                else "enabled",
            }
        finally:
            browser.close()
