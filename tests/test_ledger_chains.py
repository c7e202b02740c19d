"""One ledger for every key chain, in a real Redis: child keys under money budgets, ancestors named in
refusals, the result codes the same in Python and in Lua."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest
import redis
from conftest import OTHER_TENANT, verified_key
from ledger_sync import counters, settle
from test_quota_money import request as priced_request

from dynaseal.config import DynasealConfig
from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger import quota_scripts, tenant_scripts
from dynaseal.ledger.outcomes import LUA_CONSTANTS, AdmitCode, SettleOutcome
from dynaseal.ledger.quota import MoneySettlement, RedisQuota
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest


def child_of(parent: VerifiedKey, jti: str, **limits: int | None) -> VerifiedKey:
    """A child key of `parent` (verified as dynaseal.keys.attenuation would), with its own limits."""
    fields: dict[str, int | None] = {"budget": None, "uses": None, "rpm": None, "budget_cost": None, **limits}
    return replace(parent, jti=jti, parent=parent, depth=parent.depth + 1, cnf_jkt=None, **fields)  # type: ignore[arg-type]


def path_of(key: VerifiedKey) -> tuple[str, ...]:
    return tuple(level.jti for level in key.chain)


async def admit_all(url: str, plan: list[tuple[VerifiedKey, str]], checked: CheckedRequest) -> list[str]:
    """Admit every (key, request id) at once; the outcome (or refusal message) of each."""
    quota = RedisQuota.from_url(url, timeout_s=2.0)

    async def one(key: VerifiedKey, rid: str) -> str:
        try:
            await admit_request(quota, key, checked, rid)
            return "ok"
        except Refusal as refusal:
            return f"{refusal.code.value}: {refusal.message}"
    try:
        return list(await asyncio.gather(*(one(key, rid) for key, rid in plan)))
    finally:
        await quota.client.aclose()


def test_child_keys_under_a_money_budget_are_never_overspent_and_settle_exactly(
        redis_server: str, sync_redis: redis.Redis, cfg: DynasealConfig) -> None:
    root = verified_key(cfg, "money-root", budget_cost=1000)
    capped = child_of(root, "capped", budget_cost=400)
    free = child_of(root, "free")  # no money budget of its own: bounded by its parent's alone
    grandchild = child_of(capped, "grand", budget_cost=150)
    keys = [root, capped, free, grandchild]
    plan = [(keys[i % 4], f"m-{i}") for i in range(80)]
    checked = priced_request()  # 70 micro-units each
    results = asyncio.run(admit_all(redis_server, plan, checked))
    admitted = [(key, rid) for (key, rid), outcome in zip(plan, results, strict=True) if outcome == "ok"]
    assert {r.split(":")[0] for r in results} == {"ok", "insufficient_quota"}

    def held(key: VerifiedKey) -> int:
        return sum(70 for k, _ in admitted if key in k.chain)
    assert len(admitted) == 1000 // 70  # the root's budget bound them all
    assert held(capped) <= 400 and held(grandchild) <= 150 and held(grandchild) > 0
    for key in keys:
        state = counters(sync_redis, OTHER_TENANT, key.jti, path_of(key))
        assert state["reserved_cost"] == held(key) <= (key.budget_cost or 1000)
        assert state["uses"] == sum(1 for k, _ in admitted if key in k.chain)

    for key, rid in admitted:
        result = settle(sync_redis, OTHER_TENANT, key.jti, rid, 12, chain=path_of(key),
                        money=MoneySettlement(cost_micros=33))
        assert result.outcome == SettleOutcome.SETTLED
        again = settle(sync_redis, OTHER_TENANT, key.jti, rid, 12, chain=path_of(key),
                       money=MoneySettlement(cost_micros=33))
        assert again.duplicate  # redelivered: nothing moves at any level
    for key in keys:
        state = counters(sync_redis, OTHER_TENANT, key.jti, path_of(key))
        assert (state["reserved_cost"], state["spent_cost"]) == (0, held(key) // 70 * 33)
        assert (state["reserved"], state["spent"]) == (0, held(key) // 70 * 12)


def test_a_chain_with_a_money_budget_refuses_an_unpriced_request(
        redis_server: str, sync_redis: redis.Redis, cfg: DynasealConfig) -> None:
    root = verified_key(cfg, "unpriced-root", budget_cost=1000)
    child = child_of(root, "child")  # no money limit itself: its parent's still applies
    [outcome] = asyncio.run(admit_all(redis_server, [(child, "u-1")], priced_request(None)))
    assert outcome.startswith("insufficient_quota")
    assert counters(sync_redis, OTHER_TENANT, child.jti, path_of(child)) == {}


def test_a_refusal_names_the_ancestor_whose_limit_it_was(redis_server: str, cfg: DynasealConfig) -> None:
    root = verified_key(cfg, "named-root", uses=2)
    child = child_of(root, "named-child", uses=5)
    checked = CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=1, prompt_bound=0)
    results = asyncio.run(admit_all(redis_server, [(child, f"n-{i}") for i in range(3)], checked))
    assert results[:2] == ["ok", "ok"]
    assert results[2] == f"key_exhausted: its ancestor key {root.jti!r} has no uses left (uses: 2)"


def test_generated_constants_are_the_same_in_lua_and_python(sync_redis: redis.Redis) -> None:
    members = [*AdmitCode, *SettleOutcome]
    lua = LUA_CONSTANTS + "return {" + ", ".join(m.name for m in members) + "}"
    assert sync_redis.eval(lua, 0) == [int(m) for m in members]
    # And no script spells a code as a bare number.
    scripts = [quota_scripts.ADMIT, quota_scripts.RELEASE, quota_scripts.SETTLE, tenant_scripts.TENANT_ADMIT,
               tenant_scripts.TENANT_SETTLE, tenant_scripts.TENANT_RELEASE]
    for script in scripts:
        body = script.replace(LUA_CONSTANTS, "")
        assert not re.search(r"return \{-?\d", body)
        assert not re.search(r"outcome = \d", body)


@pytest.mark.parametrize("code", list(AdmitCode))
def test_every_refusal_code_has_a_client_answer(code: AdmitCode, cfg: DynasealConfig) -> None:
    """The policy layer turns every code the ledger can answer into a Refusal or a fail-closed 503."""
    from dynaseal.errors import QuotaUnavailable
    from dynaseal.ledger.outcomes import Refused
    from dynaseal.policy.quota_refusals import refusal_of

    if code == AdmitCode.ADMITTED:
        return
    root = verified_key(cfg, "codes", budget=10, uses=1, rpm=1, budget_cost=10)
    answer = refusal_of(Refused(code, 1, 1, 1, 1500), child_of(root, "c"), priced_request())
    assert isinstance(answer, Refusal | QuotaUnavailable)


def test_the_ledger_calls_nothing_above_it() -> None:
    """Storage answers codes and counters: it imports neither the policy layer nor the keys' DPoP module."""
    import ast
    from pathlib import Path

    ledger = Path(__file__).resolve().parent.parent / "dynaseal" / "ledger"
    for path in sorted(ledger.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {n for n in names if n.startswith(("dynaseal.policy", "dynaseal.keys"))}, path.name
