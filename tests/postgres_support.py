"""A throwaway PostgreSQL server for tests (Debian's postgresql binaries), run as the `postgres` user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import free_ports

BIN = Path("/usr/lib/postgresql")


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory, if any."""
    versions = sorted(BIN.glob("*/bin/postgres")) if BIN.exists() else []
    return versions[-1].parent if versions else None


def unavailable() -> str | None:
    """Why no server can be started here (None: it can)."""
    if postgres_bin() is None:
        return "no PostgreSQL server installed (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run the server as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "the server must run as the postgres user (needs root or that user)"
    if shutil.which("setpriv") is None and os.geteuid() == 0:
        return "no setpriv to drop to the postgres user"
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh server on a free loopback port (trust auth); yields its SQLAlchemy URL; stopped after."""
    bin_dir = postgres_bin()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="dynaseal-pg-"))
    entry = pwd.getpwnam("postgres")
    if os.geteuid() == 0:
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync"]), check=True, capture_output=True)
    port = free_ports(1)[0]
    server = subprocess.Popen(_as_postgres([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                                            "-h", "127.0.0.1", "-k", str(root), "-F"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            assert server.poll() is None, "postgres exited while starting"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        shutil.rmtree(root, ignore_errors=True)
