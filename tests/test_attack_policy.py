"""Attacks on the request policy and key claims, decided without Envoy (Authorizer.decide, verify_token).

Each test is an attack that must fail; those under "findings" were open before their fix.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import DEMO_SECRET, DEMO_TENANT, OTHER_TENANT, TenantKeys, acme_key
from keyfactory import ed25519, hs256, raw_token

from dynaseal.errors import Refusal
from dynaseal.keys.tenants import Registry
from dynaseal.keys.verification import verify_token
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision

MESSAGES = '"messages":[{"role":"user","content":"hi"}]'


def decide(authorizer: Authorizer, token: str, body: str) -> Decision:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    return asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", headers, body.encode())))


def body(extra: str) -> str:
    return f'{{"model":"gpt-4o-mini",{MESSAGES}{extra}}}'


# --- holds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "code"), [
    (',"max_tokens":10,"mod\\u0065l":"o1"', "duplicate_key"),            # escaped duplicate is a duplicate
    (',"max\\u005ftokens":100000', "param_not_allowed"),                 # escaped cap is still the cap
    (',"max_tokens":1e3', "invalid_request_error"),                      # float cap
    (',"max_tokens":10.0', "invalid_request_error"),
    (',"max_tokens":10,"max_completion_tokens":500', "param_not_allowed"),  # the larger of both counts
    (',"max_tokens":1,"n":129', "invalid_request_error"),
    (',"max_tokens":1,"n":128', "param_not_allowed"),                    # n × max_tokens over the key's 100
    (',"max_tokens":10,"stream":"true"', "invalid_request_error"),
    (',"max_tokens":null', "invalid_request_error"),                     # would duplicate the added cap
    (',"max_tokens":10,"stream":true,"stream_options":null', "stream_usage_required"),
    (',"max_tokens":10,"temperature":1e400', "param_not_allowed"),       # inf is outside the tenant range
    (',"max_tokens":10,"temperature":"2"', "param_not_allowed"),
    (',"max_tokens":%s' % ("9" * 5000), "invalid_request_error"),        # a 5000-digit int: no 5xx
    (',"x":{}{}'.format("[" * 100000, "]" * 100000), "invalid_request_error"),  # deep nesting: no 5xx
])
def test_body_tricks_are_refused(authorizer: Authorizer, test_keys: TenantKeys, extra: str, code: str) -> None:
    decision = decide(authorizer, acme_key(test_keys), body(extra))
    assert (decision.allowed, decision.code) == (False, code)


def test_a_bom_or_a_utf16_body_is_refused(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    token = acme_key(test_keys)
    for raw in ("\ufeff" + body(',"max_tokens":10'), ):
        assert not decide(authorizer, token, raw).allowed
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    utf16 = body(',"max_tokens":10').encode("utf-16")
    decision = asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", headers, utf16)))
    assert decision.status == 400


@pytest.mark.parametrize("claims", [
    {"iss": 12345}, {"aud": {"dynaseal": 1}}, {"exp": "9999999999"}, {"jti": "x" * 129}, {"jti": 5}, {"jti": ""},
    {"event_id": {"a": 1}}, {"max_tokens": 0}, {"uses": 1.5}, {"nbf": int(time.time()) + 10**6},
])
def test_malformed_claims_are_401(registry: Registry, test_keys: TenantKeys, claims: dict[str, object]) -> None:
    with pytest.raises(Refusal) as refused:
        verify_token(acme_key(test_keys, **claims), registry)
    assert refused.value.code == "invalid_api_key"


def test_a_jti_with_tag_characters_stays_inside_its_own_tag(registry: Registry, test_keys: TenantKeys) -> None:
    from dynaseal.ledger import redis_keys

    key = verify_token(acme_key(test_keys, jti="a:b{c}%3A"), registry)
    assert redis_keys.key_tag(key.tenant.id, key.jti) == "{acme:a%3Ab%7Bc%7D%253A}"


# --- findings of the review, fixed: regression tests ------------------------------------------------

@pytest.mark.parametrize("extra", [
    ',"max_tokens":10,"N":100',                        # 100 choices, reserved as 1
    ',"max_tokens":10,"Model":"o1-pro"',               # another model, last member wins
    ',"MAX_TOKENS":100000',                            # no cap seen: the gateway adds one *before* it
    ',"max_tokens\\u0000":100000',                     # NUL-terminated names in C parsers
    ',"max_tokens":10,"model\\ud800":"o1-pro"',       # a lone surrogate becomes U+FFFD or is dropped
])
def test_member_names_that_fold_onto_a_checked_field_are_refused(authorizer: Authorizer, test_keys: TenantKeys,
                                                                 extra: str) -> None:
    assert not decide(authorizer, acme_key(test_keys), body(extra)).allowed


def test_a_text_part_with_a_folded_type_member_counts_as_media(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    token = acme_key(test_keys, budget=10_000)
    raw = ('{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text",'
           '"text":"hi","Type":"image_url","image_url":{"url":"https://example.com/huge.png"}}]}]}')
    assert not decide(authorizer, token, raw).allowed  # acme sets no media_part_tokens: media is refused


def test_a_cap_the_upstream_may_not_know_is_completed_with_cap_field(authorizer: Authorizer,
                                                                     test_keys: TenantKeys) -> None:
    decision = decide(authorizer, acme_key(test_keys), body(',"max_completion_tokens":10'))
    # DeepSeek (the demo model) and older vLLM/Ollama read only max_tokens and generate to their default.
    assert not decision.allowed or '"max_tokens":' in str(decision.metadata.get("body_prefix", ""))


@pytest.mark.parametrize("extra", [
    ',"service_tier":"priority"',                                   # a provider-side price multiplier
    ',"web_search_options":{"search_context_size":"high"}',         # per-call fees outside the token budget
    ',"modalities":["text","audio"],"audio":{"voice":"alloy","format":"wav"}',  # audio tokens, ~8x price
    ',"store":true,"metadata":{"k":"v"}',                           # stored in the operator's account
])
def test_cost_changing_provider_features_need_an_explicit_allow(authorizer: Authorizer, test_keys: TenantKeys,
                                                                extra: str) -> None:
    assert not decide(authorizer, acme_key(test_keys), body(',"max_tokens":10' + extra)).allowed


def test_a_seed_format_key_with_native_limits_is_not_silently_unlimited(registry: Registry) -> None:
    token = raw_token({"alg": "HS256", "typ": "JWT"},
                      {"api-key": DEMO_TENANT, "model": "deepseek-chat", "max_tokens": 50, "event_id": "e",
                       "expiring": int(time.time()) + 300, "uses": 1, "budget": 10, "rpm": 1, "jti": "j1",
                       "params": {"allow": []}}, hs256(DEMO_SECRET.encode()))
    try:
        key = verify_token(token, registry)
    except Refusal:
        return  # refusing a mixed payload is a fix too
    assert (key.uses, key.budget, key.rpm, key.jti) == (1, 10, 1, "j1")


def test_a_seed_payload_signed_with_a_native_key_still_needs_the_audience(registry: Registry,
                                                                         test_keys: TenantKeys) -> None:
    token = raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid},
                      {"api-key": OTHER_TENANT, "model": "gpt-4o-mini", "expiring": int(time.time()) + 300,
                       "event_id": "e", "aud": "staging-gateway"}, ed25519(test_keys.acme_ed25519))
    with pytest.raises(Refusal):
        verify_token(token, registry)
