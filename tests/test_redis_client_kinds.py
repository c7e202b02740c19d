"""Every service reaches Redis through the core's one asyncio entry point (`redis_async.connect`), on one server
and on a Redis Cluster alike: the revocation, the seed's usage totals, `dynaseal status` and `dynaseal key revoke`.
redis-py's blocking client is left to the launcher's local set-up and probes, and to tests (docs/layout.md)."""

from __future__ import annotations

import ast
import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cluster_support import LocalCluster, start_cluster
from conftest import OTHER_TENANT
from ledger_sync import SyncClient, sync_client

from admin_api.usage_totals import tenant_total_tokens
from dynaseal.config import load_config
from dynaseal.ledger import redis_keys
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import connect, redis_py
from dynaseal.ledger.revocation import marker, revoke_at
from dynaseal_launcher import cli
from dynaseal_launcher.status import parked_by_tenant

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ["dynaseal", "dynaseal_launcher", "authz_service", "issuer_api", "admin_api", "usage_recorder",
              "log_shipper", "callback_consumer", "mock_llm"]
# redis-py's exceptions and slot hash may be used anywhere; its clients only where named here.
ANYWHERE = {"redis.exceptions", "redis.crc"}
CLIENTS_ALLOWED = {
    "dynaseal/ledger/redis_async.py": {"redis.asyncio", "redis.asyncio.cluster"},  # the one entry point
    "dynaseal_launcher/local_cluster.py": {"redis"},  # sets up the laptop's cluster (blocking, before any loop)
    "dynaseal_launcher/probes.py": {"redis"},  # is the local redis-server up yet
}


def _redis_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {n for n in names if n == "redis" or n.startswith("redis.")}
    return found


def test_no_service_holds_a_redis_client_of_its_own() -> None:
    misplaced = {}
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            extra = _redis_imports(path) - ANYWHERE - CLIENTS_ALLOWED.get(name, set())
            if extra:
                misplaced[name] = sorted(extra)
    assert misplaced == {}, "Redis clients come from dynaseal.ledger.redis_async.connect"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters, no replicas."""
    local = start_cluster(tmp_path_factory.mktemp("kinds-cluster"), masters=3)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_client(cluster: LocalCluster) -> Iterator[SyncClient]:
    """A blocking client to write and read the test's keys by hand."""
    client = sync_client(cluster.url)
    yield client
    client.close()


def _masters_holding(cluster: LocalCluster, keys: list[str]) -> set[int]:
    return {cluster.owner_of(key) for key in keys}


def _spend(client: SyncClient, tenant: str, spent: dict[str, int]) -> list[str]:
    names = []
    for jti, tokens in spent.items():
        name = redis_keys.level_keys(tenant, (jti,))[1]
        client.hset(name, mapping={"spent": tokens, "uses": 1})
        names.append(name)
    return names


@pytest.mark.parametrize("on_cluster", [True, False])
def test_usage_totals_add_up_every_key_of_the_tenant_on_every_master(
        on_cluster: bool, cluster: LocalCluster, cluster_client: SyncClient, redis_server: str) -> None:
    url = cluster.url if on_cluster else redis_server
    client = cluster_client if on_cluster else sync_client(redis_server)
    tenant = f"tot-{uuid.uuid4().hex[:6]}"
    spent = {f"k{i}": 10 + i for i in range(40)}
    names = _spend(client, tenant, spent)
    # Neighbours the scan must not count: a tenant whose id starts with this one's, a glob-looking id.
    _spend(client, tenant + "x", {"k0": 1000})
    _spend(client, tenant + "*", {"k0": 1000})
    if on_cluster:
        assert len(_masters_holding(cluster, names)) == 3  # the keys live on every master
    assert asyncio.run(tenant_total_tokens(url, tenant)) == sum(spent.values())
    assert asyncio.run(tenant_total_tokens(url, tenant + "*")) == 1000  # `*` in an id is matched literally
    assert asyncio.run(tenant_total_tokens(url, f"none-{uuid.uuid4().hex[:6]}")) == 0
    assert asyncio.run(tenant_total_tokens(None, tenant)) == 0


def test_status_counts_the_parked_events_of_every_master(cluster: LocalCluster, cluster_client: SyncClient) -> None:
    tenants = {f"park-{uuid.uuid4().hex[:6]}-{i}": i + 1 for i in range(12)}
    names = []
    for tenant, count in tenants.items():
        name = f"dynaseal:v2:{{cb:{tenant}}}:parked"
        cluster_client.set(name, count)
        names.append(name)
    assert len(_masters_holding(cluster, names)) == 3

    async def read() -> dict[str, int]:
        client = connect(cluster.url, 5.0)
        try:
            return await parked_by_tenant(client)
        finally:
            await client.aclose()
    parked = asyncio.run(read())
    assert {t: parked.get(t) for t in tenants} == tenants


def test_a_revocation_by_url_lands_in_the_keys_slot_of_the_cluster(cluster: LocalCluster,
                                                                   cluster_client: SyncClient) -> None:
    exp = time.time() + 100
    for n in range(6):  # ids on several masters
        jti = f"rv-{uuid.uuid4().hex[:6]}-{n}"
        asyncio.run(revoke_at(cluster.url, 2.0, OTHER_TENANT, jti, exp, ("root",), leeway_s=5))
        name = marker(OTHER_TENANT, jti, ("root",))
        assert cluster_client.get(name) == b"1" and 100 <= cluster_client.ttl(name) <= 105


@pytest.mark.parametrize("kind", ["pipelined", "redis-py"])
@pytest.mark.parametrize("on_cluster", [True, False])
def test_the_ledger_reads_the_clock_of_every_master(kind: str, on_cluster: bool, cluster: LocalCluster,
                                                    redis_server: str) -> None:
    url = cluster.url if on_cluster else redis_server

    async def run() -> tuple[list[object], bool, int | None]:
        client = connect(url, 2.0) if kind == "pipelined" else redis_py(url, 2.0)
        quota = RedisQuota(client, timeout_s=2.0)
        try:
            pongs = await client.on_every_master("PING")
            return pongs, await quota.ping(), quota.clock_offset_ms
        finally:
            await client.aclose()
    pongs, answered, offset = asyncio.run(run())
    assert len(pongs) == (3 if on_cluster else 1) and answered
    assert offset is not None and abs(offset) < 60_000  # the masters share this machine's clock


def test_the_ledger_ping_fails_closed_when_redis_is_gone() -> None:
    async def run(url: str) -> bool:
        client = connect(url, 0.5)
        try:
            return await RedisQuota(client, timeout_s=0.5).ping()
        finally:
            await client.aclose()
    assert asyncio.run(run("redis://127.0.0.1:1/0")) is False
    assert asyncio.run(run("redis://127.0.0.1:1/0?health_check_interval=0")) is False  # redis-py's client
    assert asyncio.run(run("redis+cluster://127.0.0.1:1")) is False


def _config_on(config_path: Path, tmp_path: Path, redis_url: str) -> Path:
    raw = yaml.safe_load(config_path.read_text())
    raw["gateway"]["redis_url"] = redis_url
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_key_revoke_writes_the_marker_on_a_cluster(config_path: Path, tmp_path: Path, cluster: LocalCluster,
                                                   cluster_client: SyncClient,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_on(config_path, tmp_path, cluster.url)
    jti = f"cli-{uuid.uuid4().hex[:8]}"
    exp = time.time() + 200
    assert cli.main(["--config", str(config), "key", "revoke", jti, "--tenant", OTHER_TENANT,
                     "--exp", str(exp)]) == 0
    assert f"revoked {jti}" in capsys.readouterr().out
    ttl = cluster_client.ttl(marker(OTHER_TENANT, jti))
    leeway = load_config(config).gateway.leeway_s  # the marker outlives exp by the config's leeway
    assert cluster_client.get(marker(OTHER_TENANT, jti)) == b"1" and 200 + leeway - 5 <= ttl <= 200 + leeway


def test_key_revoke_says_so_when_redis_cannot_be_reached(config_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_on(config_path, tmp_path, "redis://127.0.0.1:1/0")
    assert cli.main(["--config", str(config), "key", "revoke", "some-jti", "--tenant", OTHER_TENANT]) == 1
    out = capsys.readouterr().out
    assert "not revoked" in out and "Traceback" not in out
