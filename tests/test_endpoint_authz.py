"""The decision on the new endpoints: where the key comes from, which headers reach the provider, the
provider credential's header, the error shape, and count_tokens reserving nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
from conftest import PROVIDER_KEY, TenantKeys, acme_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_service.envoy_adapter import to_check_response
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision

MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def decide(authorizer: Authorizer, path: str, headers: dict[str, str], body: dict[str, Any]) -> Decision:
    # json, not orjson: integers beyond 64 bits must reach the gateway as a client could send them.
    request = AuthRequest("POST", path, {"content-type": "application/json", **headers}, json.dumps(body).encode())
    return asyncio.run(authorizer.decide(request))


def test_x_api_key_carries_the_key_on_messages_and_the_provider_credential_goes_in_x_api_key(
        authorizer: Authorizer, test_keys: TenantKeys) -> None:
    token = acme_key(test_keys)
    decision = decide(authorizer, "/v1/messages",
                      {"x-api-key": token, "anthropic-version": "2023-06-01", "openai-organization": "org"}, MESSAGES)
    assert decision.allowed, decision.message
    assert decision.headers["x-api-key"] == PROVIDER_KEY and "authorization" not in decision.headers
    # The client's x-api-key is overwritten (not removed); Authorization and other provider headers go.
    assert "x-api-key" not in decision.headers_to_remove and "openai-organization" in decision.headers_to_remove
    assert "anthropic-version" not in decision.headers_to_remove
    assert decision.metadata["endpoint"] == "messages"


def test_anthropic_betas_only_those_the_tenant_allows(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    from dataclasses import replace

    headers = {"x-api-key": acme_key(test_keys), "anthropic-beta": "context-1m-2025-08-07"}
    refused = decide(authorizer, "/v1/messages", headers, MESSAGES)
    assert refused.status == 403 and refused.param == "anthropic-beta"
    assert orjson.loads(refused.error_body())["error"]["type"] == "permission_error"
    tenant = authorizer.registry.get("acme")
    assert tenant is not None
    allowing = replace(tenant, limits=tenant.limits.model_copy(update={"anthropic_betas": ("context-1m-2025-08-07",)}))
    permissive = Authorizer(replace(authorizer.registry, tenants={**authorizer.registry.tenants, "acme": allowing}))
    allowed = decide(permissive, "/v1/messages", {**headers, "anthropic-beta": " context-1m-2025-08-07 "}, MESSAGES)
    assert allowed.allowed and "anthropic-beta" not in allowed.headers_to_remove
    assert decide(permissive, "/v1/messages", {**headers, "anthropic-beta": "context-1m-2025-08-07,other"},
                  MESSAGES).status == 403


def test_bearer_on_messages_is_removed_toward_an_anthropic_upstream(authorizer: Authorizer,
                                                                     test_keys: TenantKeys) -> None:
    decision = decide(authorizer, "/api/v1/messages", {"authorization": f"Bearer {acme_key(test_keys)}",
                                                      "anthropic-version": "2023-06-01"}, MESSAGES)
    assert decision.allowed and "authorization" in decision.headers_to_remove


def test_x_api_key_is_no_key_on_openai_paths_and_never_forwarded(authorizer: Authorizer,
                                                                  test_keys: TenantKeys) -> None:
    body = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 20}
    refused = decide(authorizer, "/v1/responses", {"x-api-key": acme_key(test_keys)}, body)
    assert refused.status == 401 and orjson.loads(refused.error_body())["error"]["code"] == "invalid_api_key"
    allowed = decide(authorizer, "/v1/responses", {"authorization": f"Bearer {acme_key(test_keys)}",
                                                   "x-api-key": "leaked", "anthropic-version": "1"}, body)
    assert allowed.allowed and allowed.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert {"x-api-key", "anthropic-version"} <= set(allowed.headers_to_remove)


def test_two_different_keys_are_refused(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = decide(authorizer, "/v1/messages", {"x-api-key": acme_key(test_keys),
                                                   "authorization": "Bearer other"}, MESSAGES)
    assert decision.status == 401


def test_refusals_on_messages_are_anthropic_shaped(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    for headers, body, status, kind in [
        ({}, MESSAGES, 401, "authentication_error"),
        ({"x-api-key": acme_key(test_keys)}, {**MESSAGES, "model": "gpt-4o"}, 403, "permission_error"),
        ({"x-api-key": acme_key(test_keys)}, {**MESSAGES, "max_tokens": 101}, 403, "permission_error"),
        ({"x-api-key": acme_key(test_keys)}, {**MESSAGES, "top_k": "x", "unknown": 1}, 403, "permission_error"),
    ]:
        decision = decide(authorizer, "/v1/messages", headers, body)
        error = orjson.loads(decision.error_body())
        assert decision.status == status and error["type"] == "error" and error["error"]["type"] == kind
        assert error["error"]["message"] and error["error"]["code"] == decision.code
    openai_shaped = decide(authorizer, "/v1/embeddings", {}, {"model": "gpt-4o-mini", "input": "x"})
    assert set(orjson.loads(openai_shaped.error_body())) == {"error"}


def test_count_tokens_is_allowed_with_nothing_reserved(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    decision = decide(authorizer, "/v1/messages/count_tokens", {"x-api-key": acme_key(test_keys)}, body)
    assert decision.allowed and decision.metadata["reserved"] == 0
    assert decision.metadata["endpoint"] == "messages_count_tokens"


def test_embeddings_and_responses_name_their_endpoint(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    bearer = {"authorization": f"Bearer {acme_key(test_keys)}"}
    embeddings = decide(authorizer, "/api/v1/embeddings", bearer, {"model": "gpt-4o-mini", "input": ["a", "bc"]})
    assert embeddings.allowed and embeddings.metadata["endpoint"] == "embeddings"
    assert embeddings.metadata["reserved"] == 3 + 32
    query = decide(authorizer, "/v1/responses?x=1", bearer, {"model": "gpt-4o-mini", "input": "hi"})
    assert query.status == 400


# ------------------------------------------------------------------ hostile bodies: 4xx, never 5xx

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                   max_size=4), max_leaves=20)
_MEMBERS = {
    "/v1/responses": ["model", "input", "instructions", "max_output_tokens", "tools", "store", "stream",
                      "previous_response_id", "stream_options", "reasoning", "user", "text"],
    "/v1/messages": ["model", "messages", "max_tokens", "system", "tools", "thinking", "stream", "mcp_servers",
                     "tool_choice", "top_k", "metadata"],
    "/v1/messages/count_tokens": ["model", "messages", "system", "tools", "thinking"],
    "/v1/embeddings": ["model", "input", "encoding_format", "dimensions", "user"],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(_MEMBERS)), data=st.data())
def test_hostile_bodies_get_a_clear_4xx_in_their_apis_shape(authorizer: Authorizer, test_keys: TenantKeys,
                                                            path: str, data: st.DataObject) -> None:
    names = _MEMBERS[path]
    body = data.draw(st.dictionaries(st.sampled_from(names), _JSON, max_size=6))
    if data.draw(st.booleans()):
        body["model"] = "gpt-4o-mini"
    decision = decide(authorizer, path, {"authorization": f"Bearer {acme_key(test_keys)}"}, body)
    assert decision.status < 500, (decision.code, decision.message)
    if not decision.allowed:
        error = orjson.loads(decision.error_body().decode("utf-8"))
        assert error["error"]["code"] == decision.code
        assert ("type" in error) == ("messages" in path)
    to_check_response(decision).SerializeToString()


# ------------------------------------------------------------------ content rules on every endpoint


def test_content_rules_refuse_on_every_endpoint_in_its_shape(tmp_path: Path) -> None:
    import yaml

    from dynaseal.config import load_config
    from dynaseal.keys.mint import SigningKey, mint
    from dynaseal.keys.tenants import build_registry

    signing = SigningKey.generate("shop-1")
    config = tmp_path / "dynaseal.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"data_dir": str(tmp_path)}, "tenants": [
        {"id": "shop", "keys": [{"kid": signing.kid, "alg": "EdDSA", "public_jwk": signing.public_jwk()}],
         "limits": {"models": ["*"], "max_tokens": 100, "content_rules": [{"builtin": "payment_card"}]}}]}))
    authorizer = Authorizer(build_registry(load_config(config)), quota=None)
    bearer = {"authorization": f"Bearer {mint(signing, tenant='shop', models=['m', 'c', 'e'], max_tokens=50, ttl=60)}"}
    card = "card 4111 1111 1111 1111"
    body: Any
    for path, body in [
        ("/v1/responses", {"model": "m", "input": [{"role": "user", "content": card}]}),
        ("/v1/messages", {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": card}]}),
        ("/v1/messages/count_tokens", {"model": "c", "messages": [{"role": "user", "content": card}]}),
        ("/v1/embeddings", {"model": "e", "input": ["fine", card]}),
    ]:
        decision = decide(authorizer, path, bearer, body)
        assert (decision.status, decision.code) == (400, "content_blocked"), path
        assert "4111" not in decision.error_body().decode()
        not_a_card = json.loads(json.dumps(body).replace("4111 1111 1111 1111", "4111 1111 1111 1112"))
        assert decide(authorizer, path, bearer, not_a_card).allowed, path
