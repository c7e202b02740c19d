"""A throwaway PostgreSQL server for the stores' tests: `initdb` + `postgres` from PATH on a free port, run as
`nobody` when the tests run as root (PostgreSQL refuses root). Skips (with the reason) where either the
server binaries or the `psycopg` driver are missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_ports

from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open


def _as_postgres_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: PostgreSQL cannot be started")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]


def unavailable() -> str | None:
    """Why no server can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed"
    if shutil.which("initdb") is None or shutil.which("postgres") is None:
        return "PostgreSQL's initdb/postgres are not on PATH"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root without setpriv: PostgreSQL cannot be started"
    return None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server's SQLAlchemy URL (database `postgres`, user `postgres`, trust auth on loopback)."""
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed")
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb is None or postgres is None:
        pytest.skip("PostgreSQL's initdb/postgres are not on PATH")
    # Under /tmp itself: the user the server runs as must be able to reach it.
    directory = Path(tempfile.mkdtemp(prefix="dynaseal-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "nobody", "nogroup")
    try:
        subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
                                          "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        port = free_ports(1)[0]
        supervisor = Supervisor(directory / "logs", "127.0.0.1")
        supervisor.start(ServiceSpec("postgres", _as_postgres_user(
            [postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(directory), "-F"]),
            "", lambda: tcp_open("127.0.0.1", port), ready_timeout_s=60))
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            supervisor.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
