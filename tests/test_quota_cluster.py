"""Counters on a real 3-master Redis Cluster: the concurrency cases of test_quota, redirects, a failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from cluster_support import LocalCluster, start_cluster
from conftest import OTHER_TENANT, verified_key
from ledger_sync import counters, revoke, settle, sync_client
from test_quota import admit_many, request

from dynaseal.config import DynasealConfig
from dynaseal.errors import QuotaUnavailable, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger import redis_keys
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_cluster import PipelinedCluster
from dynaseal.ledger.redis_connect import parse_cluster_url
from dynaseal.policy.quota_refusals import admit_request


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters, no replicas."""
    local = start_cluster(tmp_path_factory.mktemp("cluster"), masters=3)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_client(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    """redis-py's cluster client, as settlement and revocation use it."""
    client = sync_client(cluster.url)
    assert isinstance(client, redis.RedisCluster)
    yield client
    client.close()


@pytest.fixture
def base_key(cfg: DynasealConfig) -> VerifiedKey:
    """A verified key of the test tenant without counter limits."""
    return verified_key(cfg, "c")


def test_cluster_urls_parse() -> None:
    parsed = parse_cluster_url("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert parsed is not None
    assert parsed.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (parsed.username, parsed.password, parsed.tls) == ("u", "p@ss", False)
    tls = parse_cluster_url("rediss+cluster://secret@h:7000")
    assert tls is not None and tls.tls and (tls.username, tls.password) == (None, "secret")
    assert parse_cluster_url("redis://h:6379/0") is None
    assert PipelinedCluster.from_url("rediss+cluster://h:7000", 0.05) is None  # TLS: redis-py's client
    with pytest.raises(ValueError):
        parse_cluster_url("redis+cluster://")


def test_concurrent_admits_never_exceed_budget_on_a_cluster(cluster: LocalCluster,
                                                            cluster_client: redis.RedisCluster,
                                                            base_key: VerifiedKey) -> None:
    key = replace(base_key, budget=1000)
    results = asyncio.run(admit_many(cluster.url, key, 200, 30))
    admitted = results.count("ok")
    assert admitted == 1000 // 30
    assert set(results) == {"ok", "insufficient_quota"}
    assert counters(cluster_client, OTHER_TENANT, key.jti)["reserved"] == admitted * 30
    for i, outcome in enumerate(results):
        if outcome == "ok":
            settle(cluster_client, OTHER_TENANT, key.jti, f"r-{i}", 12)
    assert counters(cluster_client, OTHER_TENANT, key.jti) == {"uses": admitted, "reserved": 0,
                                                               "spent": admitted * 12}


def test_single_use_key_admits_exactly_one_of_fifty_on_a_cluster(cluster: LocalCluster,
                                                                 base_key: VerifiedKey) -> None:
    results = asyncio.run(admit_many(cluster.url, replace(base_key, uses=1), 50, 10))
    assert (results.count("ok"), results.count("key_exhausted")) == (1, 49)


def test_rpm_holds_on_a_cluster(cluster: LocalCluster, base_key: VerifiedKey) -> None:
    results = asyncio.run(admit_many(cluster.url, replace(base_key, rpm=5), 20, 1))
    assert (results.count("ok"), results.count("rate_limit_exceeded")) == (5, 15)


def test_keys_spread_over_every_master_and_land_on_their_slot(cluster: LocalCluster,
                                                              base_key: VerifiedKey) -> None:
    keys = [replace(base_key, jti=f"{base_key.jti}-{i}", uses=2) for i in range(30)]

    async def run() -> list[list[str]]:
        return [await admit_many(cluster.url, key, 3, 1) for key in keys]
    for outcomes in asyncio.run(run()):
        assert outcomes == ["ok", "ok", "key_exhausted"]
    owners = {cluster.owner_of(redis_keys.counters(OTHER_TENANT, k.jti)) for k in keys}
    assert owners == set(cluster.masters)
    for key in keys[:5]:  # the counters are on the node that owns the slot, where a plain client sees them
        node = cluster.client(cluster.owner_of(redis_keys.counters(OTHER_TENANT, key.jti)))
        assert node.hget(redis_keys.counters(OTHER_TENANT, key.jti), "uses") == b"2"


def test_revocation_through_the_cluster_client_reaches_the_admit(cluster: LocalCluster,
                                                                 cluster_client: redis.RedisCluster,
                                                                 base_key: VerifiedKey) -> None:
    assert asyncio.run(admit_many(cluster.url, base_key, 1, 1)) == ["ok"]
    revoke(cluster_client, OTHER_TENANT, base_key.jti, base_key.exp)
    assert asyncio.run(admit_many(cluster.url, base_key, 1, 1)) == ["revoked_key"]


def _node_id(cluster: LocalCluster, port: int) -> str:
    raw = cluster.client(port).execute_command("CLUSTER MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _move_slot(cluster: LocalCluster, slot: int, source: int, target: int, finish: bool) -> None:
    """Migrate a slot's keys from source to target; `finish` hands the slot over (else it stays migrating)."""
    src, dst = cluster.client(source), cluster.client(target)
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", _node_id(cluster, source))
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", _node_id(cluster, target))
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    if finish:
        for port in cluster.masters:
            cluster.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", _node_id(cluster, target))


def test_moved_and_ask_redirections_are_followed(cluster: LocalCluster, cluster_client: redis.RedisCluster,
                                                 base_key: VerifiedKey) -> None:
    """One long-lived client whose slot map goes stale: ASK mid-migration, MOVED after it, twice."""
    key = replace(base_key, uses=6)
    counter = redis_keys.counters(OTHER_TENANT, key.jti)
    slot = redis.crc.key_slot(counter.encode())
    source = cluster.owner_of(counter)
    first, second = [p for p in cluster.masters if p != source][:2]

    async def run() -> tuple[list[str], object]:
        quota = RedisQuota.from_url(cluster.url, timeout_s=2.0)
        assert isinstance(quota.client, PipelinedCluster)
        outcomes = []

        async def one(rid: str) -> None:
            try:
                await admit_request(quota, key, request(1), rid)
                outcomes.append("ok")
            except Refusal as refusal:
                outcomes.append(refusal.code.value)
            except QuotaUnavailable:
                outcomes.append("503")
        try:
            await one("before")
            _move_slot(cluster, slot, source, first, finish=False)
            # Mid-migration a single-key command follows ASK to the importing node; the admit script's
            # keys are not all there (some never exist), so Redis answers TRYAGAIN: it fails closed.
            asked = await quota.client.execute_on(counter, "HGET", counter, "uses")
            await one("during-migration")
            for port in cluster.masters:  # the migration ends: the old owner now answers MOVED
                cluster.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", _node_id(cluster, first))
            await one("moved")
            _move_slot(cluster, slot, first, second, finish=True)
            await asyncio.gather(*(one(f"again-{i}") for i in range(5)))
        finally:
            await quota.client.aclose()
        return outcomes, asked
    outcomes, asked = asyncio.run(run())
    assert asked == b"1"
    assert outcomes[:3] == ["ok", "503", "ok"]
    assert sorted(outcomes[3:]) == ["key_exhausted"] + ["ok"] * 4
    assert cluster.owner_of(counter) == second
    assert counters(cluster_client, OTHER_TENANT, key.jti)["uses"] == 6


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three masters with a replica each, for killing a master."""
    local = start_cluster(tmp_path / "failover", masters=3, replicas_per_master=1, node_timeout_ms=1000)
    try:
        yield local
    finally:
        local.stop()


def test_a_master_killed_mid_traffic_fails_closed_then_recovers_after_promotion(
        failover_cluster: LocalCluster, base_key: VerifiedKey) -> None:
    cluster = failover_cluster
    key = replace(base_key, budget=None)
    counter = redis_keys.counters(OTHER_TENANT, key.jti)
    victim = cluster.owner_of(counter)
    replica = cluster.replicas[cluster.masters.index(victim)]

    async def traffic() -> tuple[list[tuple[float, str]], list[bool]]:
        quota = RedisQuota.from_url(cluster.url, timeout_s=0.2)
        assert await quota.ping()
        outcomes: list[tuple[float, str]] = []
        health: list[bool] = []
        started = time.monotonic()
        killed_at = None
        i = 0
        try:
            while time.monotonic() - started < 30:
                if killed_at is None and time.monotonic() - started > 0.5:
                    cluster.kill(victim)
                    killed_at = time.monotonic()
                batch = []
                for _ in range(10):
                    i += 1
                    batch.append(admit_request(quota, key, request(1), f"f-{i}"))
                for result in await asyncio.gather(*batch, return_exceptions=True):
                    if result is None:
                        outcomes.append((time.monotonic(), "ok"))
                    elif isinstance(result, QuotaUnavailable):
                        outcomes.append((time.monotonic(), "503"))
                    else:
                        raise result  # anything else (an admit with no answer, a crash) fails the test
                health.append(await quota.ping())
                recent = [o for _, o in outcomes[-30:]]
                if killed_at is not None and "503" in (o for _, o in outcomes) and recent == ["ok"] * 30:
                    break
                await asyncio.sleep(0.02)
        finally:
            await quota.client.aclose()
        return outcomes, health

    outcomes, health = asyncio.run(traffic())
    kinds = [o for _, o in outcomes]
    first_failure = kinds.index("503")
    assert kinds[:first_failure].count("ok") >= 10  # traffic flowed before the kill
    assert kinds[-30:] == ["ok"] * 30, "admits did not recover after the replica's promotion"
    assert False in health and health[-1] is True  # readiness followed: NOT_SERVING, then SERVING again
    assert cluster.owner_of(counter) == replica
    # The promoted master enforces the counters it has: a uses-limited key admits exactly what is left.
    node = cluster.client(replica)
    used = int(node.hget(counter, "uses") or 0)
    assert 0 < used <= kinds.count("ok") + 10  # replication is asynchronous: the last writes may be lost
    later = asyncio.run(admit_many(cluster.url, replace(key, uses=used + 5), 20, 1))
    assert later.count("ok") == 5 and later.count("key_exhausted") == 15


def test_cli_and_issuer_revocations_reach_the_cluster(cluster: LocalCluster, config_path: Path,
                                                      base_key: VerifiedKey, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynaseal_launcher.cli import main
    from issuer_api.gateway_notice import notify_revoked

    by_cli, by_issuer = replace(base_key, jti=base_key.jti + "-cli"), replace(base_key, jti=base_key.jti + "-api")
    monkeypatch.setenv("REDIS_URL", cluster.url)
    assert main(["--config", str(config_path), "key", "revoke", by_cli.jti, "--tenant", OTHER_TENANT]) == 0
    asyncio.run(notify_revoked(cluster.url, OTHER_TENANT, by_issuer.jti, by_issuer.exp))
    assert asyncio.run(admit_many(cluster.url, by_cli, 1, 1)) == ["revoked_key"]
    assert asyncio.run(admit_many(cluster.url, by_issuer, 1, 1)) == ["revoked_key"]
