"""Key limits under concurrency through the real Envoy and Redis; hostile bytes never get a 5xx."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import httpx
import pytest
import redis
from conftest import DEMO_TENANT, jwt_payload
from ledger_sync import counters

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


async def fire(url: str, key: str, count: int, body: dict[str, object] = BODY) -> list[int]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        replies = await asyncio.gather(*(client.post(url, headers={"authorization": f"Bearer {key}"}, json=body)
                                         for _ in range(count)))
    return [r.status_code for r in replies]


def test_budget_holds_under_200_concurrent_requests(gw: str, issuer_key: SigningKey, cfg: DynasealConfig) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=600, budget=1000)
    statuses = asyncio.run(fire(gw, key, 200))
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert 0 < admitted < 200
    client = redis.Redis.from_url(redis_url(cfg))
    state = counters(client, DEMO_TENANT, str(jwt_payload(key)["jti"]))
    # Every admitted request holds (or has settled) its reservation: never more than the budget.
    assert state["uses"] == admitted
    assert state.get("reserved", 0) + state.get("spent", 0) <= 1000


def test_single_use_key_admits_exactly_one_of_50(gw: str, issuer_key: SigningKey) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=600, uses=1)
    statuses = asyncio.run(fire(gw, key, 50))
    assert statuses.count(200) == 1
    assert statuses.count(429) == 49


def test_rpm_holds_through_envoy(gw: str, issuer_key: SigningKey) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=600, rpm=10)
    statuses = asyncio.run(fire(gw, key, 30))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


def test_hostile_bytes_never_get_a_5xx(gw: str, issuer_key: SigningKey) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=600)
    rng = random.Random(1234)
    bodies = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000))) for _ in range(40)]
    bodies += [b"\x1f\x8b\x08\x00" + b"\x00" * 50, b'{"model":' * 5000, b"[" * 10000 + b"]" * 10000,
               b'{"model":"deepseek-chat","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":5}']
    printable = re.compile(rb"^[\x21-\x7e]*$")
    with httpx.Client(timeout=10) as client:
        for raw in bodies:
            reply = client.post(gw, headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                                content=raw)
            assert reply.status_code < 500, (reply.status_code, raw[:80])
            assert reply.json()["error"]["message"], reply.text
        for _ in range(30):
            junk = bytes(rng.choice(range(0x21, 0x7f)) for _ in range(rng.randint(1, 600)))
            assert printable.match(junk)
            raw_headers: dict[str, Any] = {"authorization": b"Bearer " + junk, "dynasealtoken": junk}
            reply = client.post(gw, headers=raw_headers,
                                json=BODY)
            assert reply.status_code == 401
