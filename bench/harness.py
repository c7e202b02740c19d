"""Start the real servers a benchmark drives: mock upstream, Redis, dynaseal authz, Envoy.

They run as child processes under `dynaseal_launcher.processes.Supervisor` (the launcher's own), on
free ports, with logs in the run directory; `stop()` ends every one of them.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from pathlib import Path

from bench import envoy_bench
from bench.fixture import PROVIDER_KEY, PROVIDER_KEY_ENV, BenchKeys, make_keys, write_config
from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import grpc_serving, http_ok, redis_ping
from dynaseal_launcher.processes import RunningService, ServiceSpec, StartupError, Supervisor
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME, redis_server_binary

HOST = "127.0.0.1"
GATEWAY_PORTS = ("envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka",
                 "authz_metrics", "consumer_metrics", "shipper_metrics")
LISTENERS = ("a_none", "b_jwt", "c_dynaseal", "s_none", "s_dynaseal", *envoy_bench.VARIANTS)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of every live process in the process group led by `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp ... utime(12) stime(13)
        if int(fields[2]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mib(pid: int) -> float:
    """Resident memory (MiB) of every live process in the process group led by `pid`."""
    total_kib = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2]) != pid:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (steal excluded), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (wrk, load clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float = 30.0, idle_cores: float = 0.25) -> float:
    """Wait (bounded) until the machine is nearly idle before a measurement; return the busy cores seen.

    This machine may be shared (other sessions run test suites on the same 2 cores): measuring
    while they run gives numbers that say nothing. Our own idle servers use ~0.02 cores.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy <= idle_cores or time.monotonic() > deadline:
            return busy
        print(f"  machine busy ({busy:.2f} cores used by other work): waiting for it to settle …", flush=True)


class BenchStack:
    """The servers of one benchmark run, and the addresses to drive."""

    def __init__(self, directory: Path, *, authz_workers: int = 1, envoy_concurrency: int = 1,
                 authz_args: tuple[str, ...] = (), with_envoy: bool = True, with_mock: bool = True,
                 authz_cpus: str | None = None, redis_cpus: str | None = None,
                 authz_server: str | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.keys: BenchKeys = make_keys()
        gateway_ports = free_ports(len(GATEWAY_PORTS) + len(LISTENERS))
        self.ports = dict(zip(GATEWAY_PORTS, gateway_ports, strict=False))
        self.listener_ports = dict(zip(LISTENERS, gateway_ports[len(GATEWAY_PORTS):], strict=True))
        os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
        self.config_path = write_config(directory, self.ports, self.keys)
        self.cfg = load_config(self.config_path)
        self.supervisor = Supervisor(directory / "logs", HOST)
        self.authz_workers = authz_workers
        self.envoy_concurrency = envoy_concurrency
        # authz.server of the bench authz (None: the config's default), passed as `--server`.
        self.authz_server = authz_server
        self.authz_args = (*authz_args, *(("--server", authz_server) if authz_server else ()))
        self.with_envoy = with_envoy
        self.with_mock = with_mock
        self.authz_cpus = authz_cpus
        self.redis_cpus = redis_cpus
        self.services: dict[str, RunningService] = {}
        # Targets that are not Envoy listeners (another proxy under test), by name.
        self.other_urls: dict[str, str] = {}

    def url(self, listener: str) -> str:
        """The chat-completions URL on one bench listener (or of a target in `other_urls`)."""
        if listener in self.other_urls:
            return self.other_urls[listener]
        return f"http://{HOST}:{self.listener_ports[listener]}/v1/chat/completions"

    @property
    def authz_target(self) -> str:
        """host:port of the authz gRPC server."""
        return f"{HOST}:{self.ports['authz']}"

    def _pinned(self, cpus: str | None, argv: list[str]) -> list[str]:
        return ["taskset", "-c", cpus, *argv] if cpus else argv

    def specs(self) -> list[ServiceSpec]:
        """Every service in start order."""
        p = self.ports
        specs = []
        if self.with_mock:
            specs.append(ServiceSpec(
                "mock-llm", [sys.executable, "-m", "mock_llm", "--host", HOST, "--port", str(p["mock_upstream"])],
                f"http://{HOST}:{p['mock_upstream']}", lambda: http_ok(f"http://{HOST}:{p['mock_upstream']}/healthz"),
                env={"MOCK_LLM_API_KEY": ""}))
        redis_dir = self.directory / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        specs.append(ServiceSpec(
            "redis", self._pinned(self.redis_cpus, [
                redis_server_binary(), "--port", str(p["redis"]), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(redis_dir), "--daemonize", "no", "--loglevel", "warning"]),
            f"redis://{HOST}:{p['redis']}", lambda: redis_ping(HOST, p["redis"])))
        # Several authz processes share the port through SO_REUSEPORT (the kernel spreads
        # connections, so Envoy needs as many connections: one per Envoy worker thread).
        metrics_ports = [p["authz_metrics"], *free_ports(self.authz_workers - 1)]
        for n in range(self.authz_workers):
            specs.append(ServiceSpec(
                "authz" if n == 0 else f"authz-{n + 1}", self._pinned(self.authz_cpus, [
                    sys.executable, "-m", "authz_service", "--config", str(self.config_path),
                    "--metrics-port", str(metrics_ports[n]), *self.authz_args]),
                f"grpc://{self.authz_target}", lambda: grpc_serving(self.authz_target, AUTHZ_SERVICE_NAME)))
        if self.with_envoy:
            envoy_dir = self.directory / "envoy"
            envoy_dir.mkdir(parents=True, exist_ok=True)
            envoy_file = envoy_dir / "envoy.yaml"
            envoy_file.write_text(envoy_bench.render(self.cfg, self.keys, self.listener_ports,
                                                     envoy_dir / "access.log"))
            ok, output = envoy_config.validate(envoy_file)
            if not ok:
                raise StartupError(f"bench Envoy config {envoy_file} is invalid:\n{output[-3000:]}")
            specs.append(ServiceSpec(
                "envoy", [envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
                          "--log-level", "warn", "--concurrency", str(self.envoy_concurrency)],
                f"http://{HOST}:{p['envoy_admin']}", lambda: http_ok(f"http://{HOST}:{p['envoy_admin']}/ready")))
        return specs

    def start(self) -> BenchStack:
        """Start everything; on failure stop what started and re-raise."""
        try:
            for spec in self.specs():
                self.services[spec.name] = self.supervisor.start(spec)
        except BaseException:
            self.supervisor.stop()
            raise
        return self

    def restart_authz(self, preamble: str = "", extra_args: tuple[str, ...] = ()) -> None:
        """Restart the (single) authz process, running `preamble` Python first (a what-if variant)
        and with `extra_args` after its own."""
        stopped = self.supervisor.stop_service("authz")
        # Variants always start from the original command line, so restarts can follow each other.
        spec = self._authz_spec = getattr(self, "_authz_spec", stopped)
        argv = list(spec.argv)
        at = argv.index("-m")
        args = [*argv[at + 2:], *extra_args]
        code = f"{preamble}\nfrom authz_service.__main__ import main\nraise SystemExit(main({args!r}))"
        variant = ServiceSpec(spec.name, [*argv[:at], "-c", code], spec.address, spec.ready, spec.env)
        self.services["authz"] = self.supervisor.start(variant)

    def stop(self) -> None:
        """Stop every child."""
        self.supervisor.stop()

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each service (process groups: forked workers included)."""
        return {name: cpu_seconds(s.process.pid) for name, s in self.services.items()}

    def __enter__(self) -> BenchStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
