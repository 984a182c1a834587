"""A throwaway PostgreSQL cluster from Debian's server binaries (``apt-get install postgresql``):
initdb in a temporary folder, the server on 127.0.0.1 and a free port, trusting local
connections, stopped and deleted on exit. ``deploy/local/cluster.py`` starts one when it is not
given ``--db``; the tests (``tests/pg.py``) use the same.

    with throwaway_cluster(server_bindir()) as url:   # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        ...
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN_GLOB = "/usr/lib/postgresql/*/bin"
TIMEOUT_S = 30
SUPERUSER = "postgres"


def server_bindir() -> Path | None:
    """The newest Debian PostgreSQL ``bin`` folder that has ``initdb`` and ``pg_ctl``, or None."""
    found = [
        Path(d) for d in glob.glob(BIN_GLOB) if all(os.access(Path(d) / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))
    ]
    return max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)], default=None)


@contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[str]:
    """A new cluster on 127.0.0.1 and a free port, trusting local connections; stopped and deleted on exit."""
    owner = server_owner()
    root = Path(tempfile.mkdtemp(prefix="speechpipe-pg-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = Cluster(bindir, root, None if owner is None else owner.pw_name)
        cluster.init()
        try:
            port = cluster.start()
            yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def server_owner() -> pwd.struct_passwd | None:
    """The system user to run the server as: None (ourselves) unless we are root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError("running as root, and there is no 'postgres' user to run initdb as") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message holds their output and the server's log."""


@dataclass
class Cluster:
    """A cluster in ``root`` (data in ``root/data``, socket and log beside it), run as ``user`` when set."""

    bindir: Path
    root: Path
    user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def init(self) -> None:
        """initdb: UTF-8, no locale, trust authentication; no fsync, the cluster dies with the session."""
        self.run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"
        )

    def start(self, port: int | None = None) -> int:
        """Starts the server on ``port`` (a free one when None: a restart passes the port it had)
        and waits until it accepts connections; returns its port."""
        port = port or free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
        }
        # pg_ctl hands -o to the server through a shell.
        server_options = " ".join(f"-c {key}={shlex.quote(value)}" for key, value in options.items())
        files = ("-D", str(self.data), "-l", str(self.log))
        self.run("pg_ctl", *files, "-o", server_options, "-w", "-t", str(TIMEOUT_S), "start")
        return port

    def stop(self) -> None:
        """Stops the server if it runs (fast: open sessions are cut)."""
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(TIMEOUT_S), "stop")
        except ClusterError:
            # A server that will not shut down must not outlive the session (its folder is deleted next).
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", str(TIMEOUT_S), "stop")

    def run(self, tool: str, *args: str) -> None:
        """Runs one of the server's tools; raises with its output and the server's log if it fails."""
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        try:
            done = subprocess.run(
                command, cwd=self.root, capture_output=True, text=True, timeout=TIMEOUT_S + 10, check=False
            )
        except subprocess.TimeoutExpired as timeout:
            raise ClusterError(self.report(tool, f"timed out after {timeout.timeout} s")) from None
        if done.returncode != 0:
            raise ClusterError(self.report(tool, f"exit {done.returncode}\n{done.stdout}{done.stderr}"))

    def report(self, tool: str, outcome: str) -> str:
        """The message of a failed ``tool``: what it said, then the server's log."""
        log = self.log.read_text(errors="replace") if self.log.exists() else "(no server log)"
        return f"{tool} failed: {outcome}\n--- server log {self.log} ---\n{log}"
