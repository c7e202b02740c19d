"""Narrowed child keys: a child may only ask for less than its parent, limit by limit, to the tenant's depth.

Decided by the authorizer without Redis (the counters of a chain are tested end to end).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from keyfactory import raw_token

from dynaseal.config import DynasealConfig
from dynaseal.keys.attenuation import CHILD_TYP
from dynaseal.keys.mint import HolderKey, SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.keys.verification import verify_token
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision

URL = "http://gw.test/v1/chat/completions"


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate("t-1")


@pytest.fixture(scope="module")
def authorizer(signing_key: SigningKey) -> Authorizer:
    key = {"kid": signing_key.kid, "alg": "EdDSA", "public_jwk": signing_key.public_jwk()}
    cfg = DynasealConfig.model_validate({"tenants": [
        {"id": "t", "keys": [key], "limits": {"models": ["a", "b", "c"], "max_tokens": 500, "max_chain_depth": 2,
                                              "params": {"temperature": {"min": 0, "max": 1.5}}}},
        {"id": "flat", "keys": [key], "limits": {"models": ["a"]}}]})
    return Authorizer(build_registry(cfg), quota=None, cache_size=0)


def decide(authorizer: Authorizer, token: str, model: str = "a", max_tokens: int = 10,
           holder: HolderKey | None = None, **body: Any) -> Decision:
    """One request; with `holder`, as a key bound to it (DPoP), else as a bearer key."""
    payload = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": max_tokens, **body})
    auth = holder.headers(token, "POST", URL) if holder else {"authorization": f"Bearer {token}"}
    request = AuthRequest("POST", "/v1/chat/completions", {":authority": "gw.test", ":scheme": "http", **auth},
                          payload)
    return asyncio.run(authorizer.decide(request))


def refusal(decision: Decision) -> str:
    assert not decision.allowed and decision.status == 401, decision
    return decision.message


def root(signing_key: SigningKey, holder: HolderKey, tenant: str = "t", **limits: Any) -> str:
    claims: dict[str, Any] = {"models": ["a", "b"], "max_tokens": 100, "ttl": 600, "budget": 1000, "uses": 10,
                              "rpm": 60, "params": {"temperature": {"max": 1.0}, "allow": ["top_p", "seed"]},
                              **limits}
    return mint(signing_key, tenant=tenant, cnf=holder.cnf_jwk(), **claims)


def test_a_child_within_every_limit_is_allowed_and_narrows(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    child = agent.child(root(signing_key, agent), models=["a"], max_tokens=50, uses=1, budget=200, rpm=5,
                        params={"temperature": {"max": 0.5}, "allow": ["top_p"]}, ttl=60)
    key = verify_token(child, authorizer.registry)
    assert (key.depth, key.models, key.max_tokens, key.uses, key.budget, key.rpm) == \
        (1, frozenset({"a"}), 50, 1, 200, 5)
    assert key.param_limits["temperature"].max == 0.5 and key.param_limits["temperature"].min == 0
    assert key.parent is not None and key.root is key.parent and key.exp <= key.parent.exp
    decision = decide(authorizer, child, max_tokens=50)
    assert decision.allowed, decision
    assert decision.metadata["root_jti"] == key.parent.jti
    assert orjson.loads(str(decision.metadata["chain"])) == [key.parent.jti, key.jti]
    # ...and what it narrowed is enforced on requests.
    assert decide(authorizer, child, model="b").code == "model_not_allowed"
    assert decide(authorizer, child, max_tokens=51).code == "param_not_allowed"
    assert decide(authorizer, child, temperature=0.7).code == "param_not_allowed"
    assert decide(authorizer, child, seed=1).code == "param_not_allowed"


def test_a_child_inherits_what_it_leaves_out(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    key = verify_token(agent.child(root(signing_key, agent)), authorizer.registry)
    assert (key.models, key.max_tokens, key.uses, key.budget, key.rpm) == (frozenset({"a", "b"}), 100, 10, 1000, 60)
    assert key.allowed_params == frozenset({"top_p", "seed"}) and key.param_limits["temperature"].max == 1.0


@pytest.mark.parametrize(("limits", "why"), [
    ({"models": ["c"]}, "model 'c'"),
    ({"max_tokens": 101}, "max_tokens 101"),
    ({"budget": 1001}, "budget 1001"),
    ({"uses": 11}, "uses 11"),
    ({"rpm": 61}, "rpm 61"),
    ({"params": {"temperature": {"max": 1.2}}}, "above its parent's maximum"),
    ({"params": {"temperature": {"min": -1}}}, "below its parent's minimum"),
    ({"params": {"allow": ["top_p", "logit_bias"]}}, "logit_bias"),
    ({"ttl": None, "exp_offset": 3600}, "expires after its parent"),
])
def test_a_child_asking_for_more_than_its_parent_is_refused(authorizer: Authorizer, signing_key: SigningKey,
                                                            limits: dict[str, Any], why: str) -> None:
    agent = HolderKey.generate()
    parent = root(signing_key, agent)
    offset = limits.pop("exp_offset", None)
    limits.pop("ttl", None)
    child = agent.child(parent, **limits) if offset is None else hand_child(agent, parent, exp_offset=offset)
    assert why in refusal(decide(authorizer, child))


def hand_child(signer: HolderKey, parent: str, header: dict[str, Any] | None = None, exp_offset: int = 60,
               **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "t", "aud": "dynaseal", "exp": now + exp_offset, "jti": "c1", "prn": parent, **claims}
    head = {"alg": signer.alg, "typ": CHILD_TYP, **(header or {})}
    return raw_token(head, {k: v for k, v in payload.items() if v is not None}, signer.private_key.sign)


def test_ancestors_are_checked_not_just_the_parent(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent, sub_agent = HolderKey.generate(), HolderKey.generate()
    child = agent.child(root(signing_key, agent), budget=100, cnf=sub_agent.cnf_jwk())
    grandchild = sub_agent.child(child, budget=50)
    assert verify_token(grandchild, authorizer.registry).depth == 2
    assert "budget 101" in refusal(decide(authorizer, sub_agent.child(child, budget=101)))


def test_depth_is_bounded_by_the_tenant(authorizer: Authorizer, signing_key: SigningKey) -> None:
    keys = [HolderKey.generate() for _ in range(4)]
    token = root(signing_key, keys[0])
    for level in range(1, 4):
        token = keys[level - 1].child(token, cnf=keys[level].cnf_jwk())
        if level <= 2:  # each level is bound to the next holder (cnf.jwk): it is sent with that holder's proof
            assert decide(authorizer, token, holder=keys[level]).allowed, level
    assert "allows 2" in refusal(decide(authorizer, token, holder=keys[3]))
    flat_holder = HolderKey.generate()
    flat = flat_holder.child(root(signing_key, flat_holder, "flat", models=["a"], params=None))
    assert "allows 0" in refusal(decide(authorizer, flat))


def test_forged_and_confused_children_are_refused(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent, thief = HolderKey.generate(), HolderKey.generate()
    parent = root(signing_key, agent)
    bearer_parent = mint(signing_key, tenant="t", models=["a"], max_tokens=10, ttl=60)
    bound_only = mint(signing_key, tenant="t", models=["a"], max_tokens=10, ttl=60, cnf=agent.cnf_jkt())
    es_agent = HolderKey.generate("ES256")
    cases = {
        "signed by another key": (thief.child(parent), "signature"),
        "parent names no holder": (agent.child(bearer_parent), "no holder key"),
        "parent is bound but not delegable": (agent.child(bound_only), "no holder key"),
        "wrong typ": (hand_child(agent, parent, {"typ": "JWT"}), "typ"),
        "alg from the header": (es_agent.child(parent), "algorithm"),
        "embedded jwk": (hand_child(agent, parent, {"jwk": agent.public_jwk()}), "not accepted"),
        "another tenant": (hand_child(agent, parent, iss="flat"), "another tenant"),
        "another audience": (hand_child(agent, parent, aud="elsewhere"), "aud"),
        "no jti": (hand_child(agent, parent, jti=None), "jti"),
        "the parent's jti": (agent.child(parent, jti=verify_token(parent, authorizer.registry).jti), "reuses"),
        "changes sub": (hand_child(agent, parent, sub="someone-else"), "sub"),
        "sets event_id": (hand_child(agent, parent, event_id="mine"), "event_id"),
        "sets cb": (hand_child(agent, parent, cb={"x": 1}), "cb"),
        "prn not a token": (hand_child(agent, 42), "prn"),  # type: ignore[arg-type]
        "tampered parent": (agent.child(parent[:-3] + ("AAA" if parent[-3:] != "AAA" else "BBB")), "signature"),
    }
    for what, (token, why) in cases.items():
        assert why in refusal(decide(authorizer, token)), what


def test_an_expired_child_is_expired(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    child = hand_child(agent, root(signing_key, agent), exp_offset=-120)
    assert decide(authorizer, child).code == "expired_key"


@pytest.mark.parametrize("name", ["presence_penalty", "best_of", "priority"])
def test_a_child_cannot_add_a_range_for_a_parameter_its_parent_never_allowed(
        authorizer: Authorizer, signing_key: SigningKey, name: str) -> None:
    # The parent lets through top_p and seed (allow) and temperature (its range), nothing else: a range is a
    # permission in the request policy, so a new one would let `name` reach the upstream.
    agent = HolderKey.generate()
    child = agent.child(root(signing_key, agent), params={name: {"min": 0, "max": 1}})
    assert f"adds a range for parameter '{name}'" in refusal(decide(authorizer, child))


def test_a_child_may_range_what_its_parent_allows_within_its_parents_range(
        authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    parent = root(signing_key, agent)
    key = verify_token(agent.child(parent, params={"seed": {"min": 0, "max": 9}, "temperature": {"max": 0.2},
                                                   "allow": ["temperature"]}), authorizer.registry)
    assert key.param_limits["seed"].max == 9 and key.param_limits["temperature"].max == 0.2
    assert key.allowed_params == frozenset({"temperature"})
    assert "above its parent's maximum" in refusal(decide(authorizer, agent.child(parent, params={
        "temperature": {"max": 1.1}})))
    # A parent without an allowlist lets every name through: any range only narrows it.
    open_parent = root(signing_key, agent, params=None)
    open_child = verify_token(agent.child(open_parent, params={"presence_penalty": {"max": 0}}), authorizer.registry)
    assert open_child.param_limits["presence_penalty"].max == 0
    assert decide(authorizer, agent.child(open_parent, params={"presence_penalty": {"max": 0}}),
                  presence_penalty=1).code == "param_not_allowed"


def money(amount: Any, currency: str = "USD") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def test_a_childs_budget_cost_is_read_and_narrowed(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    parent = root(signing_key, agent, budget_cost="2.50")
    assert verify_token(parent, authorizer.registry).budget_cost == 2_500_000
    key = verify_token(hand_child(agent, parent, budget_cost=money("1.000001")), authorizer.registry)
    assert key.budget_cost == 1_000_001
    assert verify_token(hand_child(agent, parent), authorizer.registry).budget_cost == 2_500_000  # inherited
    assert "more than its parent's 2.5" in refusal(decide(authorizer, hand_child(agent, parent,
                                                                                  budget_cost=money("2.51"))))
    # A parent with no money budget: the child's own is read, never dropped.
    free = root(signing_key, agent)
    assert verify_token(hand_child(agent, free, budget_cost=money("0.25")), authorizer.registry).budget_cost == 250_000


@pytest.mark.parametrize("claim", [money("0.0000001"), money(1), money(0.5), money("-1"), money("0"), money("NaN"),
                                   money("1", "EUR"), "1.00", {"amount": "1"}, money("1e400")])
def test_a_malformed_child_budget_cost_is_refused(authorizer: Authorizer, signing_key: SigningKey,
                                                  claim: Any) -> None:
    agent = HolderKey.generate()
    assert "budget_cost" in refusal(decide(authorizer, hand_child(agent, root(signing_key, agent),
                                                                  budget_cost=claim)))


@pytest.mark.parametrize("claim", ["budget_tokens", "priority", "ttl", "limits", "max_completion_tokens", "kid"])
def test_a_child_claim_the_chain_does_not_enforce_is_refused(authorizer: Authorizer, signing_key: SigningKey,
                                                             claim: str) -> None:
    agent = HolderKey.generate()
    claims: dict[str, Any] = {claim: 1}
    token = hand_child(agent, root(signing_key, agent), **claims)
    assert f"no level of the chain enforces: ['{claim}']" in refusal(decide(authorizer, token))


def test_a_hostile_claim_name_is_quoted_safely(authorizer: Authorizer, signing_key: SigningKey) -> None:
    agent = HolderKey.generate()
    parent = root(signing_key, agent)
    for name in ("x" * 5000, "bad\ud800name", "new\nline\x00"):
        claims: dict[str, Any] = {name: 1}
        for token in (hand_child(agent, parent, **claims), hand_child(agent, parent, params={name: {"max": 1}})):
            message = refusal(decide(authorizer, token))
            assert len(message) < 300 and message.isprintable(), message
            message.encode("utf-8")  # no lone surrogate left in it
