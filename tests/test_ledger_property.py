"""The ledger against a model: random interleavings of admit / tenant refusal / tenant failure / settle / expire /
release on a three-level key chain under a tenant tier, in a real Redis, with explicit clocks and a short
reservation TTL. A release is either the compensation (`RedisQuota.release`, both tiers) or Envoy's give-back
(`GiveBack.run`: the tenant's only when the chain gave something back), of an open, expired, settled or
already released request.

The model is plain Python: every reservation's state (open, expired and billed in full, settled, cancelled) and
the counters that follow from it. After every step each level's uses, tokens (reserved + spent), money
(reserved_cost + spent_cost), rpm window and the tenant's r:/s: and rpm window must equal the model's (Redis
expires lazily, so only the sums are fixed mid-run); at the end, once every reservation is past its deadline
and each slot has been touched, every counter on its own. Every admission's code and every settlement's
outcome must be the model's too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_sync import settle

from dynaseal.ledger import redis_keys
from dynaseal.ledger.admission import Admission, LevelLimits, TenantTier
from dynaseal.ledger.give_back import GiveBack
from dynaseal.ledger.outcomes import AdmitCode, Admitted, SettleOutcome
from dynaseal.ledger.quota import MoneySettlement, RedisQuota
from dynaseal.ledger.redis_async import connect
from dynaseal.ledger.tenant_quota import window_id
from dynaseal.ledger.tenant_scripts import TENANT_ADMIT
from dynaseal.tenant_config import Limits, TenantBudget

TTL_MS = 1000
LEVELS = (LevelLimits("R", budget=300, uses=14, rpm=9),
          LevelLimits("C", budget=160, uses=9, rpm=6, budget_cost=900),
          LevelLimits("G", budget=90, rpm=4, budget_cost=400))
TIER = TenantTier(budget=380, window="day", rpm=7)
# The tenant's limits as the give-back reads them (it only asks whether the tenant has a tenant tier).
LIMITS = Limits(tenant_budget=TenantBudget(tokens=380, window="day"), tenant_rpm=7)
FIELDS = ("uses", "reserved", "spent", "reserved_cost", "spent_cost")


@dataclass
class Reservation:
    """One admitted request as the model sees it."""

    rid: str
    depth: int  # levels 0..depth-1 hold it
    tokens: int
    cost: int | None
    deadline: int
    state: str = "open"  # open | expired | settled | cancelled
    tenant: str = "open"  # open | expired | settled | cancelled | none
    admitted_at: int = 0


@dataclass
class Model:
    """The true counters, computed from the reservations."""

    now: int
    reservations: list[Reservation] = field(default_factory=list)
    spent: list[int] = field(default_factory=lambda: [0, 0, 0])
    spent_cost: list[int] = field(default_factory=lambda: [0, 0, 0])
    tenant_spent: int = 0

    def expire(self) -> None:
        """Eagerly what Redis does lazily: a reservation past its deadline is billed in full."""
        for r in self.reservations:
            if r.state == "open" and r.deadline <= self.now:
                r.state = "expired"
                for level in range(r.depth):
                    self.spent[level] += r.tokens
                    self.spent_cost[level] += r.cost or 0
            if r.tenant == "open" and r.deadline <= self.now:
                r.tenant = "expired"
                self.tenant_spent += r.tokens

    def holding(self, level: int) -> list[Reservation]:
        return [r for r in self.reservations if r.depth > level and r.state != "cancelled"]

    def level(self, level: int) -> dict[str, int]:
        open_ = [r for r in self.holding(level) if r.state == "open"]
        return {"uses": len(self.holding(level)), "reserved": sum(r.tokens for r in open_),
                "spent": self.spent[level], "reserved_cost": sum(r.cost or 0 for r in open_),
                "spent_cost": self.spent_cost[level]}

    def rpm_count(self, level: int | None) -> int:
        """Admissions in the last minute holding a slot (a level's, or the tenant's with None)."""
        holders = ([r for r in self.reservations if r.tenant not in ("none", "cancelled")] if level is None
                   else [r for r in self.holding(level) if LEVELS[level].rpm is not None])
        return sum(1 for r in holders if r.admitted_at > self.now - 60_000)

    def tenant(self) -> tuple[int, int]:
        return sum(r.tokens for r in self.reservations if r.tenant == "open"), self.tenant_spent

    def admit(self, rid: str, depth: int, tokens: int, cost: int | None, tenant_fails: bool) -> AdmitCode:
        """What the ledger must answer, and its effect."""
        self.expire()
        for level in range(depth):
            limits, state = LEVELS[level], self.level(level)
            if limits.uses is not None and state["uses"] >= limits.uses:
                return AdmitCode.USES_SPENT
            if limits.rpm is not None and self.rpm_count(level) >= limits.rpm:
                return AdmitCode.RATE_LIMITED
            if limits.budget is not None and state["reserved"] + state["spent"] + tokens > limits.budget:
                return AdmitCode.BUDGET_SPENT
            if limits.budget_cost is not None and (
                    cost is None or state["reserved_cost"] + state["spent_cost"] + cost > limits.budget_cost):
                return AdmitCode.MONEY_SPENT
        if tenant_fails:
            return AdmitCode.PAST_DEADLINE  # stands for "failed": nothing stays reserved anywhere
        reserved, spent = self.tenant()
        if TIER.rpm is not None and self.rpm_count(None) >= TIER.rpm:
            code = AdmitCode.TENANT_RATE_LIMITED
        elif TIER.budget is not None and reserved + spent + tokens > TIER.budget:
            code = AdmitCode.TENANT_BUDGET_SPENT
        else:
            code = AdmitCode.ADMITTED
        admitted = code == AdmitCode.ADMITTED
        self.reservations.append(Reservation(rid, depth, tokens, cost, self.now + TTL_MS,
                                             "open" if admitted else "cancelled", "open" if admitted else "none",
                                             self.now))
        return code

    def release(self, r: Reservation, give_back: bool) -> None:
        """Undo what admission did (or an expiry's bill); settled and cancelled are final, at each tier."""
        self.expire()
        given = r.state in ("open", "expired")
        if r.state == "expired":
            for level in range(r.depth):
                self.spent[level] -= r.tokens
                self.spent_cost[level] -= r.cost or 0
        if given:
            r.state = "cancelled"
        if (given or not give_back) and r.tenant in ("open", "expired"):
            if r.tenant == "expired":
                self.tenant_spent -= r.tokens
            r.tenant = "cancelled"

    def settle(self, r: Reservation, tokens: int, cost: int | None) -> SettleOutcome:
        self.expire()
        if r.tenant == "open":
            self.tenant_spent += tokens
        elif r.tenant == "expired":
            self.tenant_spent += tokens - r.tokens
        if r.tenant in ("open", "expired"):
            r.tenant = "settled"
        if r.state in ("settled", "cancelled"):
            return SettleOutcome.ALREADY_SETTLED
        outcome = SettleOutcome.SETTLED if r.state == "open" else SettleOutcome.CORRECTED
        for level in range(r.depth):
            held = r.tokens if r.state == "expired" else 0
            self.spent[level] += tokens - held
            if r.cost is not None:
                billed = r.cost if r.state == "expired" else 0
                self.spent_cost[level] += (r.cost if cost is None else cost) - billed
        r.state = "settled"
        return outcome


def read_level(client: redis.Redis, tenant: str, depth: int, now: int) -> tuple[dict[str, int], int]:
    names = redis_keys.level_keys(tenant, tuple(level.jti for level in LEVELS[:depth]))
    raw = client.hgetall(names[1])
    state = {f: int(raw.get(f.encode(), 0)) for f in FIELDS}
    return state, int(client.zcount(names[4], f"({now - 60_000}", "+inf"))


def read_tenant(client: redis.Redis, tenant: str, now: int) -> tuple[tuple[int, int], int]:
    window = window_id(TIER.window, now / 1000)
    reserved, spent = client.hmget(redis_keys.tenant_budget(tenant), [f"r:{window}", f"s:{window}"])
    rpm = client.zcount(redis_keys.tenant_rate_window(tenant), f"({now - 60_000}", "+inf")
    return (int(reserved or 0), int(spent or 0)), int(rpm)


def check_sums(client: redis.Redis, tenant: str, model: Model) -> None:
    """Mid-run: what lazy expiry cannot change."""
    model.expire()
    for level in range(3):
        state, rpm = read_level(client, tenant, level + 1, model.now)
        want = model.level(level)
        assert state["uses"] == want["uses"], (level, state, want)
        assert state["reserved"] + state["spent"] == want["reserved"] + want["spent"], (level, state, want)
        assert (state["reserved_cost"] + state["spent_cost"] == want["reserved_cost"] + want["spent_cost"]), \
            (level, state, want)
        assert rpm == model.rpm_count(level) or LEVELS[level].rpm is None
    (reserved, spent), rpm = read_tenant(client, tenant, model.now)
    assert reserved + spent == sum(model.tenant()) and rpm == model.rpm_count(None)


class FailingTenant(RedisQuota):
    """A ledger whose tenant admission fails (the connection drops) before its script runs, or after (`lost`:
    the reply is lost, what it reserved is held until the release)."""

    lost = False

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if script == TENANT_ADMIT:
            if self.lost:
                await super().run_script(script, keys, args)
            raise redis.ConnectionError("connection lost")
        return await super().run_script(script, keys, args)


OPS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["admit", "admit", "admit", "tenant_fails", "tenant_lost"]), st.integers(1, 3),
              st.integers(0, 60), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 10**6), st.just(0), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 10**6), st.integers(0, 100), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 400, 999, 1000, 1500, 30_000, 61_000]),
              st.just(0), st.just(False))), max_size=45)


async def release(quota: RedisQuota, model: Model, tenant: str, r: Reservation, give_back: bool) -> None:
    """Release one request by Envoy's give-back or by the compensation, in the model and in Redis."""
    model.release(r, give_back)
    path = tuple(level.jti for level in LEVELS[:r.depth])
    if give_back:
        await GiveBack(quota).run(tenant, path, r.rid, LIMITS)
    else:
        admission = Admission(tenant, LEVELS[:r.depth], r.rid, r.tokens, r.cost, time.time() + 3600, TIER)
        await quota.release(admission, tenant=True, now_ms=model.now)


async def play(url: str, client: redis.Redis, tenant: str, ops: list[tuple[str, int, int, bool]]) -> None:
    base = (int(time.time()) // 86400) * 86_400_000 + 3_600_000  # 01:00 UTC today: one day window throughout
    model = Model(now=base)
    quota = RedisQuota(connect(url, 2.0), reservation_ttl_ms=TTL_MS, timeout_s=2.0)
    failing = FailingTenant(quota.client, reservation_ttl_ms=TTL_MS, timeout_s=2.0)
    expires_at = time.time() + 3600
    try:
        for i, (op, a, b, flag) in enumerate(ops):
            if op in ("admit", "tenant_fails", "tenant_lost"):
                depth, tokens = a, b
                cost = 2 * tokens if flag else None  # unpriced: only the root (no money budget) admits it
                admission = Admission(tenant, LEVELS[:depth], f"r-{i}", tokens, cost, expires_at, TIER)
                want = model.admit(f"r-{i}", depth, tokens, cost, op != "admit")
                failing.lost = op == "tenant_lost"
                if want == AdmitCode.PAST_DEADLINE:
                    try:
                        await failing.admit(admission, now_ms=model.now)
                        raise AssertionError("a failing tenant slot must fail the admission")
                    except Exception as exc:  # LedgerUnavailable: and every level got it all back
                        assert type(exc).__name__ == "LedgerUnavailable", exc
                else:
                    got = await quota.admit(admission, now_ms=model.now)
                    assert (AdmitCode.ADMITTED if isinstance(got, Admitted) else got.code) == want, (i, got, want)
            elif op == "settle" and model.reservations:
                r = model.reservations[a % len(model.reservations)]
                tokens = r.tokens * b // 100
                cost = None if r.cost is None or flag else 2 * tokens
                want_outcome = model.settle(r, tokens, cost)
                result = settle(client, tenant, LEVELS[r.depth - 1].jti, r.rid, tokens,
                                chain=tuple(level.jti for level in LEVELS[:r.depth]),
                                money=MoneySettlement(cost_micros=cost), now_ms=model.now)
                assert result.outcome == want_outcome, (i, result, want_outcome)
            elif op == "release" and model.reservations:
                await release(quota, model, tenant, model.reservations[a % len(model.reservations)], flag)
            elif op == "advance":
                model.now += a
            check_sums(client, tenant, model)
    finally:
        await quota.client.aclose()
    # The end: every reservation past its deadline, every slot touched once (a settlement of an unknown id).
    model.now += 10 * TTL_MS
    model.expire()
    for depth in (1, 2, 3):
        settle(client, tenant, LEVELS[depth - 1].jti, f"touch-{depth}", 0,
               chain=tuple(level.jti for level in LEVELS[:depth]), now_ms=model.now)
    for level in range(3):
        assert read_level(client, tenant, level + 1, model.now)[0] == model.level(level)
    assert read_tenant(client, tenant, model.now)[0] == model.tenant() == (0, model.tenant_spent)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_every_counter_returns_to_its_true_value(redis_server: str, sync_redis: redis.Redis,
                                                 ops: list[tuple[str, int, int, bool]]) -> None:
    tenant = f"p-{uuid.uuid4().hex[:10]}"  # fresh counters for each example
    asyncio.run(play(redis_server, sync_redis, tenant, ops))


def test_the_model_is_not_vacuous(redis_server: str, sync_redis: redis.Redis) -> None:
    """One fixed sequence that reaches every code path: refusals by each tier, a failure, expiry, corrections."""
    ops = [("admit", 3, 60, True), ("admit", 3, 40, True), ("admit", 2, 60, True), ("tenant_fails", 3, 5, True),
           ("admit", 1, 50, False), ("admit", 3, 5, False), ("advance", 1000, 0, False), ("settle", 0, 50, False),
           ("settle", 1, 100, True), ("admit", 1, 60, True), ("admit", 1, 60, True), ("admit", 1, 60, True),
           ("admit", 1, 60, True), ("admit", 1, 60, True), ("settle", 9, 10, False), ("settle", 0, 50, False)]
    asyncio.run(play(redis_server, sync_redis, f"p-{uuid.uuid4().hex[:10]}", ops))


def test_the_model_reaches_every_release(redis_server: str, sync_redis: redis.Redis) -> None:
    """One fixed sequence with a release in each state: open, settled, expired, already released; by both paths."""
    ops = [("admit", 3, 30, True), ("admit", 2, 20, True), ("admit", 1, 10, False), ("admit", 3, 5, True),
           ("tenant_lost", 2, 5, True),  # the tenant's slot admitted, its reply lost: released at once
           ("settle", 1, 50, False), ("release", 1, 0, False),  # after a settlement: nothing moves
           ("release", 2, 0, True), ("release", 2, 0, True), ("settle", 2, 100, False),  # give-back, twice, settle
           ("advance", 1000, 0, False), ("release", 0, 0, False), ("release", 3, 0, True),  # after expiry
           ("settle", 0, 40, False), ("release", 0, 0, True), ("admit", 3, 60, True)]
    asyncio.run(play(redis_server, sync_redis, f"p-{uuid.uuid4().hex[:10]}", ops))
