"""``deploy/`` for users who run their own stack: Debian's real Prometheus scrapes a running
server with the shipped scrape config and alert rules, a speechpipe series is read back through
Prometheus' HTTP API, ``promtool`` accepts the rules, and every series the rules, the Grafana
dashboard and the compose file name exists."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import ROOT
from livehelp import ServerThread, free_port
from prometheus_client.parser import text_string_to_metric_families
from test_deploy_server import stream

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.observability import start_telemetry
from speechpipe.telemetry.metric_specs import METRICS

DEPLOY = ROOT / "deploy"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL), reason="Debian's prometheus is absent (apt-get install prometheus)"
)
SUFFIXES = {"s": "_seconds", "By": "_bytes", "dB": "_dB"}


def prometheus_name(spec) -> str:
    """The series name OpenTelemetry's Prometheus exporter gives an instrument."""
    name = spec.name.replace(".", "_")
    suffix = SUFFIXES.get(spec.unit, "")
    if suffix and not name.endswith(suffix):
        name += suffix
    if spec.kind in ("counter", "observable_counter"):
        name += "_total"
    return name


def series_names(expr: str) -> set[str]:
    """The speechpipe and process series a PromQL expression reads."""
    import re

    found = set(re.findall(r"\b((?:speechpipe|process)_[a-zA-Z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in found}


def shipped_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "speechpipe.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return exprs


@needs_prometheus
def test_promtool_accepts_the_rules_and_the_scrape_config():
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0 and "SUCCESS: 6 rules found" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    print(rules.stdout, config.stdout)


def test_the_deploy_files_agree_with_each_other_and_with_the_metrics():
    known = {prometheus_name(m) for m in METRICS}
    for expr in shipped_expressions():
        assert series_names(expr) <= known, (expr, series_names(expr) - known)
    # The Grafana JSON is what make_dashboard.py writes.
    spec = subprocess.run(
        [sys.executable, "-c", "import make_dashboard, json; print(json.dumps(make_dashboard.dashboard()))"],
        cwd=DEPLOY / "grafana",
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(spec.stdout) == json.loads((DEPLOY / "grafana" / "dashboards" / "speechpipe.json").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"speechpipe", "jaeger", "prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert (ROOT / compose["services"]["speechpipe"]["build"]["dockerfile"]).is_file()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["speechpipe:8765"]


@pytest.mark.corpus
@needs_prometheus
def test_real_prometheus_scrapes_a_running_server(engine, tmp_path):
    cfg = Config()
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    with ServerThread(engine, config=cfg, telemetry=telemetry) as srv:
        result = stream(srv)
        with urllib.request.urlopen(srv.http + "/metrics", timeout=10) as r:
            page = r.read().decode()
        # the shipped config with only the target changed: its rule file, its job name
        conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        conf["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        conf["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
        conf["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{srv.server.port}"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
        port = free_port()
        api = f"http://127.0.0.1:{port}/api/v1"
        log = (tmp_path / "prometheus.log").open("w")
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            deadline, found, up, rules = time.monotonic() + 60, [], [], []
            while time.monotonic() < deadline and not (found and up and evaluated(rules)):
                time.sleep(0.5)
                try:
                    found = query(api, "sum(speechpipe_output_segments_total)")
                    up = query(api, 'up{job="speechpipe"} == 1')
                    rules = json.loads(urllib.request.urlopen(f"{api}/rules", timeout=5).read())["data"]["groups"]
                except OSError:
                    continue
        finally:
            prom.terminate()
            prom.wait(10)
            log.close()
    assert up, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert float(found[0]["value"][1]) == len(result.finals) > 0
    scraped = {f.name for f in text_string_to_metric_families(page)}
    assert "speechpipe_final_latency_seconds" in scraped
    # the names the deploy files are checked against are the names a scrape has
    known = {prometheus_name(m).removesuffix("_total") for m in METRICS}
    assert {f for f in scraped if f.startswith("speechpipe_")} <= known
    groups = {g["name"]: g for g in rules}
    assert {r["name"] for r in groups["speechpipe"]["rules"]} >= {
        "SpeechpipeDrift",
        "SpeechpipeFinalsLost",
        "SpeechpipeCanaryRolledBack",
    }
    assert all(r["health"] == "ok" for r in groups["speechpipe"]["rules"]), groups


def evaluated(groups: list) -> bool:
    return bool(groups) and all(r["health"] != "unknown" for g in groups for r in g["rules"])


def query(api: str, promql: str) -> list:
    with urllib.request.urlopen(f"{api}/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"]
