"""A local Redis Cluster for tests and benchmarks: N masters (+ replicas) from the stack's redis-server.

Built the way `redis-cli --cluster create` does it, from Python so nothing but redis-server is
needed: distinct config epochs, slots split evenly, CLUSTER MEET, CLUSTER REPLICATE, then wait
until every node reports `cluster_state:ok` and every replica is in sync. Nodes keep no data on
disk (no AOF, no RDB): this is for development, not for keeping counters.
"""

from __future__ import annotations

import functools
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.crc

from dynaseal_launcher.probes import redis_ping
from dynaseal_launcher.processes import RunningService, ServiceSpec, StartupError, Supervisor
from dynaseal_launcher.stack import redis_server_binary

SLOTS = 16384


def cluster_ports(count: int) -> list[int]:
    """Ports p with p and its cluster bus port p + 10000 free (Redis 6 has no cluster-port option).

    Below the ephemeral range (32768+), so a bus port never collides with another test's free port.
    """
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 22700)
        if port in chosen or port + 10000 in chosen:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        chosen.append(port)
    return chosen


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _state(node: redis.Redis) -> str:
    info = node.execute_command("CLUSTER INFO")
    if isinstance(info, dict):
        return str(info.get("cluster_state"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cluster_state:")), "")


@dataclass
class LocalCluster:
    """A running cluster: its ports, its processes, and a URL for Dynaseal."""

    directory: Path
    masters: list[int]
    replicas: list[int]
    supervisor: Supervisor
    running: dict[int, RunningService] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """`redis+cluster://` naming every master as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.masters)

    def pids(self) -> list[int]:
        """Process ids of the live nodes (for CPU accounting)."""
        return [r.process.pid for r in self.running.values() if r.process.poll() is None]

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def cluster_client(self) -> redis.RedisCluster:
        """redis-py's cluster client."""
        return redis.RedisCluster(host="127.0.0.1", port=self.masters[0], socket_timeout=2)

    def owner_of(self, key: str) -> int:
        """The port of the master that serves key's slot now."""
        slot = redis.crc.key_slot(key.encode())
        for port in self.masters + self.replicas:
            try:
                for start, end, master, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(master[1])
            except redis.RedisError:
                continue
        raise AssertionError(f"no node serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        process = self.running[port].process
        process.kill()
        process.wait(10)

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Until every live node says cluster_state:ok and agrees on one owner per slot."""
        def ok() -> bool:
            live = [p for p in self.masters + self.replicas if self.running[p].process.poll() is None]
            return all(_state(self.client(p)) == "ok" for p in live)
        _wait(ok, timeout_s, "cluster_state:ok on every node")

    def stop(self) -> None:
        """Stop every node."""
        self.supervisor.stop()


def start_cluster(directory: Path, masters: int = 3, replicas_per_master: int = 0, node_timeout_ms: int = 1000,
                  pin: Callable[[int], list[str]] | None = None, attempts: int = 3) -> LocalCluster:
    """Start and join a cluster; stopped by `.stop()`.

    Ports are chosen free but not reserved: another process may take one first, so a node that
    cannot start means new ports and another try.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _start(directory / f"try-{attempt}", masters, replicas_per_master, node_timeout_ms, pin)
        except StartupError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start(directory: Path, masters: int, replicas_per_master: int, node_timeout_ms: int,
           pin: Callable[[int], list[str]] | None) -> LocalCluster:
    ports = cluster_ports(masters * (1 + replicas_per_master))
    supervisor = Supervisor(directory / "logs", "127.0.0.1")
    cluster = LocalCluster(directory, ports[:masters], ports[masters:], supervisor)
    try:
        for port in ports:
            node_dir = directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            cluster.running[port] = supervisor.start(ServiceSpec(
                f"redis-{port}",
                [*(pin(port) if pin else []), redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", str(node_timeout_ms),
                 # A replica may always take over, however long it was out of touch (tests kill masters).
                 "--cluster-replica-validity-factor", "0", "--save", "", "--appendonly", "no",
                 "--dir", str(node_dir), "--loglevel", "warning"],
                f"redis://127.0.0.1:{port}", functools.partial(redis_ping, "127.0.0.1", port)))
        share = SLOTS // masters
        for i, port in enumerate(cluster.masters):
            node = cluster.client(port)
            node.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            end = SLOTS - 1 if i == masters - 1 else (i + 1) * share - 1
            node.execute_command("CLUSTER ADDSLOTS", *range(i * share, end + 1))
        first = cluster.client(ports[0])
        for port in ports[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", port)

        def everyone_known() -> bool:
            return all(len(cluster.client(p).execute_command("CLUSTER NODES")) == len(ports) for p in ports)
        _wait(everyone_known, 20, "every node to know every other")
        for i, port in enumerate(cluster.replicas):
            master = cluster.masters[i % masters]
            master_id = cluster.client(master).execute_command("CLUSTER MYID")
            master_id = master_id.decode() if isinstance(master_id, bytes) else str(master_id)
            cluster.client(port).execute_command("CLUSTER REPLICATE", master_id)
        cluster.wait_healthy()

        def replicas_in_sync() -> bool:
            return all(cluster.client(p).info("replication").get("master_link_status") == "up"
                       for p in cluster.replicas)
        _wait(replicas_in_sync, 20, "every replica in sync")
        return cluster
    except BaseException:
        supervisor.stop()
        raise
