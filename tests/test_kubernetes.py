"""``deploy/kubernetes/``: no cluster runs where this project is built, so the manifests are checked
by schema and against the files they must agree with.

Every document validates, strictly (an unknown field is an error), against the schemas
kubernetes-validate bundles for a pinned Kubernetes version. Then, reading the real files: the
readiness probe is HAProxy's health check (deploy/haproxy/haproxy.cfg: path, interval, fall and
rise); the grace period covers the preStop sleep, the drain the ConfigMap's config sets and the
server's own stop, and gives the server as long after SIGTERM as deploy/local/cluster.py does; the
container's arguments parse as ``speechpipe serve``'s, with the files they name mounted from the
ConfigMap and the Secret; the ConfigMap is a config the server loads; the Secret's keys file is
one the server reads; the HPA's metric is one the server exports (docs/telemetry.md); the
Service, the PodDisruptionBudget and the HPA point at the Deployment's pods and port.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import tomllib

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from speechpipe.pipeline.cli.live import cmd_serve
from speechpipe.pipeline.cli.main import build_parser
from speechpipe.pipeline.config import load_config
from speechpipe.pipeline.server.keys import read_keys_file
from speechpipe.pipeline.server.tokens import ADMIN_TOKEN_ENV, REVIEWER_TOKEN_ENV, TOKEN_ENV

DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
#: the Kubernetes version the manifests are validated for: the oldest of the three newest minors
#: kubernetes-validate 1.37 bundles (1.35 to 1.37). Pinned, so that a newer kubernetes-validate
#: never changes what is checked; the manifests use only APIs stable since 1.23.
KUBERNETES_VERSION = "1.35.0"
#: SpeechServer.shutdown waits for the stream handlers drain_timeout_s + 5 s before it cancels them.
HANDLER_SLACK_S = 5.0
#: the Prometheus suffix OpenTelemetry's exporter gives a unit (deploy/README.md: units become suffixes).
UNIT_SUFFIXES = {"s": "_seconds", "By": "_bytes", "dB": "_dB"}
METRIC_KINDS = (
    "counter",
    "histogram",
    "updowncounter",
    "gauge",
    "observable_counter",
    "observable_gauge",
    "observable_updowncounter",
)


def manifest_files() -> list:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, dict]]:
    """(file name, document) for every Kubernetes object in the manifests."""
    return [(p.name, doc) for p in manifest_files() for doc in yaml.safe_load_all(p.read_text()) if doc]


def the(kind: str) -> dict:
    """The one object of ``kind``."""
    found = [doc for _name, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict:
    (c,) = the("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def container_port(port: int | str) -> int:
    """A probe's or the Service's port (a number or the name of a container port) as a number."""
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container()["ports"] if p.get("name") == port]
    return match


def haproxy_check() -> tuple[str, dict[str, str]]:
    """The path HAProxy checks and its ``default-server`` options (inter, fall, rise)."""
    lines = [line.split("#")[0].split() for line in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines()]
    (path,) = [words[3] for words in lines if words[:2] == ["option", "httpchk"]]
    (options,) = [words[1:] for words in lines if words[:1] == ["default-server"]]
    return path, dict(zip(options[::2], options[1::2], strict=True))


def haproxy_seconds(text: str) -> float:
    """An HAProxy time (milliseconds unless it says otherwise) in seconds."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", text).groups()
    scale = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return float(number) * scale[unit]


def mounted_files(kind: str) -> dict[str, str]:
    """Path in the container -> content, of every file the pod mounts from the ConfigMap or Secret."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    source = the(kind)
    data = {**source.get("data", {}), **source.get("stringData", {})}
    field, name_key = ("configMap", "name") if kind == "ConfigMap" else ("secret", "secretName")
    files = {}
    for volume in pod["volumes"]:
        ref = volume.get(field)
        if ref is None or ref[name_key] != source["metadata"]["name"]:
            continue
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for mount in container()["volumeMounts"]:
            if mount["name"] == volume["name"]:
                files.update({f"{mount['mountPath']}/{item['path']}": data[item["key"]] for item in items})
    return files


def pod_config(tmp_path):
    """The config the pods run with: the ConfigMap's speechpipe.toml, loaded by speechpipe."""
    path = tmp_path / "speechpipe.toml"
    path.write_text(the("ConfigMap")["data"]["speechpipe.toml"])
    return load_config(path)


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (deploy/Dockerfile, exec form)."""
    (line,) = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    return json.loads(line.removeprefix("ENTRYPOINT"))


def serve_args() -> list[str]:
    """The container's arguments with ``$(VAR)`` expanded as Kubernetes does, from the Secret."""
    secret = the("Secret")["stringData"]
    env = {}
    for var in container()["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secret[ref["key"]] if ref else var["value"]

    def expand(arg: str) -> str:
        for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
            assert name in env, f"args use $({name}), which the container's env does not define"
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)

    return [expand(a) for a in container()["args"]]


def exported_series() -> dict[str, str]:
    """Prometheus series name -> OpenTelemetry kind, of every metric docs/telemetry.md lists."""
    series = {}
    row = re.compile(r"^\| `([a-z][a-z0-9_.]*)` \| (\w+) \| `([^`]*)` \|")
    for line in (ROOT / "docs" / "telemetry.md").read_text().splitlines():
        m = row.match(line)
        if m is None or m.group(2) not in METRIC_KINDS:
            continue
        name, kind, unit = m.groups()
        prom = name.replace(".", "_")
        suffix = UNIT_SUFFIXES.get(unit, "")
        if suffix and not prom.endswith(suffix):
            prom += suffix
        if kind in ("counter", "observable_counter"):
            prom += "_total"
        series[prom] = kind
    return series


# -- schema -------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    kinds = sorted(doc["kind"] for _name, doc in documents())
    assert kinds == sorted(
        ["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    )


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[f"{n}:{d['kind']}" for n, d in documents()])
def test_manifest_is_valid_for_kubernetes(name: str, doc: dict) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.35"


def test_validation_rejects_unknown_fields_and_wrong_types() -> None:
    """The check above is worth something: a misspelt field and a port given as text both fail."""
    deployment = the("Deployment")
    misspelt = copy.deepcopy(deployment)
    c = misspelt["spec"]["template"]["spec"]["containers"][0]
    c["readinessProbes"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    text_port = copy.deepcopy(deployment)
    text_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8765"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(text_port, KUBERNETES_VERSION, strict=True)


# -- agreement with the local cluster and the server -------------------------------------------


def test_readiness_probe_is_haproxys_health_check() -> None:
    path, options = haproxy_check()
    probe = container()["readinessProbe"]
    assert probe["httpGet"]["path"] == path == "/readyz"
    assert container_port(probe["httpGet"]["port"]) == 8765
    assert probe["periodSeconds"] == haproxy_seconds(options["inter"]) == 1
    assert probe["failureThreshold"] == int(options["fall"])
    assert probe["successThreshold"] == int(options["rise"])
    # the startup probe waits for the same readiness (the model loaded); liveness is the process
    startup, liveness = container()["startupProbe"], container()["livenessProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "too little time to load a model"
    assert liveness["httpGet"]["path"] == "/healthz"


def test_grace_period_covers_prestop_and_drain(tmp_path) -> None:
    spec = the("Deployment")["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    pre_stop = container()["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        sleep_s = float(command[1])
    else:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    assert sleep_s >= 2, "preStop must give endpoints and load balancers time to drop the pod"
    drain_s = pod_config(tmp_path).server.drain_timeout_s  # the ConfigMap's, else the server's default
    assert drain_s == tomllib.loads(the("ConfigMap")["data"]["speechpipe.toml"])["server"]["drain_timeout_s"]
    assert grace > sleep_s + drain_s + HANDLER_SLACK_S
    # after SIGTERM a pod gets at least what the local cluster gives a replica before it kills it
    tree = ast.parse((DEPLOY / "local" / "cluster.py").read_text())
    (cluster_wait,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["DRAIN_TIMEOUT_S"]
    ]
    assert grace - sleep_s >= cluster_wait > drain_s


def test_container_runs_speechpipe_serve_with_the_mounted_files() -> None:
    argv = entrypoint() + serve_args()
    assert argv[0] == "speechpipe", shlex.join(argv)
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_serve
    assert args.host == "0.0.0.0"
    assert args.port == container()["ports"][0]["containerPort"]
    assert args.db.startswith("postgresql://")
    config_files, secret_files = mounted_files("ConfigMap"), mounted_files("Secret")
    assert args.config in config_files
    assert args.keys in secret_files
    assert not set(config_files) & set(secret_files)


def test_configmap_is_a_config_sized_for_the_pod(tmp_path) -> None:
    config = pod_config(tmp_path)
    limits = container()["resources"]["limits"]
    cores = float(limits["cpu"])
    assert container()["resources"]["requests"] == limits  # Guaranteed: the cores are the pod's
    # workers and threads set: their defaults count the node's cores, not the pod's limit
    assert 1 <= config.server.asr_workers and 1 <= config.asr.threads
    assert config.server.asr_workers * config.asr.threads <= cores


def test_secret_holds_the_tokens_and_a_keys_file_the_server_reads(tmp_path) -> None:
    secret = the("Secret")["stringData"]
    env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container()["env"] if "valueFrom" in v}
    for name in (TOKEN_ENV, ADMIN_TOKEN_ENV, REVIEWER_TOKEN_ENV, "SPEECHPIPE_DB"):
        assert env[name]["name"] == the("Secret")["metadata"]["name"]
        assert env[name]["key"] in secret
    keys = tmp_path / "keys.toml"
    keys.write_text(secret["keys.toml"])
    auth = read_keys_file(keys)
    assert [k.name for k in auth.keys] == ["example-client"]
    assert all(len(k.token_sha256) == 64 for k in auth.keys)


def test_hpa_scales_on_streams_per_pod_that_the_server_exports(tmp_path) -> None:
    hpa = the("HorizontalPodAutoscaler")
    deployment = the("Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "speechpipe"}
    assert deployment["metadata"]["name"] == "speechpipe"
    assert "replicas" not in deployment["spec"], "the HPA owns the count"
    (metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = metric["pods"]["metric"]["name"]
    series = exported_series()
    assert name == "speechpipe_streams_active"
    assert name in series
    # an average over pods of a gauge (streams open now), not of a counter that only grows
    assert series[name] in ("updowncounter", "gauge", "observable_gauge", "observable_updowncounter")
    target = float(metric["pods"]["target"]["averageValue"])
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert 0 < target < pod_config(tmp_path).server.max_streams, "scale before pods refuse streams"
    assert hpa["spec"]["minReplicas"] >= 2


def test_service_pdb_and_rollout_point_at_the_pods() -> None:
    deployment = the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service, pdb = the("Service"), the("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == container()["ports"][0]["containerPort"] == port["port"]
    assert f"EXPOSE {port['port']}" in (DEPLOY / "Dockerfile").read_text()
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1)
    assert pdb["spec"]["maxUnavailable"] == 1
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port["port"]
    assert annotations["prometheus.io/path"] == "/metrics"
