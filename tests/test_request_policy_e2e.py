"""The request policy through the real Envoy + authz + Redis (only the LLM is a mock): media under a
tenant-wide budget, unknown members, stream_options, and a body no encoder can carry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import httpx
import pytest
import redis
from conftest import DEMO_TENANT, TENANT_BUDGET_TENANT, TenantKeys
from keyfactory import ed25519, native_claims, raw_token

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration
REQUEST_ID_HEADER = "x-dynaseal-request-id"
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


def post(url: str, key: str, body: dict[str, object] | bytes) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if isinstance(body, bytes):
        return httpx.post(url, headers=headers, content=body, timeout=30)
    return httpx.post(url, headers=headers, json=body, timeout=30)


def assert_refused(reply: httpx.Response, status: int, code: str, param: str | None) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    error: dict[str, object] = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert reply.headers.get(REQUEST_ID_HEADER)
    return error


def tenant_counters(cfg: DynasealConfig, tenant: str) -> dict[str, int]:
    """Every integer the ledger holds under the tenant's own hash tag (its tenant-wide counters)."""
    client = redis.Redis.from_url(redis_url(cfg))
    try:
        found: dict[str, int] = {}
        for name in cast("Iterator[bytes]", client.scan_iter(match=f"*{{{tenant}}}*", count=1000)):
            kind = client.type(name)
            if kind == b"string":
                found[name.decode()] = int(client.get(name) or 0)
            elif kind == b"hash":
                for field, value in cast("dict[bytes, bytes]", client.hgetall(name)).items():
                    if value.lstrip(b"-").isdigit():
                        found[f"{name.decode()}#{field.decode()}"] = int(value)
        return found
    finally:
        client.close()


# Finding 1: 10 image parts under a 5,000-token tenant budget reserved 907 tokens and the upstream billed 7,866.
def test_images_under_a_tenant_budget_are_refused_without_a_media_price(gw: str, test_keys: TenantKeys,
                                                                         cfg: DynasealConfig) -> None:
    key = raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid},
                    native_claims(TENANT_BUDGET_TENANT, models=["deepseek-chat"], max_tokens=100),
                    ed25519(test_keys.acme_ed25519))
    body = {"model": "deepseek-chat", "max_tokens": 20,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, *[IMAGE] * 10]}]}
    before = tenant_counters(cfg, TENANT_BUDGET_TENANT)
    for _ in range(3):
        error = assert_refused(post(gw, key, body), 403, "param_not_allowed", "messages")
        assert "media_part_tokens" in str(error["message"])
    assert tenant_counters(cfg, TENANT_BUDGET_TENANT) == before  # nothing reserved, nothing spent
    text_only = {**body, "messages": [{"role": "user", "content": "describe a cat"}]}
    assert post(gw, key, text_only).status_code == 200  # the key itself works
    assert tenant_counters(cfg, TENANT_BUDGET_TENANT) != before  # ... and reserves under the tenant's budget


@pytest.fixture(scope="module")
def demo_key(issuer_key: SigningKey) -> str:
    return mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=50, ttl=600)


@pytest.mark.parametrize("member", ["priority", "kv_transfer_params", "best_of"])
def test_members_the_gateway_does_not_know_are_refused_by_name(gw: str, demo_key: str, member: str) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, member: 1}
    error = assert_refused(post(gw, demo_key, body), 403, "param_not_allowed", member)
    assert f"'{member}'" in str(error["message"])


# Finding 3, request side: `continuous_usage_stats` put a running count in every chunk, billed on disconnect.
def test_stream_options_beyond_include_usage_are_refused(gw: str, demo_key: str) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    error = assert_refused(post(gw, demo_key, body), 400, "invalid_request_error", "stream_options")
    assert "continuous_usage_stats" in str(error["message"])
    body["stream_options"] = {"include_usage": True}
    assert post(gw, demo_key, body).status_code == 200


# Finding 5: a lone surrogate in `model` gave 503 authz_unavailable with a traceback in authz's log.
@pytest.mark.parametrize("raw", [
    b'{"model":"deepseek-chat\\ud800","messages":[{"role":"user","content":"hi"}],"max_tokens":5}',
    b'{"model":"deepseek-chat","messages":[{"role":"user","content":"\\udfff"}],"max_tokens":5}',
    b'{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"\\ud800":1}',
])
def test_a_lone_surrogate_is_a_clear_400(gw: str, demo_key: str, raw: bytes) -> None:
    reply = post(gw, demo_key, raw)
    assert_refused(reply, 400, "invalid_request_error", None)
    assert "surrogate" in reply.json()["error"]["message"]
    reply.content.decode("utf-8")  # strict UTF-8 JSON
