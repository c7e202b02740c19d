"""`dynaseal up`: one clear line for a taken port or a bad config; SIGTERM leaves no process or port behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TenantKeys, write_test_config

from dynaseal.local_stack import LEGACY_PORTS
from dynaseal_launcher.processes import port_is_free

pytestmark = pytest.mark.integration
DYNASEAL = [sys.executable, "-m", "dynaseal_launcher.cli"]


def own_config(tmp_path: Path, keys: TenantKeys) -> tuple[Path, dict[str, int]]:
    path = write_test_config(tmp_path, keys)
    raw = yaml.safe_load(path.read_text())
    # The laptop stack's own ports too, under their old names (redis, mock_upstream, kafka).
    return path, {**raw["gateway"]["ports"], **{old: raw["local"][new] for old, new in LEGACY_PORTS.items()}}


def test_taken_port_is_one_clear_line(tmp_path: Path, test_keys: TenantKeys) -> None:
    path, ports = own_config(tmp_path, test_keys)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["envoy"]))
        holder.listen()
        proc = subprocess.run([*DYNASEAL, "--config", str(path), "up"], capture_output=True, text=True,
                              timeout=120, env=os.environ.copy())
    assert proc.returncode != 0
    assert f"port {ports['envoy']}" in proc.stderr and "already in use" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for name in ("authz", "redis", "mock_upstream"):  # what had started before was stopped again
        assert port_is_free("127.0.0.1", ports[name]), name


def test_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "dynaseal.yaml"
    bad.write_text(yaml.safe_dump({"tenants": [{"id": "x"}]}))
    proc = subprocess.run([*DYNASEAL, "--config", str(bad), "up"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "a tenant needs keys" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_stops_every_child(tmp_path: Path, test_keys: TenantKeys) -> None:
    path, ports = own_config(tmp_path, test_keys)
    proc = subprocess.Popen([*DYNASEAL, "--config", str(path), "up"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    seen = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "press Ctrl-C" in line or not line:
            break
    assert any("stack is up" in line for line in seen), "".join(seen)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 4
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    for name in ("envoy", "envoy_admin", "authz", "redis", "issuer", "mock_upstream"):
        assert port_is_free("127.0.0.1", ports[name]), name
