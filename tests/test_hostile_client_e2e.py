"""A key holder attacking its limits through the real Envoy + authz + Redis (only the LLM is a mock).

Each test is one class of attack from the threat model in the README: replayed request ids,
alternate encodings, cheap-looking prompts, another tenant's key id, malformed keys, and
provider-side headers.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import redis
from conftest import DEMO_SECRET, DEMO_TENANT, OTHER_SECRET, OTHER_TENANT, jwt_payload
from keyfactory import b64, hs256, raw_token
from ledger_sync import counters

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}
REQUEST_ID_HEADER = "x-dynaseal-request-id"


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


@pytest.fixture(scope="module")
def mock_url(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


@pytest.fixture
def store(cfg: DynasealConfig) -> redis.Redis:
    return redis.Redis.from_url(redis_url(cfg))


def post(url: str, key: str, body: dict[str, object] = BODY, /, **headers: str) -> httpx.Response:
    return httpx.post(url, headers={"authorization": f"Bearer {key}", **headers}, json=body, timeout=30)


def seed_key(tenant: str, secret: str, **claims: object) -> str:
    payload = {"api-key": tenant, "model": "deepseek-chat", "max_tokens": 50, "expiring": int(time.time()) + 300,
               "event_id": f"ev-{uuid.uuid4().hex[:8]}", **claims}
    return raw_token({"alg": "HS256", "typ": "JWT"}, payload, hs256(secret.encode()))


def test_a_replayed_request_id_buys_nothing(gw: str, issuer_key: SigningKey, store: redis.Redis) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, uses=1)
    chosen = str(uuid.uuid4())
    replies = [post(gw, key, **{"x-request-id": chosen}) for _ in range(5)]
    assert [r.status_code for r in replies] == [200, 429, 429, 429, 429]
    ids = [r.headers[REQUEST_ID_HEADER] for r in replies]
    assert chosen not in ids and len(set(ids)) == 5  # every answer, refusals too, carries its own gateway id
    assert counters(store, DEMO_TENANT, str(jwt_payload(key)["jti"]))["uses"] == 1


def test_rpm_and_budget_hold_whatever_ids_the_client_sends(gw: str, issuer_key: SigningKey) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, rpm=3)
    statuses = [post(gw, key, **{"x-request-id": "same"}).status_code for _ in range(6)]
    assert statuses.count(200) == 3 and statuses.count(429) == 3
    odd_ids = ["", "é" * 10, "x" * 300, "../../etc", "\t"]
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, uses=2)
    statuses = []
    for rid in odd_ids:
        try:
            statuses.append(httpx.post(gw, headers={"authorization": f"Bearer {key}", "x-request-id": rid},
                                       json=BODY, timeout=30).status_code)
        except (httpx.LocalProtocolError, UnicodeEncodeError):  # the client library refuses to send it
            statuses.append(0)
    assert statuses.count(200) == 2


def test_seed_key_encodings_share_one_identity(gw: str, store: redis.Redis) -> None:
    token = seed_key(DEMO_TENANT, DEMO_SECRET)
    head, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(signature[-1])
    variants = [f"{head}.{payload}.{signature[:-1]}{alphabet[(index & ~3) + i]}" for i in range(4)
                if (index & ~3) + i != index]
    assert post(gw, token).status_code == 200
    for variant in variants:
        reply = post(gw, variant)
        assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key")


def test_a_dense_prompt_cannot_overspend_a_budget(gw: str, issuer_key: SigningKey, store: redis.Redis) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, budget=1000)
    dense = {"model": "deepseek-chat", "max_tokens": 1,
             "messages": [{"role": "user", "content": " ".join("a" for _ in range(1400))}]}
    reply = post(gw, key, dense)
    assert (reply.status_code, reply.json()["error"]["code"]) == (429, "insufficient_quota")
    tools = {**BODY, "max_tokens": 1, "tools": [{"type": "function", "function": {
        "name": "f", "description": "d" * 60_000, "parameters": {"type": "object"}}}]}
    small = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, budget=100)
    assert post(gw, small, tools).status_code == 429
    assert not counters(store, DEMO_TENANT, str(jwt_payload(small)["jti"])).get("uses")


def test_another_tenant_cannot_reach_a_key_by_its_jti(gw: str, issuer_key: SigningKey, store: redis.Redis,
                                                      cfg: DynasealConfig) -> None:
    from ledger_sync import revoke

    victim = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, uses=2)
    jti = str(jwt_payload(victim)["jti"])
    now = int(time.time())
    attacker = raw_token({"alg": "HS256", "typ": "JWT"},
                         {"iss": OTHER_TENANT, "aud": "dynaseal", "exp": now + 300, "iat": now, "jti": jti,
                          "models": ["gpt-4o-mini"], "max_tokens": 20, "uses": 2}, hs256(OTHER_SECRET.encode()))
    body = {**BODY, "model": "gpt-4o-mini"}
    assert [post(gw, attacker, body).status_code for _ in range(3)] == [200, 200, 429]
    revoke(store, OTHER_TENANT, jti, now + 300)  # the attacker's tenant revokes "its" jti
    assert post(gw, victim).status_code == 200
    assert post(gw, victim).status_code == 200  # the victim's two uses are its own
    assert post(gw, attacker, body).json()["error"]["code"] == "revoked_key"


@pytest.mark.parametrize("header", ['{"alg": ["HS256"]}', '{"alg": "HS256", "kid": {"a": 1}}', "[" * 3000])
def test_malformed_keys_are_401_through_envoy(gw: str, header: str) -> None:
    token = f"{b64(header.encode())}.{b64(b'{}')}.{b64(b'sig')}"
    reply = post(gw, token)
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key")
    assert REQUEST_ID_HEADER in reply.headers


def test_the_provider_sees_only_allowlisted_headers(gw: str, mock_url: str, issuer_key: SigningKey) -> None:
    from conftest import PROVIDER_KEY

    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300)
    httpx.delete(f"{mock_url}/_mock/requests")
    reply = post(gw, key, **{"OpenAI-Organization": "org-victim", "OpenAI-Project": "proj-x",
                             "OpenAI-Beta": "assistants=v2", "Accept-Encoding": "gzip, br", "Cookie": "s=1",
                             "dynasealtoken": key})
    assert reply.status_code == 200
    (received,) = httpx.get(f"{mock_url}/_mock/requests").json()
    headers = {k.lower(): v for k, v in received["headers"].items()}
    for name in ("openai-organization", "openai-project", "openai-beta", "cookie", "dynasealtoken"):
        assert name not in headers, name
    assert headers.get("accept-encoding", "identity") == "identity"
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert key not in str(received)
    assert headers["x-request-id"] == reply.headers[REQUEST_ID_HEADER]


def test_concurrent_single_use_still_admits_one(gw: str, issuer_key: SigningKey) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300, uses=1)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(*(client.post(gw, headers={"authorization": f"Bearer {key}",
                                                                      "x-request-id": "fixed"}, json=BODY)
                                             for _ in range(30)))
        return [r.status_code for r in replies]
    statuses = asyncio.run(burst())
    assert statuses.count(200) == 1 and statuses.count(429) == 29
