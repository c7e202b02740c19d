"""Narrowed child keys through the real stack: Envoy + authz + Redis, and the usage pipeline for callbacks.

A child's spending is charged to every key above it in one script, so children together can never
spend more than their parent; revoking a key refuses everything below it from the next request on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import redis
from conftest import DEMO_TENANT, jwt_payload
from ledger_sync import revoke
from pipeline_harness import Receiver, Services, pipeline_config, wait_until

from dynaseal.config import DynasealConfig
from dynaseal.keys.attenuation import CHILD_TYP
from dynaseal.keys.mint import HolderKey, SigningKey, mint
from dynaseal.ledger import redis_keys
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


@pytest.fixture
def store(cfg: DynasealConfig) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url(cfg))
    yield client
    client.close()


def root_key(issuer_key: SigningKey, holder: HolderKey, **limits: Any) -> str:
    """A demo-tenant key its holder may narrow (cnf.jwk)."""
    claims: dict[str, Any] = {"models": ["deepseek-chat"], "max_tokens": 100, "ttl": 600, **limits}
    return mint(issuer_key, tenant=DEMO_TENANT, cnf=holder.cnf_jwk(), **claims)


def jti(token: str) -> str:
    return str(jwt_payload(token)["jti"])


def level_counters(store: redis.Redis, *path: str) -> dict[str, int]:
    raw = store.hgetall(redis_keys.level_keys(DEMO_TENANT, path)[1])
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


def post(gw: str, token: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return httpx.post(gw, headers={"authorization": f"Bearer {token}"}, json=body, timeout=30)


def burst(gw: str, tokens: list[str]) -> list[httpx.Response]:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(gw, headers={"authorization": f"Bearer {t}"}, json=BODY)
                                          for t in tokens))
    return asyncio.run(send())


def test_children_together_never_spend_more_uses_than_their_parent(gw: str, issuer_key: SigningKey,
                                                                    store: redis.Redis) -> None:
    agent = HolderKey.generate()
    parent = root_key(issuer_key, agent, uses=6)
    children = [agent.child(parent, uses=4) for _ in range(3)]  # 12 uses asked for, 6 exist
    replies = burst(gw, [c for c in children for _ in range(4)])
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses
    assert level_counters(store, jti(parent))["uses"] == 6
    assert sum(level_counters(store, jti(parent), jti(c)).get("uses", 0) for c in children) == 6


def test_children_together_never_overspend_their_parents_budget(gw: str, issuer_key: SigningKey,
                                                                store: redis.Redis) -> None:
    agent = HolderKey.generate()
    parent = root_key(issuer_key, agent, budget=300)
    children = [agent.child(parent, budget=300) for _ in range(3)]
    replies = burst(gw, [c for c in children for _ in range(5)])
    admitted = [r for r in replies if r.status_code == 200]
    refused = [r.json()["error"]["code"] for r in replies if r.status_code != 200]
    assert admitted and refused and set(refused) == {"insufficient_quota"}
    root = level_counters(store, jti(parent))
    assert root["uses"] == len(admitted) and root.get("reserved", 0) + root.get("spent", 0) <= 300, root


def test_a_child_asking_for_more_or_nested_too_deep_is_refused(gw: str, issuer_key: SigningKey) -> None:
    agent, helper, worker = HolderKey.generate(), HolderKey.generate(), HolderKey.generate()
    parent = root_key(issuer_key, agent, budget=1000)
    reply = post(gw, agent.child(parent, budget=1001))
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key")
    assert "budget 1001" in reply.json()["error"]["message"]
    child = agent.child(parent, cnf=helper.cnf_jwk())
    grandchild = helper.child(child, max_tokens=30)  # depth 2: the demo tenant's limit
    assert post(gw, grandchild).status_code == 200
    too_deep = worker.child(helper.child(child, cnf=worker.cnf_jwk()))
    reply = post(gw, too_deep)
    assert reply.status_code == 401 and "allows 2" in reply.json()["error"]["message"]


def test_revoking_a_key_refuses_everything_below_it_at_once(gw: str, issuer_key: SigningKey,
                                                            store: redis.Redis) -> None:
    agent, helper = HolderKey.generate(), HolderKey.generate()
    parent = root_key(issuer_key, agent)
    child = agent.child(parent, cnf=helper.cnf_jwk())
    grandchild, sibling = helper.child(child), agent.child(parent)
    assert [post(gw, t).status_code for t in (grandchild, sibling)] == [200, 200]
    exp = float(jwt_payload(parent)["exp"])  # type: ignore[arg-type]
    revoke(store, DEMO_TENANT, jti(child), exp, ancestors=(jti(parent),))  # the middle key, as its callback names it
    reply = post(gw, grandchild)
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "revoked_key")
    assert post(gw, sibling).status_code == 200  # another branch is untouched
    revoke(store, DEMO_TENANT, jti(parent), exp)
    assert post(gw, sibling).json()["error"]["code"] == "revoked_key"


@pytest.mark.parametrize("name", ["presence_penalty", "seed", "best_of"])
def test_a_child_adding_a_parameter_its_parent_never_allowed_is_refused(gw: str, issuer_key: SigningKey,
                                                                        name: str) -> None:
    agent = HolderKey.generate()
    parent = root_key(issuer_key, agent, params={"allow": ["top_p"]})
    bearer = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=100, ttl=600,
                  params={"allow": ["top_p"]})  # the same limits, unbound: what the parent itself may send
    assert post(gw, bearer, {**BODY, name: 1}).json()["error"]["code"] == "param_not_allowed"
    # A range for the name would have let it through to the upstream: the child is not a narrower key.
    reply = post(gw, agent.child(parent, params={name: {"min": 1, "max": 1}}), {**BODY, name: 1})
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key"), reply.text
    assert name in reply.json()["error"]["message"]
    assert post(gw, agent.child(parent, params={"top_p": {"max": 0.5}}), {**BODY, "top_p": 0.5}).status_code == 200


def test_a_child_asking_for_more_money_than_its_parent_is_refused(gw: str, issuer_key: SigningKey) -> None:
    agent = HolderKey.generate()
    parent = root_key(issuer_key, agent, budget_cost="0.50")
    claims = {**jwt_payload(agent.child(parent)), "budget_cost": {"amount": "0.60", "currency": "USD"}}
    child = pyjwt.encode(claims, agent.private_key, algorithm=agent.alg, headers={"typ": CHILD_TYP})
    reply = post(gw, child)
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key"), reply.text
    assert "budget_cost 0.6" in reply.json()["error"]["message"]


@pytest.fixture(scope="module")
def own_consumer(cfg: DynasealConfig, config_path: Path, stack: object, receiver: Receiver,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A consumer group of its own on the session's broker, delivering to `receiver`."""
    directory = tmp_path_factory.mktemp("chain-consumer")
    services = Services(pipeline_config(config_path, directory, receiver.url), cfg, directory / "logs")
    services.start("consumer")
    yield services
    services.stop()


def test_a_childs_callback_names_its_family_and_every_level_settles(
        gw: str, issuer_key: SigningKey, receiver: Receiver, own_consumer: Services, store: redis.Redis) -> None:
    agent = HolderKey.generate()
    parent = root_key(issuer_key, agent, budget=1000)
    child = agent.child(parent, uses=1, max_tokens=50)
    reply = post(gw, child, {**BODY, "max_tokens": 50})
    assert reply.status_code == 200, reply.text
    total = reply.json()["usage"]["total_tokens"]
    wait_until(lambda: len(receiver.delivered(jti(child))) == 1, 30, "the child's callback")
    ((webhook_id, payload),) = receiver.delivered(jti(child)).items()
    assert webhook_id == reply.headers["x-dynaseal-request-id"]
    assert payload["key_id"] == jti(child) and payload["root_key_id"] == jti(parent)
    assert payload["chain"] == [jti(parent), jti(child)] and payload["tokens"] == total
    levels = ((jti(parent),), (jti(parent), jti(child)))
    token_fields = ("uses", "reserved", "spent")
    for path in levels:
        def settled(p: tuple[str, ...] = path) -> bool:
            return {f: level_counters(store, *p).get(f) for f in token_fields} == {"uses": 1, "reserved": 0,
                                                                                    "spent": total}
        wait_until(settled, 10, f"settlement at level {len(path)}")
    # The model is priced: its cost is held and settled at every level too, the same at each.
    money = [(level_counters(store, *p)["reserved_cost"], level_counters(store, *p)["spent_cost"]) for p in levels]
    assert money[0] == money[1] and money[0][0] == 0 and money[0][1] > 0
    assert post(gw, child).json()["error"]["code"] == "key_exhausted"


def test_the_demo_hands_a_sub_agent_a_one_use_child(cfg: DynasealConfig, stack: object,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dynaseal_launcher.edge_demo import run_delegation_demo

    assert run_delegation_demo(cfg) == 0
    out = capsys.readouterr().out
    assert "401 invalid_dpop_proof" in out and "403 param_not_allowed" in out and "429 key_exhausted" in out
