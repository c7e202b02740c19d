"""Child-process supervision for the local stack: start, wait until ready, stop without orphans."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


# Resolved here, in the parent, once: a dlopen in the forked child can deadlock on the loader's lock
# when another thread of the parent (a gRPC or tokio runtime, a test's HTTP server) held it at fork.
_PRCTL = _load_prctl()


def _setpriv_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig TERM --`: the parent-death signal set by the child itself (Linux), or ()."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return (setpriv, "--pdeathsig", "TERM", "--") if setpriv else ()


_SETPRIV = _setpriv_prefix()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, even by SIGKILL (Linux), so no orphan."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StartupError(Exception):
    """A service could not start; the message is one line meant for people."""


@dataclass
class ServiceSpec:
    """How to run one service and how to know it is ready."""

    name: str
    argv: Sequence[str]
    address: str
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    ports: Sequence[tuple[str, int]] = ()
    ready_timeout_s: float = 30.0


@dataclass
class RunningService:
    """A started service."""

    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP port can be bound on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections of a previous run in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tcp_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 15, start: int = 0) -> str:
    """The last lines of a log file written after byte `start` (this run's), for an error message."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(start)
            text = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts services in order, stops them in reverse, and notices a child that died."""

    def __init__(self, log_dir: Path, host: str) -> None:
        self.log_dir = log_dir
        self.host = host
        self.running: list[RunningService] = []

    def start(self, spec: ServiceSpec, progress: Callable[[str], None] = lambda _: None) -> RunningService:
        """Start one service and wait until its probe passes."""
        for label, port in spec.ports:
            if not port_is_free(self.host, port):
                raise StartupError(f"port {port} ({spec.name} {label}) on {self.host} is already in use: "
                                   f"stop what holds it or choose another port in the config")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        # With setpriv (util-linux) the child sets its own parent-death signal before exec, so Popen needs
        # no preexec_fn: a preexec_fn forces fork(), whose atfork handlers (grpc's, in a process that has
        # used grpc) can deadlock the launcher; without one Popen uses vfork, which runs none.
        argv = [*_SETPRIV, *spec.argv] if _SETPRIV else list(spec.argv)
        with log_path.open("ab") as log_file:
            # Earlier runs' lines stay in the log, but a failed start shows only this run's.
            start = log_file.tell()
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env={**os.environ, **spec.env},
                                       start_new_session=True, preexec_fn=None if _SETPRIV else _die_with_parent)
        service = RunningService(spec, process, log_path)
        self.running.append(service)
        progress(f"starting {spec.name} …")
        deadline = time.monotonic() + spec.ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StartupError(f"{spec.name} exited with code {process.returncode} while starting; "
                                   f"last lines of {log_path}:\n{tail(log_path, start=start)}")
            if spec.ready():
                return service
            time.sleep(0.1)
        raise StartupError(f"{spec.name} was not ready after {spec.ready_timeout_s:.0f} s; "
                           f"last lines of {log_path}:\n{tail(log_path, start=start)}")

    def dead(self) -> RunningService | None:
        """The first service that exited on its own, if any."""
        return next((s for s in self.running if s.process.poll() is not None), None)

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> ServiceSpec:
        """Stop one service (SIGTERM, or e.g. SIGKILL) and forget it; return its spec to restart it."""
        service = next(s for s in self.running if s.spec.name == name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, sig)
        try:
            service.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(5)
        self.running.remove(service)
        return service.spec

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process group in reverse start order, SIGKILL what outlives the timeout."""
        for service in reversed(self.running):
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for service in reversed(self.running):
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(5)
        self.running.clear()
