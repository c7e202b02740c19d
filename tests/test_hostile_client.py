"""A key holder attacking its own limits, decided without Envoy: ids, encodings, bounds, headers, tokens.

Each test is one class of attack; the end-to-end versions through the real stack are in
tests/test_hostile_client_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import orjson
import pytest
from conftest import DEMO_SECRET, DEMO_TENANT, OTHER_TENANT, TenantKeys, acme_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyfactory import b64, ed25519, hs256, native_claims, raw_token

from dynaseal.config import DynasealConfig
from dynaseal.errors import Refusal
from dynaseal.keys.tenants import Registry, build_registry
from dynaseal.keys.verification import verify_token
from dynaseal.ledger import redis_keys
from dynaseal.policy.authorizer import Authorizer, AuthRequest, headers_to_strip
from dynaseal.policy.decision import Decision
from dynaseal.policy.request_policy import PROMPT_OVERHEAD_TOKENS


def decide(authorizer: Authorizer, token: str, body: bytes, method: str = "POST",
           path: str = "/v1/chat/completions", **headers: str) -> Decision:
    hdrs = {"authorization": f"Bearer {token}", "content-type": "application/json", **headers}
    return asyncio.run(authorizer.decide(AuthRequest(method, path, hdrs, body)))


def chat(**fields: object) -> bytes:
    base: dict[str, object] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return orjson.dumps(base)


# --- 1. the request id is the gateway's -------------------------------------------------------------

def test_request_id_is_minted_never_taken_from_the_client(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    key = acme_key(test_keys)
    chosen = "11111111-1111-4111-8111-111111111111"
    first = decide(authorizer, key, chat(max_tokens=5), **{"x-request-id": chosen})
    second = decide(authorizer, key, chat(max_tokens=5), **{"x-request-id": chosen})
    assert first.allowed and second.allowed
    ids = {first.request_id, second.request_id, str(first.metadata["request_id"])}
    assert chosen not in ids and len({first.request_id, second.request_id}) == 2
    assert first.metadata["request_id"] == first.request_id
    assert first.headers["x-request-id"] == first.request_id  # the upstream sees the gateway's id
    uuid.UUID(first.request_id)  # ASCII, bounded, well-formed


def test_refusals_carry_a_request_id_too(authorizer: Authorizer) -> None:
    decision = decide(authorizer, "not-a-key", chat(max_tokens=5))
    assert decision.status == 401 and uuid.UUID(decision.request_id)


# --- 2. one key, one encoding, one identity ---------------------------------------------------------

def _alternate_last_char(segment: str) -> list[str]:
    """Spellings of a base64url segment that differ only in the unused low bits of its last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {2: 4, 3: 2}.get(len(segment) % 4, 0)
    index = alphabet.index(segment[-1])
    base = index & ~((1 << unused_bits) - 1)
    return [segment[:-1] + alphabet[base + i] for i in range(1 << unused_bits) if base + i != index]


def test_seed_key_signature_variants_are_refused(registry: Registry) -> None:
    import time
    token = raw_token({"alg": "HS256", "typ": "JWT"},
                      {"api-key": DEMO_TENANT, "model": "deepseek-chat", "max_tokens": 50,
                       "expiring": int(time.time()) + 300, "event_id": "e1"}, hs256(DEMO_SECRET.encode()))
    head, payload, signature = token.split(".")
    variants = _alternate_last_char(signature)
    assert variants, "an HS256 signature (32 bytes) leaves 2 unused bits in its last character"
    original = verify_token(token, registry)
    for variant in variants:
        with pytest.raises(Exception) as refused:
            verify_token(f"{head}.{payload}.{variant}", registry)
        assert getattr(refused.value, "code", None) == "invalid_api_key"
    assert original.jti.startswith("h-")


def test_eddsa_key_without_jti_has_one_identity_and_no_variants(registry: Registry, test_keys: TenantKeys) -> None:
    token = raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid}, native_claims(OTHER_TENANT, jti=None),
                      ed25519(test_keys.acme_ed25519))
    head, payload, signature = token.split(".")
    for variant in _alternate_last_char(signature):
        with pytest.raises(Refusal):
            verify_token(f"{head}.{payload}.{variant}", registry)
    first = verify_token(token, registry).jti
    assert first == verify_token(token, registry).jti and first.startswith("h-")


def test_padded_or_non_canonical_segments_are_refused(registry: Registry, test_keys: TenantKeys) -> None:
    token = acme_key(test_keys)
    head, payload, signature = token.split(".")
    for bad in (f"{head}=.{payload}.{signature}", f"{head}.{payload}.{signature}==",
                f"{head}.{payload}.{signature[:-1]}"):
        with pytest.raises(Exception) as refused:
            verify_token(bad, registry)
        assert getattr(refused.value, "code", None) == "invalid_api_key"


# --- 3. the reservation is a true upper bound ---------------------------------------------------------

def test_dense_prompt_is_bounded_by_its_bytes(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    dense = " ".join("a" for _ in range(1400))  # ~1,400 tokens in 2,799 characters
    body = chat(max_tokens=1, messages=[{"role": "user", "content": dense}])
    decision = decide(authorizer, acme_key(test_keys), body)
    assert decision.allowed
    assert int(decision.metadata["reserved"]) >= 1400 + 1
    assert int(decision.metadata["reserved"]) == len(body) + PROMPT_OVERHEAD_TOKENS + 1


@pytest.mark.parametrize("extra", [
    {"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 5000,
                                                 "parameters": {"type": "object"}}}]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": "y" * 5000}}}},
    {"messages": [{"role": "user", "content": "q"},
                  {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                        "function": {"name": "f", "arguments": "z" * 5000}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "ok"}]},
])
def test_every_part_of_the_request_counts(authorizer: Authorizer, test_keys: TenantKeys,
                                          extra: dict[str, object]) -> None:
    body = chat(max_tokens=1, **extra)
    decision = decide(authorizer, acme_key(test_keys), body)
    assert decision.allowed and int(decision.metadata["reserved"]) > 5000


def test_big_tools_on_a_small_budget_are_refused_at_admit(cfg: DynasealConfig, test_keys: TenantKeys) -> None:
    from dynaseal.policy.request_policy import check_request, parse_body

    verified = verify_token(acme_key(test_keys, budget=100), build_registry(cfg))
    body = chat(max_tokens=1, tools=[{"type": "function", "function": {"name": "f", "description": "d" * 20000}}])
    checked = check_request(parse_body(body, {}), verified, len(body))
    assert verified.budget is not None
    assert checked.reservation > verified.budget  # the ADMIT script refuses anything over what remains


def test_images_are_refused_on_a_budgeted_key_without_a_media_price(authorizer: Authorizer,
                                                                   test_keys: TenantKeys) -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    budgeted = decide(authorizer, acme_key(test_keys, budget=5000), chat(max_tokens=5, messages=[image]))
    assert (budgeted.status, budgeted.code) == (403, "param_not_allowed")
    unbudgeted = decide(authorizer, acme_key(test_keys), chat(max_tokens=5, messages=[image]))
    assert unbudgeted.allowed


# --- amendments: metering never depends on the client ---------------------------------------------------

def test_no_cap_gets_the_keys_cap_and_a_stream_gets_usage(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = decide(authorizer, acme_key(test_keys, max_tokens=80), chat(stream=True, n=2))
    assert decision.allowed
    prefix = str(decision.metadata["body_prefix"])
    assert prefix == '"max_tokens":40,"stream_options":{"include_usage":true},'
    assert decision.metadata["strip_usage"] is True
    amended = json.loads(b"{" + prefix.encode() + chat(stream=True, n=2)[1:])
    assert amended["max_tokens"] * amended["n"] <= 80 and amended["stream_options"] == {"include_usage": True}


def test_a_client_that_asked_for_usage_is_not_amended(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = decide(authorizer, acme_key(test_keys),
                      chat(stream=True, max_tokens=5, stream_options={"include_usage": True}))
    assert decision.allowed and "body_prefix" not in decision.metadata and "strip_usage" not in decision.metadata


# --- 7. the client cannot pick provider-side headers --------------------------------------------------

def test_only_allowlisted_headers_reach_the_provider(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    sent = {"openai-organization": "org-victim", "openai-project": "proj", "openai-beta": "assistants=v2",
            "x-forwarded-for": "1.2.3.4", "user-agent": "evil", "cookie": "a=b", "accept-encoding": "gzip"}
    decision = decide(authorizer, acme_key(test_keys), chat(max_tokens=5), **sent)
    assert decision.allowed
    stripped = set(decision.headers_to_remove)
    assert {"openai-organization", "openai-project", "openai-beta", "x-forwarded-for", "user-agent",
            "cookie"} <= stripped
    assert decision.headers["accept-encoding"] == "identity"
    assert "content-type" not in stripped and "authorization" in decision.headers  # swapped for the provider's
    assert headers_to_strip({":path": "/", "x-a": "1"}, frozenset({"x-a"}), True) == ()


# --- models list ------------------------------------------------------------------------------------------

def test_model_list_is_the_keys_models_within_the_tenant(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = decide(authorizer, acme_key(test_keys, models=["gpt-4o-mini", "not-in-tenant"]), b"",
                      method="GET", path="/v1/models")
    assert decision.status == 200 and not decision.allowed  # answered by the gateway, never forwarded
    listed = json.loads(decision.error_body())
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["gpt-4o-mini"]
    bad = decide(authorizer, "garbage", b"", method="GET", path="/api/v1/models")
    assert (bad.status, bad.code) == (401, "invalid_api_key")


# --- 4. tenants are separate in Redis ---------------------------------------------------------------

def test_redis_keys_name_the_tenant_and_cannot_collide() -> None:
    assert redis_keys.counters("a", "k") != redis_keys.counters("b", "k")
    assert redis_keys.revoked("a:b", "c") != redis_keys.revoked("a", "b:c")
    assert redis_keys.counters("a}", "{b") != redis_keys.counters("a", "b")
    tag = redis_keys.key_tag("t{x}", "j")
    assert tag.count("{") == 1 and tag.count("}") == 1  # one hash tag: one slot per key


# --- 5. every malformed token is a 401 ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25)
header_fields = st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "zip", "b64"]), json_values,
                                max_size=5)
payload_fields = st.dictionaries(
    st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "jti", "sub", "event_id", "models", "max_tokens", "budget",
                     "uses", "rpm", "params", "cb", "api-key", "model", "expiring"]), json_values, max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=header_fields, payload=payload_fields)
def test_any_token_shape_is_a_401_never_a_5xx(authorizer: Authorizer, test_keys: TenantKeys,
                                               header: dict[str, object], payload: dict[str, object]) -> None:
    signer = ed25519(test_keys.acme_ed25519) if header.get("alg") == "EdDSA" else hs256(DEMO_SECRET.encode())
    decision = decide(authorizer, raw_token(header, payload, signer), chat(max_tokens=5))
    assert decision.status < 500, decision.message
    if not decision.allowed:
        assert decision.status in (400, 401, 403), decision.code


@pytest.mark.parametrize("header", [
    '{"alg": ["HS256"]}', '{"alg": {"x": 1}}', '{"alg": "HS256", "kid": ["a"]}',
    '{"alg": "HS256", "kid": {"a": 1}}', "[" * 5000 + "]" * 5000, '{"alg": "HS256", "crit": 1}',
])
def test_malformed_headers_are_401(authorizer: Authorizer, header: str) -> None:
    token = f"{b64(header.encode())}.{b64(b'{}')}.{b64(b'sig')}"
    decision = decide(authorizer, token, chat(max_tokens=5))
    assert (decision.status, decision.code) == (401, "invalid_api_key")


@pytest.mark.parametrize("claims", [{"exp": 10 ** 400}, {"nbf": -(10 ** 400)}, {"iat": 10 ** 309}])
def test_absurd_numbers_are_401(authorizer: Authorizer, test_keys: TenantKeys, claims: dict[str, object]) -> None:
    decision = decide(authorizer, acme_key(test_keys, **claims), chat(max_tokens=5))
    assert (decision.status, decision.code) == (401, "invalid_api_key")


def test_nested_payload_is_401(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    payload = '{"iss": "acme", "cb": ' + "[" * 3000 + "]" * 3000 + "}"
    token = raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid}, payload, ed25519(test_keys.acme_ed25519))
    decision = decide(authorizer, token, chat(max_tokens=5))
    assert (decision.status, decision.code) == (401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/chat/completions"), ("DELETE", "/v1/chat/completions"),
                                              ("POST", "/v1/chat/completions?limit=100"),
                                              ("POST", "/api/v1/chat/completions?x=1"), ("PUT", "/client-side/x")])
def test_only_a_query_less_post_is_a_completion(authorizer: Authorizer, test_keys: TenantKeys, method: str,
                                                path: str) -> None:
    decision = decide(authorizer, acme_key(test_keys), chat(max_tokens=5), method=method, path=path)
    assert (decision.status, decision.code) == (400, "invalid_request_error")
