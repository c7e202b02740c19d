"""Tenant-wide budget and rpm over all of a tenant's keys, on one Redis and on a 3-master cluster."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
from cluster_support import LocalCluster, start_cluster
from conftest import acme_tenant
from ledger_sync import SyncClient, counters, settle, sync_client, tenant_counters
from test_quota import request

from dynaseal.config import DynasealConfig
from dynaseal.errors import QuotaUnavailable, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger import redis_keys
from dynaseal.ledger.outcomes import Admitted, SettleOutcome
from dynaseal.ledger.quota import MoneySettlement, RedisQuota
from dynaseal.ledger.tenant_quota import window_id
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.tenant_config import TenantBudget


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters, no replicas."""
    local = start_cluster(tmp_path_factory.mktemp("tenant-cluster"), masters=3)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(params=["single", "cluster"])
def url(request: pytest.FixtureRequest, redis_server: str) -> str:
    """The same cases on one Redis and on a cluster (where tenant and key are two slots)."""
    return redis_server if request.param == "single" else request.getfixturevalue("cluster").url


@pytest.fixture
def client(url: str) -> Iterator[SyncClient]:
    """A blocking client for settlement and inspection."""
    c = sync_client(url)
    yield c
    c.close()


def tenant_keys_of(cfg: DynasealConfig, count: int, tenant_budget: TenantBudget | None = None,
                   tenant_rpm: int | None = None, **key_limits: int) -> list[VerifiedKey]:
    """`count` keys of one fresh tenant (a new id each test, so counters start at zero)."""
    base = acme_tenant(cfg)
    tenant = replace(base, id=f"t-{uuid.uuid4().hex[:10]}",
                     limits=base.limits.model_copy(update={"tenant_budget": tenant_budget, "tenant_rpm": tenant_rpm}))
    return [VerifiedKey(tenant=tenant, jti=f"k{i}-{uuid.uuid4().hex[:8]}", exp=time.time() + 600, event_id="e",
                        sub=None, models=None, max_tokens=100, budget=key_limits.get("budget"),
                        uses=key_limits.get("uses"), rpm=key_limits.get("rpm"),
                        budget_cost=key_limits.get("budget_cost")) for i in range(count)]


async def admit_all(url: str, plan: list[tuple[VerifiedKey, int, str]],
                    checked: CheckedRequest | None = None) -> list[str]:
    """Admit every (key, reserve, request id) at once (or `checked` as the request); the outcome of each."""
    quota = RedisQuota.from_url(url, timeout_s=2.0)
    assert await quota.ping()

    async def one(key: VerifiedKey, reserve: int, rid: str) -> str:
        try:
            await admit_request(quota, key, checked or request(reserve), rid)
            return "ok"
        except Refusal as refusal:
            return refusal.code.value
    try:
        return list(await asyncio.gather(*(one(*item) for item in plan)))
    finally:
        await quota.client.aclose()


def key_totals(client: SyncClient, keys: list[VerifiedKey]) -> dict[str, int]:
    """Counters summed over keys."""
    total = {"uses": 0, "reserved": 0, "spent": 0}
    for key in keys:
        for name, value in counters(client, key.tenant.id, key.jti).items():
            total[name] += value
    return total


def test_two_hundred_requests_over_twenty_keys_never_pass_the_tenant_budget(
        url: str, client: SyncClient, cfg: DynasealConfig) -> None:
    keys = tenant_keys_of(cfg, 20, tenant_budget=TenantBudget(tokens=3000, window="day"), budget=400)
    tenant = keys[0].tenant.id
    window = window_id("day", time.time())
    rng = random.Random(7)
    plan = [(keys[i % 20], rng.randint(10, 50), f"r-{i}") for i in range(200)]
    results = asyncio.run(admit_all(url, plan))
    admitted = [(key, reserve, rid) for (key, reserve, rid), outcome in zip(plan, results, strict=True)
                if outcome == "ok"]
    assert set(results) == {"ok", "insufficient_quota"}
    held = tenant_counters(client, tenant, window)
    reserved = sum(reserve for _, reserve, _ in admitted)
    assert held == {"reserved": reserved, "spent": 0}
    assert reserved <= 3000 and 3000 - reserved < 50  # the tenant's budget, not the keys', was the bound
    for key in keys:  # and no key went past its own
        assert counters(client, tenant, key.jti).get("reserved", 0) <= 400
    # Every refused request gave back what the key's slot took: the key side matches the tenant's.
    assert key_totals(client, keys) == {"uses": len(admitted), "reserved": reserved, "spent": 0}

    true_usage = {rid: rng.randint(0, reserve) for _, reserve, rid in admitted}
    for key, _, rid in admitted:
        assert settle(client, tenant, key.jti, rid, true_usage[rid]).outcome == SettleOutcome.SETTLED
        assert (settle(client, tenant, key.jti, rid, true_usage[rid]).outcome
                == SettleOutcome.ALREADY_SETTLED)  # redelivered: nothing moves
    assert tenant_counters(client, tenant, window) == {"reserved": 0, "spent": sum(true_usage.values())}
    assert key_totals(client, keys) == {"uses": len(admitted), "reserved": 0, "spent": sum(true_usage.values())}

    # What settlement freed is admitted again, and still no further than the budget.
    again = asyncio.run(admit_all(url, [(keys[i % 20], 40, f"again-{i}") for i in range(200)]))
    after = tenant_counters(client, tenant, window)
    assert after["spent"] + after["reserved"] <= 3000
    assert after["reserved"] == 40 * again.count("ok") and again.count("ok") > 0


def test_tenant_rpm_holds_across_keys(url: str, client: SyncClient, cfg: DynasealConfig) -> None:
    keys = tenant_keys_of(cfg, 20, tenant_rpm=25)
    results = asyncio.run(admit_all(url, [(keys[i % 20], 1, f"r-{i}") for i in range(100)]))
    assert (results.count("ok"), results.count("rate_limit_exceeded")) == (25, 75)
    assert key_totals(client, keys)["uses"] == 25


def test_a_key_refused_by_its_tenant_keeps_its_use(url: str, client: SyncClient, cfg: DynasealConfig) -> None:
    [key] = tenant_keys_of(cfg, 1, tenant_budget=TenantBudget(tokens=10), uses=1)
    assert asyncio.run(admit_all(url, [(key, 20, "too-big")])) == ["insufficient_quota"]
    assert counters(client, key.tenant.id, key.jti) == {"uses": 0, "reserved": 0}
    assert asyncio.run(admit_all(url, [(key, 5, "fits")])) == ["ok"]  # its one use was never spent
    assert asyncio.run(admit_all(url, [(key, 1, "again")])) == ["key_exhausted"]


def test_a_request_the_tenant_refuses_gives_the_key_its_money_back(url: str, client: SyncClient,
                                                                  cfg: DynasealConfig) -> None:
    """#21 finding 2: the tenant tier's refusal released uses and tokens but kept the key's money reserved."""
    from test_quota_money import request as priced_request

    [key] = tenant_keys_of(cfg, 1, tenant_rpm=1, budget_cost=100)
    tenant = key.tenant.id
    checked = priced_request()  # reserves 70 micro-units
    assert asyncio.run(admit_all(url, [(key, 0, "r-1")], checked)) == ["ok"]
    settle(client, tenant, key.jti, "r-1", 10, money=MoneySettlement(cost_micros=20))
    assert asyncio.run(admit_all(url, [(key, 0, "r-2")], checked)) == ["rate_limit_exceeded"]  # the tenant's rpm
    state = counters(client, tenant, key.jti)
    assert (state["uses"], state["reserved"], state["reserved_cost"], state["spent_cost"]) == (1, 0, 0, 20)
    assert client.hgetall(redis_keys.reservations(tenant, key.jti)) == {}  # no field left without a deadline
    client.delete(redis_keys.tenant_rate_window(tenant))  # a minute later
    # 20 spent + 70 asked <= 100: admitted, as it would be had r-2 never been tried.
    assert asyncio.run(admit_all(url, [(key, 0, "r-3")], checked)) == ["ok"]
    assert counters(client, tenant, key.jti)["reserved_cost"] == 70


def test_a_revoked_or_exhausted_key_never_touches_the_tenant(url: str, client: SyncClient,
                                                             cfg: DynasealConfig) -> None:
    from ledger_sync import revoke

    keys = tenant_keys_of(cfg, 2, tenant_budget=TenantBudget(tokens=100), tenant_rpm=3, uses=1)
    revoke(client, keys[0].tenant.id, keys[0].jti, keys[0].exp)
    outcomes = asyncio.run(admit_all(url, [(keys[0], 10, "r-1"), (keys[1], 10, "r-2"), (keys[1], 10, "r-3")]))
    assert sorted(outcomes) == ["key_exhausted", "ok", "revoked_key"]
    assert client.zcard(redis_keys.tenant_rate_window(keys[0].tenant.id)) == 1  # one rate slot: the admit's


def test_expired_tenant_reservation_is_billed_then_corrected_once(url: str, client: SyncClient,
                                                                  cfg: DynasealConfig) -> None:
    [key] = tenant_keys_of(cfg, 1, tenant_budget=TenantBudget(tokens=1000, window="month"))
    tenant, window = key.tenant.id, window_id("month", time.time())

    async def admit_short() -> None:
        quota = RedisQuota.from_url(url, timeout_s=2.0)
        quota.reservation_ttl_ms = 1
        await admit_request(quota, key, request(40), "late")
        await asyncio.sleep(0.01)
        quota.reservation_ttl_ms = 60_000
        await admit_request(quota, key, request(1), "next")  # runs the expiry: "late" is billed in full
        await quota.client.aclose()
    asyncio.run(admit_short())
    assert tenant_counters(client, tenant, window) == {"reserved": 1, "spent": 40}
    assert settle(client, tenant, key.jti, "late", 15).outcome == SettleOutcome.CORRECTED
    assert tenant_counters(client, tenant, window) == {"reserved": 1, "spent": 15}
    settle(client, tenant, key.jti, "late", 15)
    assert tenant_counters(client, tenant, window) == {"reserved": 1, "spent": 15}


def test_redis_failing_between_the_slots_leaves_nothing_reserved(redis_server: str, cfg: DynasealConfig) -> None:
    """The tenant's script fails after the key's admitted: authz answers 503 and the key gets its use back."""
    [key] = tenant_keys_of(cfg, 1, tenant_budget=TenantBudget(tokens=1000), uses=1)

    async def run() -> str:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        real = quota.run_script

        async def failing(script: str, keys: list[str], args: list[object]) -> object:
            if redis_keys.tenant_tag(key.tenant.id) in keys[0] and len(args) > 1:
                raise redis.ConnectionError("connection lost")
            return await real(script, keys, args)
        quota.run_script = failing  # type: ignore[method-assign]
        try:
            await admit_request(quota, key, request(10), "r-1")
        except QuotaUnavailable as exc:
            return exc.reason
        finally:
            await quota.client.aclose()
        return "admitted"
    assert asyncio.run(run()) == "redis_error"
    client = redis.Redis.from_url(redis_server)
    assert counters(client, key.tenant.id, key.jti) == {"uses": 0, "reserved": 0}
    assert client.hlen(redis_keys.tenant_reservations(key.tenant.id)) == 0
    client.close()


def test_consumer_settlement_settles_tenant_and_key_on_a_cluster(cluster: LocalCluster, cfg: DynasealConfig) -> None:
    from callback_consumer.settlement import SettlementBatcher
    from dynaseal.ledger.redis_async import connect

    keys = tenant_keys_of(cfg, 10, tenant_budget=TenantBudget(tokens=10_000))
    plan = [(keys[i % 10], 30, f"s-{i}") for i in range(60)]
    assert set(asyncio.run(admit_all(cluster.url, plan))) == {"ok"}
    client = sync_client(cluster.url)

    async def settle_all() -> None:
        redis_client = connect(cluster.url, timeout_s=2.0)  # the consumer's client: pipelined, per master
        batcher = SettlementBatcher(redis_client)
        try:
            await asyncio.gather(*(batcher.settle(key.tenant.id, key.jti, rid, 7, tenant_wide=True)
                                   for key, _, rid in plan * 2))  # every event twice: redelivery
        finally:
            await redis_client.aclose()
    try:
        asyncio.run(settle_all())
        window = window_id("day", time.time())
        assert tenant_counters(client, keys[0].tenant.id, window) == {"reserved": 0, "spent": 60 * 7}
        assert key_totals(client, keys) == {"uses": 60, "reserved": 0, "spent": 60 * 7}
    finally:
        client.close()


def test_child_keys_under_a_tenant_wide_budget_are_never_overspent_and_settle_exactly(
        url: str, client: SyncClient, cfg: DynasealConfig) -> None:
    """Child keys of a tenant with tenant-wide limits: every level and the tenant, concurrently, exactly."""
    from test_ledger_chains import child_of, path_of

    [root] = tenant_keys_of(cfg, 1, tenant_budget=TenantBudget(tokens=1000, window="day"), tenant_rpm=1000)
    capped = child_of(root, "capped", budget=300)
    keys = [root, capped, child_of(root, "free"), child_of(capped, "grand", uses=2)]
    tenant, window = root.tenant.id, window_id("day", time.time())
    rng = random.Random(11)
    plan = [(keys[i % 4], rng.randint(20, 50), f"c-{i}") for i in range(120)]
    results = asyncio.run(admit_all(url, plan))
    assert set(results) == {"ok", "insufficient_quota", "key_exhausted"}
    admitted = [(key, reserve, rid) for (key, reserve, rid), outcome in zip(plan, results, strict=True)
                if outcome == "ok"]
    reserved = sum(reserve for _, reserve, _ in admitted)
    assert 1000 - 50 < reserved <= 1000  # the tenant's budget was the bound
    assert tenant_counters(client, tenant, window) == {"reserved": reserved, "spent": 0}

    def level(key: VerifiedKey) -> dict[str, int]:
        state = counters(client, tenant, key.jti, path_of(key))
        return {name: state.get(name, 0) for name in ("uses", "reserved", "spent")}
    for key in keys:  # every refusal, whichever tier made it, gave back what every level took
        mine = [(reserve, rid) for k, reserve, rid in admitted if key in k.chain]
        assert level(key) == {"uses": len(mine), "reserved": sum(r for r, _ in mine), "spent": 0}
    assert level(capped)["reserved"] <= 300 and level(keys[3])["uses"] == 2

    usage = {rid: rng.randint(0, reserve) for _, reserve, rid in admitted}
    for key, _, rid in admitted:
        assert settle(client, tenant, key.jti, rid, usage[rid], chain=path_of(key)).outcome == SettleOutcome.SETTLED
    assert tenant_counters(client, tenant, window) == {"reserved": 0, "spent": sum(usage.values())}
    for key in keys:
        mine_ids = [rid for k, _, rid in admitted if key in k.chain]
        assert level(key) == {"uses": len(mine_ids), "reserved": 0, "spent": sum(usage[rid] for rid in mine_ids)}


def test_the_one_release_undoes_exactly_what_admission_did_and_the_proof_stays_spent(
        url: str, client: SyncClient, cfg: DynasealConfig) -> None:
    from test_ledger_chains import child_of, path_of
    from test_quota_money import request as priced_request

    from dynaseal.ledger.admission import ProofReplay
    from dynaseal.ledger.outcomes import AdmitCode, Refused
    from dynaseal.policy.quota_refusals import admission_of

    [root] = tenant_keys_of(cfg, 1, tenant_rpm=1, budget_cost=1000, uses=10, rpm=10, budget=1000)
    child = child_of(root, "child", budget_cost=500, uses=5, rpm=5, budget=500)
    tenant = root.tenant.id
    levels = [redis_keys.level_keys(tenant, path_of(child)[:depth]) for depth in (1, 2)]

    def snapshot() -> list[object]:  # counters, reservations, deadlines, rpm windows of both levels
        return [(client.hgetall(keys[1]), client.hgetall(keys[2]), client.zrange(keys[3], 0, -1),
                 client.zrange(keys[4], 0, -1)) for keys in levels]

    async def run() -> tuple[object, object, object]:
        quota = RedisQuota.from_url(url, timeout_s=2.0)
        try:
            first = await quota.admit(admission_of(child, priced_request(), "r-1"))
            before = snapshot()
            proof = ProofReplay("proof-1", 2**50, 60_000)
            refused = await quota.admit(replace(admission_of(child, priced_request(), "r-2"), proof=proof))
            after = snapshot()
            replayed = await quota.admit(replace(admission_of(child, priced_request(), "r-3"), proof=proof))
            assert isinstance(refused, Refused)
            assert (before, refused) == (after, Refused(AdmitCode.TENANT_RATE_LIMITED, 0, 0, 0, refused.retry_ms))
            return first, refused, replayed
        finally:
            await quota.client.aclose()
    first, _refused, replayed = asyncio.run(run())
    assert type(first).__name__ == "Admitted"
    assert isinstance(replayed, Refused) and replayed.code == AdmitCode.PROOF_REPLAYED  # the proof stayed spent
    for keys in levels:  # the cancelled id is never admitted nor billed later
        assert client.hget(keys[5], "r-2") == b"c"
    assert settle(client, tenant, child.jti, "r-2", 99, chain=path_of(child)).duplicate
    assert counters(client, tenant, child.jti, path_of(child)).get("spent", 0) == 0


# --- the one release on the tenant's slot: the same state machine as the chain's ----------------------------

RESERVE, ACTUAL, TTL_MS = 40, 15, 1000
# Every order a request's admit, expiry, settlement and releases can come in; the tenant's true (reserved, spent)
# and rpm count after it. Settled and cancelled are final: what comes after either is a no-op.
ORDERINGS: dict[str, tuple[tuple[str, ...], tuple[int, int], int]] = {
    "admit-release": (("release",), (0, 0), 0),
    "admit-expire-release": (("expire", "release"), (0, 0), 0),
    "admit-settle-release": (("settle", "release"), (0, ACTUAL), 1),
    "admit-release-settle": (("release", "settle"), (0, 0), 0),
    "admit-expire-release-settle": (("expire", "release", "settle"), (0, 0), 0),
    "admit-release-release": (("release", "release"), (0, 0), 0),
    "admit-expire-release-release": (("expire", "release", "release"), (0, 0), 0),
    "admit-expire-settle-release": (("expire", "settle", "release"), (0, ACTUAL), 1),
    "admit-settle-release-settle": (("settle", "release", "settle"), (0, ACTUAL), 1),
}


class Ledger:
    """One request of one key under a tenant tier, on an explicit clock, through the ledger's real entry points."""

    def __init__(self, url: str, client: SyncClient, key: VerifiedKey, via: str) -> None:
        self.client, self.key, self.via = client, key, via
        self.tenant = key.tenant.id
        self.quota = RedisQuota.from_url(url, timeout_s=2.0)
        self.quota.reservation_ttl_ms = TTL_MS
        self.now = int(time.time() * 1000)
        self.window = window_id("day", self.now / 1000)
        self.settlements: list[SettleOutcome] = []

    async def step(self, op: str, rid: str) -> None:
        from dynaseal.ledger.give_back import GiveBack
        from dynaseal.policy.quota_refusals import admission_of

        admission = admission_of(self.key, request(RESERVE), rid)
        if op == "admit":
            assert isinstance(await self.quota.admit(admission, now_ms=self.now), Admitted)
        elif op == "expire":  # past the deadline; a settlement of another id makes both slots bill it in full
            self.now += TTL_MS + 1
            settle(self.client, self.tenant, self.key.jti, f"touch-{self.now}", 0, now_ms=self.now)
            assert self.tenant_state()[0] == (0, RESERVE)  # billed in full, provisionally
        elif op == "settle":
            self.settlements.append(settle(self.client, self.tenant, self.key.jti, rid, ACTUAL,
                                           now_ms=self.now).outcome)
        elif self.via == "give_back":  # Envoy's give-back of an unserved request
            await GiveBack(self.quota).run(self.tenant, (self.key.jti,), rid, self.key.tenant.limits)
        else:  # the compensation after the tenant's slot refused or failed
            await self.quota.release(admission, tenant=True, now_ms=self.now)

    def tenant_state(self) -> tuple[tuple[int, int], int]:
        held = tenant_counters(self.client, self.tenant, self.window)
        return (held["reserved"], held["spent"]), int(self.client.zcard(redis_keys.tenant_rate_window(self.tenant)))

    def key_state(self) -> tuple[dict[str, int], int]:
        state = counters(self.client, self.tenant, self.key.jti)
        return ({name: state.get(name, 0) for name in ("uses", "reserved", "spent")},
                int(self.client.zcard(redis_keys.rate_window(self.tenant, self.key.jti))))


@pytest.mark.parametrize("via", ["compensation", "give_back"])
@pytest.mark.parametrize("ordering", list(ORDERINGS))
def test_the_tenants_release_undoes_exactly_what_its_admission_did_in_every_order(
        url: str, client: SyncClient, cfg: DynasealConfig, ordering: str, via: str) -> None:
    """The tenant's tier ends where the chain's does: an expiry's bill is undone, settled and cancelled are final."""
    ops, want_budget, want_rpm = ORDERINGS[ordering]
    [key] = tenant_keys_of(cfg, 1, tenant_budget=TenantBudget(tokens=1000, window="day"), tenant_rpm=100, rpm=10)
    ledger = Ledger(url, client, key, via)

    async def run() -> None:
        try:
            for op in ("admit", *ops):
                await ledger.step(op, "r-1")
        finally:
            await ledger.quota.client.aclose()
    asyncio.run(run())
    served = want_rpm == 1  # settled before any release: the request was served and stays billed
    assert ledger.tenant_state() == (want_budget, want_rpm)
    assert ledger.key_state() == ({"uses": int(served), "reserved": 0, "spent": ACTUAL if served else 0},
                                  want_rpm)
    assert client.hlen(redis_keys.tenant_reservations(key.tenant.id)) == 0
    mark = client.hget(redis_keys.tenant_provisional(key.tenant.id), "r-1")
    assert mark == (None if served else b"c")  # a cancelled id is remembered; a settled one needs no mark
    # Only a settlement that came before every release billed anything.
    first_release = ops.index("release")
    billed = [o for o in ledger.settlements if o != SettleOutcome.ALREADY_SETTLED]
    assert len(billed) == (1 if "settle" in ops[:first_release] else 0)


def test_a_released_id_is_never_admitted_again_on_the_tenants_slot(redis_server: str, cfg: DynasealConfig) -> None:
    """As on the chain's slot: the id is cancelled there, so a replayed TENANT_ADMIT is a duplicate, for a day."""
    from dynaseal.ledger import tenant_quota
    from dynaseal.ledger.admission import TenantTier
    from dynaseal.ledger.outcomes import AdmitCode
    from dynaseal.ledger.tenant_scripts import TENANT_ADMIT, TENANT_RELEASE

    client = redis.Redis.from_url(redis_server)
    tenant, tier, now = f"t-{uuid.uuid4().hex[:10]}", TenantTier(budget=100, rpm=5), int(time.time() * 1000)
    keys = tenant_quota.tenant_keys(tenant)

    def admit(at: int) -> int:
        reply = client.eval(TENANT_ADMIT, len(keys), *keys, *tenant_quota.admit_args(tier, at, "r-1", 30, 1000, 0))
        return int(reply[0])

    def release(at: int) -> int:
        return int(client.eval(TENANT_RELEASE, len(keys), *keys,
                               *tenant_quota.release_args("r-1", at)))
    try:
        assert admit(now) == AdmitCode.ADMITTED
        assert (release(now), release(now)) == (1, 0)
        assert client.ttl(redis_keys.tenant_provisional(tenant)) > 0  # the mark's hash does not live forever
        assert admit(now + 1) == AdmitCode.DUPLICATE_REQUEST
        assert admit(now + 86_400_000 + 1) == AdmitCode.ADMITTED  # the mark is dropped a day later: no growth
        assert client.hget(redis_keys.tenant_provisional(tenant), "r-1") is None
    finally:
        client.close()


def test_releases_and_settlements_racing_leave_every_counter_true(url: str, client: SyncClient,
                                                                  cfg: DynasealConfig) -> None:
    """Give-backs, compensations and the consumer's settlements of the same ids, all at once, on both slots."""
    from callback_consumer.settlement import SettlementBatcher
    from dynaseal.ledger.give_back import GiveBack
    from dynaseal.ledger.redis_async import connect
    from dynaseal.policy.quota_refusals import admission_of

    keys = tenant_keys_of(cfg, 5, tenant_budget=TenantBudget(tokens=100_000), tenant_rpm=1000, rpm=1000)
    tenant, window = keys[0].tenant.id, window_id("day", time.time())
    plan = [(keys[i % 5], 30, f"x-{i}") for i in range(60)]  # every key has ids of every third below
    assert set(asyncio.run(admit_all(url, plan))) == {"ok"}
    # A third given back (twice, and compensated) while its empty event settles; a third settled with its usage
    # (twice: redelivered) while a give-back races it; a third settled twice.
    given, raced, settled = plan[0::3], plan[1::3], plan[2::3]

    async def storm() -> None:
        quota = RedisQuota.from_url(url, timeout_s=2.0)
        consumer = connect(url, timeout_s=2.0)
        batcher, giver = SettlementBatcher(consumer), GiveBack(quota)
        limits = keys[0].tenant.limits

        async def settle_one(key: VerifiedKey, rid: str, tokens: int) -> None:
            await batcher.settle(tenant, key.jti, rid, tokens, tenant_wide=True)
        try:
            await asyncio.gather(
                *(giver.run(tenant, (k.jti,), rid, limits) for k, _, rid in given * 2),
                *(quota.release(admission_of(k, request(r), rid), tenant=True) for k, r, rid in given),
                *(settle_one(k, rid, 0) for k, _, rid in given),
                *(giver.run(tenant, (k.jti,), rid, limits) for k, _, rid in raced),
                *(settle_one(k, rid, 0) for k, _, rid in raced * 2),
                *(settle_one(k, rid, 9) for k, _, rid in settled * 2))
        finally:
            await quota.client.aclose()
            await consumer.aclose()
    asyncio.run(storm())
    # Each id ended settled or cancelled on each slot; the counters are what those ends add up to.
    cancelled_here = {rid for _, _, rid in plan
                      if client.hget(redis_keys.tenant_provisional(tenant), rid) == b"c"}
    assert cancelled_here <= {rid for _, _, rid in given + raced}  # a settlement first: the id stays settled
    assert tenant_counters(client, tenant, window) == {"reserved": 0, "spent": 9 * len(settled)}
    assert client.zcard(redis_keys.tenant_rate_window(tenant)) == len(plan) - len(cancelled_here)
    assert client.hlen(redis_keys.tenant_reservations(tenant)) == 0
    for key in keys:
        mine = [rid for k, _, rid in plan if k is key]
        alive = [rid for rid in mine if client.hget(redis_keys.settled(tenant, key.jti), rid) != b"c"]
        state = counters(client, tenant, key.jti)
        assert {name: state.get(name, 0) for name in ("uses", "reserved", "spent")} == {
            "uses": len(alive), "reserved": 0, "spent": 9 * len([rid for k, _, rid in settled if k is key])}
        assert client.zcard(redis_keys.rate_window(tenant, key.jti)) == len(alive)
