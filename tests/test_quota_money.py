"""Money budgets and threshold marks in a real Redis: never overspent, settled to the true cost, each threshold once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from decimal import Decimal

import pytest
import redis
from conftest import OTHER_TENANT, verified_key
from ledger_sync import counters, mark_thresholds, settle

from dynaseal.config import DynasealConfig
from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger.outcomes import SettleOutcome
from dynaseal.ledger.quota import MoneySettlement, RedisQuota
from dynaseal.money.pricing import Price
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest

# 1 micro-unit per prompt token, 3 per completion token: a request of 10 + 20 reserves 70 micro-units.
PRICE = Price("USD", Decimal(1), Decimal("0.5"), Decimal(3), Decimal(3))


@pytest.fixture
def key(cfg: DynasealConfig) -> VerifiedKey:
    return verified_key(cfg, "m", budget_cost=1000)


def request(price: Price | None = PRICE) -> CheckedRequest:
    return CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=20, prompt_bound=10, price=price)


async def admit_many(url: str, key: VerifiedKey, count: int, checked: CheckedRequest,
                     reservation_ttl_ms: int = 60_000, prefix: str = "r") -> list[str]:
    quota = RedisQuota.from_url(url, timeout_s=2.0)
    quota.reservation_ttl_ms = reservation_ttl_ms

    async def one(i: int) -> str:
        try:
            await admit_request(quota, key, checked, f"{prefix}-{i}")
            return "ok"
        except Refusal as refusal:
            return refusal.code.value
    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await quota.client.aclose()


def test_money_budget_holds_under_200_concurrent_admits_and_settles_to_the_true_cost(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    assert request().reservation_cost == 70
    results = asyncio.run(admit_many(redis_server, key, 200, request()))
    admitted = results.count("ok")
    assert admitted == 1000 // 70 and set(results) == {"ok", "insufficient_quota"}
    state = counters(sync_redis, OTHER_TENANT, key.jti)
    assert state["reserved_cost"] == admitted * 70 <= 1000
    for i, outcome in enumerate(results):
        if outcome == "ok":
            settle(sync_redis, OTHER_TENANT, key.jti, f"r-{i}", 15, money=MoneySettlement(cost_micros=33))
    state = counters(sync_redis, OTHER_TENANT, key.jti)
    assert (state["reserved_cost"], state["spent_cost"]) == (0, admitted * 33)
    # What the settlements freed is admitted again, to the micro-unit.
    more = asyncio.run(admit_many(redis_server, key, 600, replace(request(), max_tokens=0, prompt_bound=1),
                                   prefix="more"))
    assert more.count("ok") == 1000 - admitted * 33


def test_money_budget_refuses_an_unpriced_request_even_if_policy_let_it_through(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    assert asyncio.run(admit_many(redis_server, key, 1, request(None))) == ["insufficient_quota"]
    assert counters(sync_redis, OTHER_TENANT, key.jti) == {}
    unbudgeted = replace(key, budget_cost=None)
    assert asyncio.run(admit_many(redis_server, unbudgeted, 1, request(None))) == ["ok"]
    assert "reserved_cost" not in counters(sync_redis, OTHER_TENANT, key.jti)


def test_expired_cost_reservation_is_billed_in_full_then_corrected_once(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    assert asyncio.run(admit_many(redis_server, key, 1, request(), reservation_ttl_ms=1)) == ["ok"]
    time.sleep(0.01)
    asyncio.run(admit_many(redis_server, key, 0, request()))
    settle(sync_redis, OTHER_TENANT, key.jti, "other", 0)  # any script run expires it
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent_cost"] == 70
    assert (settle(sync_redis, OTHER_TENANT, key.jti, "r-0", 9, money=MoneySettlement(cost_micros=21)).outcome
            == SettleOutcome.CORRECTED)
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent_cost"] == 21
    assert (settle(sync_redis, OTHER_TENANT, key.jti, "r-0", 9, money=MoneySettlement(cost_micros=21)).outcome
            == SettleOutcome.ALREADY_SETTLED)
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent_cost"] == 21


def test_unknown_cost_of_a_priced_reservation_is_billed_in_full(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    asyncio.run(admit_many(redis_server, key, 1, request()))
    settle(sync_redis, OTHER_TENANT, key.jti, "r-0", 30)  # no cost known: never under-bill
    assert counters(sync_redis, OTHER_TENANT, key.jti)["spent_cost"] == 70


def test_each_threshold_is_reported_until_marked_then_never_again(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    money = MoneySettlement(budget_tokens=100, budget_cost=1000, thresholds="5000,8000,10000")

    def settle_one(rid: str, tokens: int, cost: int) -> list[str]:
        result = settle(sync_redis, OTHER_TENANT, key.jti, rid, tokens, money=replace(money, cost_micros=cost))
        return sorted(c.field + f"@{c.spent}/{c.limit}" for c in result.pending)

    assert settle_one("a", 40, 300) == []
    assert settle_one("b", 15, 600) == ["thr:cost:5000@900/1000", "thr:cost:8000@900/1000", "thr:tokens:5000@55/100"]
    pending = settle(sync_redis, OTHER_TENANT, key.jti, "b", 15, money=replace(money, cost_micros=600))
    assert pending.duplicate  # a redelivered event still reports what was not delivered
    assert sorted(c.field for c in pending.pending) == ["thr:cost:5000", "thr:cost:8000", "thr:tokens:5000"]
    assert {c.field: c.spent for c in pending.pending} == {"thr:cost:5000": 900, "thr:cost:8000": 900,
                                                           "thr:tokens:5000": 55}
    mark_thresholds(sync_redis, OTHER_TENANT, key.jti, pending.pending)
    assert settle_one("b", 15, 600) == []
    assert settle_one("c", 45, 100) == ["thr:cost:10000@1000/1000", "thr:tokens:10000@100/100",
                                        "thr:tokens:8000@100/100"]
    state = counters(sync_redis, OTHER_TENANT, key.jti)
    assert state["thr:cost:5000"] == state["thr:tokens:5000"] == -1 and state["thr:tokens:8000"] == 100
    assert (state["spent"], state["spent_cost"]) == (100, 1000)
    # No thresholds configured or no budget: nothing is marked.
    assert settle(sync_redis, OTHER_TENANT, key.jti, "d", 1, money=MoneySettlement(cost_micros=1)).pending == ()


def test_a_free_model_reserves_zero_and_still_settles_and_expires(
        redis_server: str, sync_redis: redis.Redis, key: VerifiedKey) -> None:
    """A zero-cost reservation: Lua's -0 is no integer to Redis, so giving it back must not negate it."""
    free = request(Price("USD", Decimal(0), Decimal(0), Decimal(0), Decimal(0)))
    assert free.reservation_cost == 0
    assert asyncio.run(admit_many(redis_server, key, 2, free)) == ["ok", "ok"]
    assert (settle(sync_redis, OTHER_TENANT, key.jti, "r-0", 9, money=MoneySettlement(cost_micros=0)).outcome
            == SettleOutcome.SETTLED)
    assert asyncio.run(admit_many(redis_server, key, 1, free, reservation_ttl_ms=1, prefix="short")) == ["ok"]
    time.sleep(0.01)
    settle(sync_redis, OTHER_TENANT, key.jti, "r-1", 9)  # runs the expiry of "short-0" too
    state = counters(sync_redis, OTHER_TENANT, key.jti)
    assert (state["reserved"], state["reserved_cost"], state["spent_cost"]) == (0, 0, 0)
