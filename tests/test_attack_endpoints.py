"""Attacks on the Responses, Messages and embeddings policy as a hostile key holder: stored context pulled in
by a body that does not name it, and member types that made authz fail (a 503) instead of refusing (a 400).

Each was open before its fix; the policy tests mirror dynaseal/policy/endpoints, the last ones go through the
real Envoy + authz + Redis.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from conftest import DEMO_TENANT, acme_tenant

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.tenants import Tenant
from dynaseal.policy.endpoints.messages import check_count_tokens, check_messages
from dynaseal.policy.endpoints.responses import check_responses
from dynaseal.tenant_config import Limits

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tenant(cfg: DynasealConfig) -> Tenant:
    return acme_tenant(cfg)


def key(tenant: Tenant, **limits: Any) -> VerifiedKey:
    t = replace(tenant, limits=Limits(models=("*",), max_tokens=4096, **limits))
    return VerifiedKey(tenant=t, jti=f"k-{uuid.uuid4().hex}", exp=time.time() + 600, event_id="e", sub=None,
                       models=None, budget=5000, uses=None, rpm=None, max_tokens=256)


def refusal_of(check: Any, body: dict[str, Any], k: VerifiedKey) -> Refusal:
    with pytest.raises(Refusal) as info:
        check(body, k, len(orjson.dumps(body)))
    return info.value


# --- an untyped input item is a reference to a stored item ------------------------------------------------

@pytest.mark.parametrize("item", [{"id": "msg_0123456789"}, {"id": "rs_0123456789", "type": None}])
def test_an_untyped_item_reference_is_stored_context(tenant: Tenant, item: dict[str, Any]) -> None:
    """OpenAI's ItemReference has an optional `type`: `{"id": …}` alone pulls a stored item into the prompt."""
    body = {"model": "m", "max_output_tokens": 20, "input": [{"role": "user", "content": "go on"}, item]}
    refusal = refusal_of(check_responses, body, key(tenant))
    assert (refusal.code, refusal.param) == (ErrorCode.PARAM_NOT_ALLOWED, "item_reference")
    allowed = key(tenant, server_side=("item_reference",), server_side_tokens=40_000)
    assert check_responses(body, allowed, len(orjson.dumps(body))).prompt_bound >= 40_000


def test_an_untyped_item_with_a_role_is_still_a_message(tenant: Tenant) -> None:
    body = {"model": "m", "max_output_tokens": 20, "input": [{"role": "user", "content": "hi"}]}
    assert check_responses(body, key(tenant), len(orjson.dumps(body))).prompt_bound < 1000


# --- a `type` that is not a string is the client's error, not the gateway's ------------------------------

BAD_TYPES: list[tuple[Any, dict[str, Any], str]] = [
    (check_responses, {"model": "m", "input": [{"type": ["message"], "role": "user", "content": "x"}]}, "input"),
    (check_responses, {"model": "m", "input": [{"type": {"a": 1}}]}, "input"),
    (check_responses, {"model": "m", "input": [{"role": "user", "content": [{"type": ["input_text"]}]}]}, "input"),
    (check_responses, {"model": "m", "input": [{"type": "function_call_output", "call_id": "c",
                                                "output": [{"type": {}}]}]}, "input"),
    (check_messages, {"model": "m", "messages": [{"role": "user", "content": [{"type": ["image"]}]}]}, "messages"),
    (check_messages, {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": ["document"]}]}]}]}, "messages"),
    (check_messages, {"model": "m", "system": [{"type": {"x": 1}}], "messages": HELLO}, "system"),
]


@pytest.mark.parametrize(("check", "body", "param"), BAD_TYPES)
def test_a_non_string_type_is_a_400(tenant: Tenant, check: Any, body: dict[str, Any], param: str) -> None:
    refusal = refusal_of(check, body, key(tenant, media_part_tokens=1000))
    assert (refusal.code, refusal.param) == (ErrorCode.INVALID_REQUEST, param)


def test_count_tokens_with_a_non_string_block_type_is_not_a_crash(tenant: Tenant) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": ["image"]}]}]}
    check_count_tokens(body, key(tenant), len(orjson.dumps(body)))  # generates nothing: passes on, no 5xx


# --- through the real stack -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}"


def _key(issuer_key: SigningKey) -> str:
    return mint(issuer_key, tenant=DEMO_TENANT, models=["gpt-4o-mini", "claude-sonnet-4-5"], max_tokens=64,
                ttl=300)


@pytest.mark.integration
@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/responses", {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": ["x"]}]}]},
     400, "invalid_request_error"),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": [{"type": {"image": 1}}]}]},
     400, "invalid_request_error"),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "and then?"},
                                                         {"id": "msg_0123456789"}]},
     403, "param_not_allowed"),
])
def test_the_gateway_refuses_instead_of_failing(gateway: str, issuer_key: SigningKey, path: str,
                                                body: dict[str, Any], status: int, code: str) -> None:
    response = httpx.post(f"{gateway}{path}", json=body, timeout=30,
                          headers={"authorization": f"Bearer {_key(issuer_key)}"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


# --- a client-chosen price: Anthropic's 1-hour cache writes -----------------------------------------------

@pytest.mark.parametrize("body", [
    {"model": "m", "max_tokens": 20, "system": [{"type": "text", "text": "long context",
                                                 "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
     "messages": HELLO},
    {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
    {"model": "m", "max_tokens": 20, "messages": HELLO, "tools": [
        {"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
])
def test_a_one_hour_cache_write_needs_the_tenant(tenant: Tenant, body: dict[str, Any]) -> None:
    """A 1h cache write bills 2x input where the tenant's one `cache_write` price is the 5m write's."""
    refusal = refusal_of(check_messages, body, key(tenant))
    assert (refusal.code, refusal.param) == (ErrorCode.PARAM_NOT_ALLOWED, "cache_control.ttl")
    check_messages(body, key(tenant, provider_features=("cache_control",)), len(orjson.dumps(body)))


def test_the_default_cache_ttl_passes(tenant: Tenant) -> None:
    body = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "more", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}]}
    check_messages(body, key(tenant), len(orjson.dumps(body)))


# --- media nested where the block walk did not look -------------------------------------------------------

PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}


def test_a_document_nested_in_a_server_tool_result_is_media(tenant: Tenant) -> None:
    """A few bytes of PDF cost a page image's tokens; nested in a web fetch result it was not counted."""
    fetched = {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_1",
               "content": {"type": "web_fetch_result", "url": "https://example.com/a.pdf", "content": PDF}}
    body = {"model": "m", "max_tokens": 20, "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch",
                                           "input": {"url": "https://example.com/a.pdf"}}, fetched]},
        {"role": "user", "content": "and?"}]}
    assert refusal_of(check_messages, body, key(tenant)).code == ErrorCode.PARAM_NOT_ALLOWED  # budget, no allowance
    priced = check_messages(body, key(tenant, media_part_tokens=3000, document_part_tokens=3000),
                            len(orjson.dumps(body)))
    assert priced.prompt_bound >= 3000


def test_media_blocks_are_counted_once_and_tool_inputs_are_not_content(tenant: Tenant) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
    body = {"model": "m", "max_tokens": 20, "messages": [
        {"role": "user", "content": [image, {"type": "tool_result", "tool_use_id": "t", "content": [PDF]}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "f", "input": {"type": "image"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "ok"}]}]}
    size = len(orjson.dumps(body))
    one, two = (check_messages(body, key(tenant, media_part_tokens=n, document_part_tokens=n), size).prompt_bound
                for n in (1000, 2000))
    assert two - one == 2 * 1000  # the image and the PDF, not the tool call's input
