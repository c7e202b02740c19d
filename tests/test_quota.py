"""Counters in a real Redis: concurrent admits never overspend, uses and rpm hold, settlement is idempotent."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import redis
from conftest import OTHER_TENANT, private_redis, verified_key
from ledger_sync import counters, revoke, settle

from dynaseal.config import DynasealConfig
from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import build_registry
from dynaseal.ledger.outcomes import SettleOutcome
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import connect
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest


@pytest.fixture
def base_key(cfg: DynasealConfig) -> VerifiedKey:
    """A verified key of the test tenant with no counters limits; tests `replace()` what they need."""
    return verified_key(cfg, "q")


def request(reserve: int) -> CheckedRequest:
    return CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=reserve, prompt_bound=0)


async def admit_many(url: str, key: VerifiedKey, count: int, reserve: int) -> list[str]:
    quota = RedisQuota.from_url(url, timeout_s=2.0)
    async def one(i: int) -> str:
        try:
            await admit_request(quota, key, request(reserve), f"r-{i}")
            return "ok"
        except Refusal as refusal:
            return refusal.code.value
    try:
        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await quota.client.aclose()


def test_concurrent_admits_never_exceed_budget(redis_server: str, sync_redis: redis.Redis,
                                               base_key: VerifiedKey) -> None:
    key = replace(base_key, budget=1000)
    results = asyncio.run(admit_many(redis_server, key, 200, 30))
    admitted = results.count("ok")
    assert admitted == 1000 // 30
    assert set(results) == {"ok", "insufficient_quota"}
    assert counters(sync_redis, OTHER_TENANT, key.jti)["reserved"] == admitted * 30 <= 1000
    # Settle every admitted request with its true usage: the budget ends at the true total.
    for i, outcome in enumerate(results):
        if outcome == "ok":
            settle(sync_redis, OTHER_TENANT, key.jti, f"r-{i}", 12)
    final = counters(sync_redis, OTHER_TENANT, key.jti)
    assert final["reserved"] == 0
    assert final["spent"] == admitted * 12


def test_single_use_key_admits_exactly_one_of_fifty(redis_server: str, base_key: VerifiedKey) -> None:
    key = replace(base_key, uses=1)
    results = asyncio.run(admit_many(redis_server, key, 50, 10))
    assert results.count("ok") == 1
    assert results.count("key_exhausted") == 49


def test_rpm_holds(redis_server: str, base_key: VerifiedKey) -> None:
    key = replace(base_key, rpm=5)
    results = asyncio.run(admit_many(redis_server, key, 20, 1))
    assert results.count("ok") == 5
    assert results.count("rate_limit_exceeded") == 15


def test_revoked_key_is_refused(redis_server: str, sync_redis: redis.Redis, base_key: VerifiedKey) -> None:
    assert asyncio.run(admit_many(redis_server, base_key, 1, 1)) == ["ok"]
    revoke(sync_redis, OTHER_TENANT, base_key.jti, base_key.exp)
    assert asyncio.run(admit_many(redis_server, base_key, 1, 1)) == ["revoked_key"]


def test_settlement_is_idempotent(redis_server: str, sync_redis: redis.Redis, base_key: VerifiedKey) -> None:
    asyncio.run(admit_many(redis_server, base_key, 1, 50))
    first = settle(sync_redis, OTHER_TENANT, base_key.jti, "r-0", 20)
    again = settle(sync_redis, OTHER_TENANT, base_key.jti, "r-0", 20)
    assert (first.outcome, again.outcome) == (SettleOutcome.SETTLED, SettleOutcome.ALREADY_SETTLED)
    assert counters(sync_redis, OTHER_TENANT, base_key.jti) == {"uses": 1, "reserved": 0, "spent": 20}


def test_expired_reservation_is_billed_then_corrected_once(redis_server: str, sync_redis: redis.Redis,
                                                           base_key: VerifiedKey) -> None:
    async def admit_short() -> None:
        quota = RedisQuota(connect(redis_server, 2.0), reservation_ttl_ms=1)
        await admit_request(quota, base_key, request(40), "late")
        await quota.client.aclose()
    asyncio.run(admit_short())
    time.sleep(0.01)
    asyncio.run(admit_many(redis_server, replace(base_key), 0, 1))
    # expired, billed 40, corrected to 15
    assert settle(sync_redis, OTHER_TENANT, base_key.jti, "late", 15).outcome == SettleOutcome.CORRECTED
    assert counters(sync_redis, OTHER_TENANT, base_key.jti)["spent"] == 15
    assert settle(sync_redis, OTHER_TENANT, base_key.jti, "late", 15).outcome == SettleOutcome.ALREADY_SETTLED


def test_redis_down_fails_closed(base_key: VerifiedKey) -> None:
    from dynaseal.errors import QuotaUnavailable

    async def admit_dead() -> None:
        quota = RedisQuota.from_url("redis://127.0.0.1:1/0", timeout_s=0.05)
        await admit_request(quota, base_key, request(1), "x")
    with pytest.raises(QuotaUnavailable):
        asyncio.run(admit_dead())


def test_a_known_request_id_is_refused_not_admitted_for_free(redis_server: str, sync_redis: redis.Redis,
                                                             base_key: VerifiedKey) -> None:
    from dynaseal.errors import QuotaUnavailable

    key = replace(base_key, uses=5)

    async def twice() -> None:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        await admit_request(quota, key, request(10), "same-id")
        try:
            with pytest.raises(QuotaUnavailable) as refused:
                await admit_request(quota, key, request(10), "same-id")
            assert refused.value.reason == "duplicate_request_id"
        finally:
            await quota.client.aclose()
    asyncio.run(twice())
    assert counters(sync_redis, OTHER_TENANT, key.jti) == {"uses": 1, "reserved": 10}


def test_same_jti_in_two_tenants_shares_nothing(redis_server: str, sync_redis: redis.Redis, cfg: DynasealConfig,
                                                base_key: VerifiedKey) -> None:
    from conftest import DEMO_TENANT

    other = build_registry(cfg).get(DEMO_TENANT)
    assert other is not None
    victim = replace(base_key, uses=1)
    attacker = replace(victim, tenant=other)  # tenant B minted a key with tenant A's jti
    assert asyncio.run(admit_many(redis_server, attacker, 3, 1)) == ["ok", "key_exhausted", "key_exhausted"]
    revoke(sync_redis, DEMO_TENANT, victim.jti, victim.exp)
    assert asyncio.run(admit_many(redis_server, victim, 1, 1)) == ["ok"]  # A's key: untouched by B's spend/revoke
    assert counters(sync_redis, OTHER_TENANT, victim.jti)["uses"] == 1


def test_an_admit_redis_runs_after_its_deadline_writes_nothing(redis_server: str, sync_redis: redis.Redis,
                                                               base_key: VerifiedKey) -> None:
    from dynaseal.errors import QuotaUnavailable

    async def late() -> str:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        assert await quota.ping() and quota.clock_offset_ms is not None
        quota.clock_offset_ms -= 10_000  # as if Redis got to the script 10 s after authz gave up
        try:
            await admit_request(quota, replace(base_key, uses=1, budget=100, rpm=1), request(10), "late-1")
        except QuotaUnavailable as exc:
            return exc.reason
        finally:
            await quota.client.aclose()
        return "admitted"
    assert asyncio.run(late()) == "redis_late"
    assert counters(sync_redis, OTHER_TENANT, base_key.jti) == {}


def test_redis_paused_past_the_deadline_refused_requests_spend_nothing(
        tmp_path_factory: pytest.TempPathFactory, base_key: VerifiedKey) -> None:
    """Fault drill: Redis stops answering (SIGSTOP) for longer than authz waits; it then runs the queued scripts."""
    import os
    import signal

    from dynaseal.errors import QuotaUnavailable

    key = replace(base_key, uses=1, budget=1000, rpm=100)

    async def drill(url: str) -> list[str]:
        quota = RedisQuota.from_url(url, timeout_s=0.05)
        assert await quota.ping()
        await admit_request(quota, replace(key, jti=key.jti + "-warm"), request(1), "warm")  # Redis knows it now
        redis_pid = int(redis.Redis.from_url(url).info("server")["process_id"])
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            async def one(i: int) -> str:
                try:
                    await admit_request(quota, key, request(10), f"paused-{i}")
                    return "ok"
                except QuotaUnavailable as exc:
                    return exc.reason
            outcomes = await asyncio.gather(*(one(i) for i in range(51)))
            await asyncio.sleep(0.3)  # authz has long given up: every one of these was a 503
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        await asyncio.sleep(0.3)  # Redis wakes and runs whatever reached it
        await quota.client.aclose()
        return list(outcomes)

    async def after(url: str) -> None:  # the key is still fully usable
        quota = RedisQuota.from_url(url, timeout_s=1.0)
        await quota.ping()
        await admit_request(quota, key, request(10), "after-1")
        await quota.client.aclose()

    with private_redis(tmp_path_factory.mktemp("paused-redis")) as url:
        assert "ok" not in asyncio.run(drill(url))
        client = redis.Redis.from_url(url)
        assert counters(client, OTHER_TENANT, key.jti) == {}  # no use, no reservation, no rate slot taken
        client.close()
        asyncio.run(after(url))


def test_oldest_open_reservation_age_finds_an_unsettled_one(tmp_path_factory: pytest.TempPathFactory,
                                                           base_key: VerifiedKey) -> None:
    from dynaseal.ledger.redis_async import connect
    from dynaseal.ledger.reservation_age import oldest_open_reservation_age_s

    def age(now_ms: int | None = None) -> float:
        async def read() -> float:
            ledger = connect(url, timeout_s=2.0)
            try:
                return await oldest_open_reservation_age_s(ledger, now_ms)
            finally:
                await ledger.aclose()
        return asyncio.run(read())

    with private_redis(tmp_path_factory.mktemp("age-redis")) as url:
        client = redis.Redis.from_url(url)
        assert age() == 0.0
        asyncio.run(admit_many(url, base_key, 2, 5))
        later = int(time.time() * 1000) + 120_000  # two minutes on, nothing settled: the gauge says so
        assert 119 <= age(later) <= 122
        settle(client, OTHER_TENANT, base_key.jti, "r-0", 1)
        assert 119 <= age(later) <= 122  # r-1 is still open
        settle(client, OTHER_TENANT, base_key.jti, "r-1", 1)
        assert age(later) == 0.0
        client.close()
