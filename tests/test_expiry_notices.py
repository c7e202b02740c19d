"""Expired reservations the log never settled: indexed by the ledger, claimed once for their callback."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from conftest import OTHER_TENANT, private_redis, verified_key
from ledger_sync import counters, settle

from dynaseal.config import DynasealConfig
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger import expiry_notices
from dynaseal.ledger.outcomes import SettleOutcome
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect
from dynaseal.ledger.redis_keys import reservation_deadlines
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest

TTL_MS = 200
T = TypeVar("T")


def _on_ledger(url: str, work: Callable[[AsyncLedgerRedis], Awaitable[T]]) -> T:
    """`work` with the services' asyncio client (as the consumer's sweep calls it), on a loop of its own."""
    async def run() -> T:
        client = connect(url, timeout_s=2.0)
        try:
            return await work(client)
        finally:
            await client.aclose()
    return asyncio.run(run())


def _claim(url: str, lease_ms: int) -> list[expiry_notices.ExpiredReservation]:
    return _on_ledger(url, functools.partial(expiry_notices.claim, lease_ms=lease_ms))


async def _admit(url: str, key: VerifiedKey, ids: list[str], reserve: int) -> None:
    quota = RedisQuota.from_url(url, timeout_s=2.0)
    quota.reservation_ttl_ms = TTL_MS
    try:
        for rid in ids:
            await admit_request(quota, key, CheckedRequest(model="gpt-4o-mini", stream=False, n=1,
                                                           max_tokens=reserve, prompt_bound=0), rid)
    finally:
        await quota.client.aclose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own: the session Redis is swept by the session stack's consumers, and holds
    other tests' expired reservations."""
    with private_redis(tmp_path) as url:
        yield url


@pytest.fixture
def sync_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def key(cfg: DynasealConfig) -> VerifiedKey:
    return replace(verified_key(cfg, "exp"), budget=10_000)


def test_a_reservation_nobody_settles_is_expired_billed_and_claimed_once(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    ids = [f"lost-{i}-{time.time_ns()}" for i in range(5)]
    asyncio.run(_admit(redis_server, key, ids, 40))
    assert not _claim(redis_server, 60_000)  # nothing expired yet
    time.sleep(TTL_MS / 1000 + 0.1)
    # Nobody touches the key again: the sweep has Redis bill the reservations (provisionally).
    assert _on_ledger(redis_server, expiry_notices.expire_due) >= 1
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent"] == 5 * 40
    assert not sync_redis.zcard(reservation_deadlines(OTHER_TENANT, key.jti))
    # Several consumers claim at once: each id goes to exactly one of them.
    async def four_claimers() -> list[list[expiry_notices.ExpiredReservation]]:
        clients = [connect(redis_server, timeout_s=2.0) for _ in range(4)]  # one per consumer
        try:
            return list(await asyncio.gather(*(expiry_notices.claim(c, lease_ms=60_000) for c in clients)))
        finally:
            for c in clients:
                await c.aclose()
    claims = asyncio.run(four_claimers())
    taken = [c for batch in claims for c in batch if c.jti == key.jti]
    assert sorted(c.request_id for c in taken) == sorted(ids)
    assert {(c.tenant, c.tokens) for c in taken} == {(OTHER_TENANT, 40)}
    for c in taken:
        _on_ledger(redis_server, functools.partial(expiry_notices.done, reservation=c))
    assert not [c for c in _claim(redis_server, 1) if c.jti == key.jti]


def test_a_claim_whose_consumer_died_is_handed_out_again_after_its_lease(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    key = replace(key, jti=f"lease-{time.time_ns()}")
    rid = f"r-{time.time_ns()}"
    asyncio.run(_admit(redis_server, key, [rid], 10))
    time.sleep(TTL_MS / 1000 + 0.1)
    _on_ledger(redis_server, expiry_notices.expire_due)
    first = [c for c in _claim(redis_server, 300) if c.jti == key.jti]
    assert [c.request_id for c in first] == [rid]
    assert not [c for c in _claim(redis_server, 300) if c.jti == key.jti]  # leased
    time.sleep(0.4)  # the claimer never said done
    again = [c for c in _claim(redis_server, 300) if c.jti == key.jti]
    assert [c.request_id for c in again] == [rid]


def test_a_late_real_settlement_corrects_the_bill_and_cancels_the_notice(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    key = replace(key, jti=f"late-{time.time_ns()}")
    early, late = f"early-{time.time_ns()}", f"late-{time.time_ns()}"
    asyncio.run(_admit(redis_server, key, [early, late], 50))
    time.sleep(TTL_MS / 1000 + 0.1)
    _on_ledger(redis_server, expiry_notices.expire_due)
    # One real line arrives after the expiry, before any notice was claimed.
    assert settle(sync_redis, OTHER_TENANT, key.jti, late, 7).outcome == SettleOutcome.CORRECTED
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent"] == 50 + 7
    claimed = [c.request_id for c in _claim(redis_server, 60_000) if c.jti == key.jti]
    assert claimed == [early]  # the settled one needs no reservation callback


def test_names_of_child_levels_and_strange_tenants_parse_safely() -> None:
    name = reservation_deadlines("a:b{c}", "j%1") + expiry_notices.EXPIRED_SUFFIX
    assert expiry_notices.parse_root(name, ":deadlines:expired") == ("a:b{c}", "j%1")
    assert expiry_notices.parse_root("dynaseal:v2:{t:r}:n:abc:deadlines:expired", ":deadlines:expired") is None
    assert expiry_notices.parse_root("other:{t:r}:deadlines:expired", ":deadlines:expired") is None
