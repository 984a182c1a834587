"""A PostgreSQL database for the tests: empty when the session starts, and theirs alone.

``with postgres_url() as url:`` yields a SQLAlchemy URL (``postgresql+psycopg://...``), taken in order from:

1. ``SPEECHPIPE_TEST_POSTGRES`` (a URL): a database with a random name is created on that server and
   dropped afterwards, so the one named in the URL is never touched (the role needs CREATEDB);
2. Debian's server binaries (``apt-get install postgresql``): a throwaway cluster in a temporary directory,
   listening on 127.0.0.1 only, on a free port, stopped and deleted afterwards;
3. otherwise the tests that need it are skipped.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, make_url

# the throwaway cluster is deploy/local's (cluster.py starts one too)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "local"))
from throwaway_pg import SUPERUSER, TIMEOUT_S, Cluster, ClusterError, server_bindir, server_owner, throwaway_cluster

__all__ = [
    "SUPERUSER",
    "Cluster",
    "ClusterError",
    "fresh_database",
    "postgres_url",
    "psycopg_url",
    "server_bindir",
    "server_owner",
    "throwaway_cluster",
]

ENV = "SPEECHPIPE_TEST_POSTGRES"
SKIP_REASON = "no PostgreSQL server: set SPEECHPIPE_TEST_POSTGRES or apt-get install postgresql"


@contextmanager
def postgres_url() -> Iterator[str]:
    """The URL of an empty PostgreSQL database for this session; skips the caller where none can be had."""
    configured = os.environ.get(ENV)
    if configured:
        with fresh_database(configured) as url:
            yield url
        return
    bindir = server_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    try:
        cluster = throwaway_cluster(bindir)
        url = cluster.__enter__()
    except ClusterError as exc:
        if "no 'postgres' user" in str(exc):
            pytest.skip(f"{SKIP_REASON} ({exc})")
        raise
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database with a random name on the server of ``server_url``, dropped on exit."""
    server = psycopg_url(make_url(server_url))
    name = f"speechpipe_test_{secrets.token_hex(6)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": TIMEOUT_S})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                # FORCE (PostgreSQL 13+): an engine a test forgot to dispose must not keep it alive.
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def psycopg_url(url: URL) -> URL:
    """``url`` on the psycopg 3 driver: a bare ``postgresql://`` would pick psycopg2, which is not installed."""
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url
