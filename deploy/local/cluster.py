"""A throwaway local cluster: speechpipe replicas behind HAProxy, all on 127.0.0.1.

    python deploy/local/cluster.py --replicas 3 --port 8765 [--db postgresql://...] -- --admin-token T

starts a throwaway PostgreSQL (Debian's server binaries, on 127.0.0.1 and a free port; or uses
``--db``; ``--no-db``: none, each replica on its own), ``--replicas`` ``speechpipe serve`` processes on free ports (everything after ``--`` is
given to each of them), then HAProxy (Debian's ``haproxy``) on ``--port`` with
``deploy/haproxy/haproxy.cfg`` and one ``server`` line per replica, and prints one JSON line once
every replica answers ``/readyz`` and HAProxy forwards to them:

    {"url": "http://127.0.0.1:8765", "replicas": [{"url": "http://127.0.0.1:41234", "pid": 123}, ...],
     "db": null, "logs": "/tmp/speechpipe-cluster-..."}

SIGTERM or Ctrl-C stops it the way a rolling stop would: every replica gets SIGTERM (it turns
unready, HAProxy stops sending it new streams, its open streams drain through HAProxy), then
HAProxy stops. A replica that dies meanwhile (``kill -9`` in a test) is reported on stderr and the
cluster keeps serving with the others. Each process's output is in ``logs``.

Every replica is given the database as ``--db``: they share the deployment (its state, the gates
judged by one of them on the evidence of all, the session ledger: docs/deployment.md, Replicas)
and the review queue. The throwaway database is stopped and deleted with the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from throwaway_pg import ClusterError, server_bindir, throwaway_cluster

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "haproxy" / "haproxy.cfg"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def haproxy_config(template: str, port: int, replicas: list[int], stats: int | None = None) -> str:
    """The template with its frontend bound to ``port`` and one ``server`` line per replica port
    (the template's own ``server`` lines replaced); ``stats``: HAProxy's own page on that port
    (``/haproxy``, ``/haproxy;csv``: each replica's state as HAProxy sees it)."""
    lines: list[str] = []
    servers = [f"    server replica{k + 1} {HOST}:{p} check" for k, p in enumerate(replicas)]
    for line in template.splitlines():
        if re.match(r"\s*bind\s", line):
            lines.append(f"    bind {HOST}:{port}")
        elif re.match(r"\s*server\s", line):
            lines += servers  # in place of the template's first server line, none of the others
            servers = []
        else:
            lines.append(line)
    if stats is not None:
        lines += ["", "frontend stats", f"    bind {HOST}:{stats}", "    stats enable", "    stats uri /haproxy"]
        lines += ["    stats refresh 1s"]
    return "\n".join(lines) + "\n"


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check, what: str, procs: list[subprocess.Popen], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise SystemExit(f"cluster: {what}: a process exited with {dead[0].returncode} (see the logs)")
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster: {what}: not ready after {timeout:g} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, serve_options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--port", type=int, default=8765, help="HAProxy's port (0: a free one)")
    ap.add_argument("--db", help="the replicas' shared database, postgresql://... (default: a throwaway one)")
    ap.add_argument("--no-db", action="store_true", help="no database: each replica keeps its own state")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    args = ap.parse_args(own)
    args.serve_options = serve_options
    if args.replicas < 1:
        ap.error("--replicas must be at least 1")
    if not Path(args.haproxy).exists():
        ap.error(f"HAProxy not found at {args.haproxy} (apt-get install haproxy)")
    port = args.port or free_port()
    with contextlib.ExitStack() as stack:
        if not args.db and not args.no_db:
            bindir = server_bindir()
            if bindir is None:
                ap.error("no PostgreSQL server binaries (apt-get install postgresql): give --db URL or --no-db")
            try:
                url = stack.enter_context(throwaway_cluster(bindir))
            except ClusterError as exc:
                raise SystemExit(f"cluster: the throwaway PostgreSQL did not start: {exc}") from None
            args.db = "postgresql://" + url.split("://", 1)[1]
        return run(args, port)


def run(args: argparse.Namespace, port: int) -> int:
    serve_options = args.serve_options
    logs = Path(tempfile.mkdtemp(prefix="speechpipe-cluster-"))
    stopping = False

    def stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    replicas: list[tuple[subprocess.Popen, int]] = []
    haproxy: subprocess.Popen | None = None
    try:
        for k in range(args.replicas):
            p = free_port()
            cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "serve", "--host", HOST, "--port", str(p)]
            cmd += (["--db", args.db] if args.db else []) + serve_options
            if not any("review.data_dir" in o for o in serve_options):  # each its own, not the cwd
                cmd += ["--set", f'review.data_dir="{logs / f"replica{k + 1}-review"}"']
            out = open(logs / f"replica{k + 1}.log", "w")  # noqa: SIM115 (the process holds it)
            replicas.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), p))
        procs = [proc for proc, _ in replicas]
        for _proc, p in replicas:
            wait_until(lambda p=p: ready(f"http://{HOST}:{p}"), f"replica on port {p}", procs)
        cfg = logs / "haproxy.cfg"
        stats = free_port()
        cfg.write_text(haproxy_config(TEMPLATE.read_text(), port, [p for _, p in replicas], stats))
        out = open(logs / "haproxy.log", "w")  # noqa: SIM115
        haproxy = subprocess.Popen([args.haproxy, "-f", str(cfg), "-db"], stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: ready(f"http://{HOST}:{port}"), "HAProxy", [*procs, haproxy], timeout=30.0)
        facts = {
            "url": f"http://{HOST}:{port}",
            "replicas": [{"url": f"http://{HOST}:{p}", "pid": proc.pid} for proc, p in replicas],
            "db": args.db,
            "haproxy_stats": f"http://{HOST}:{stats}/haproxy",
            "logs": str(logs),
        }
        print(json.dumps(facts), flush=True)
        reported: set[int] = set()
        while not stopping:
            for proc, p in replicas:
                if proc.poll() is not None and proc.pid not in reported:
                    reported.add(proc.pid)
                    print(f"cluster: the replica on port {p} exited ({proc.returncode})", file=sys.stderr, flush=True)
            if haproxy.poll() is not None:
                print(f"cluster: HAProxy exited ({haproxy.returncode})", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        # replicas first: each turns unready and drains its streams through HAProxy
        for proc, _ in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for proc, _ in replicas:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if haproxy is not None and haproxy.poll() is None:
            haproxy.terminate()
            haproxy.wait(10)


if __name__ == "__main__":
    sys.exit(main())
