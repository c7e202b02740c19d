"""Adversarial key verification: every forgery is a distinct refusal with the right status and code."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from conftest import DEMO_SECRET, DEMO_TENANT, OTHER_SECRET, OTHER_TENANT, TenantKeys
from cryptography.hazmat.primitives import serialization
from keyfactory import b64, ed25519, hs256, native_claims, raw_token

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint, mint_seed_key
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})


@pytest.fixture(scope="module")
def authorizer(cfg: DynasealConfig) -> Authorizer:
    """An authorizer over the test config (no Redis: these checks come before it)."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    return Authorizer(build_registry(cfg), quota=None, cache_size=0)


def decide(authorizer: Authorizer, token: str, body: bytes = BODY, header: str = "authorization") -> Decision:
    value = f"Bearer {token}" if header == "authorization" else token
    return asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", {header: value}, body)))


def acme_ed(keys: TenantKeys, **claims: Any) -> str:
    return raw_token({"alg": "EdDSA", "kid": keys.acme_ed25519.kid, "typ": "JWT"},
                     native_claims(OTHER_TENANT, **claims), ed25519(keys.acme_ed25519))


def test_valid_eddsa_key_is_allowed(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = decide(authorizer, acme_ed(test_keys))
    assert decision.allowed, decision
    assert decision.metadata["tenant"] == OTHER_TENANT


def test_valid_native_hs256_key_without_kid_is_allowed(authorizer: Authorizer) -> None:
    token = raw_token({"alg": "HS256", "typ": "JWT"}, native_claims(OTHER_TENANT), hs256(OTHER_SECRET.encode()))
    assert decide(authorizer, token).allowed


def test_valid_seed_key_is_allowed_with_dynasealtoken(authorizer: Authorizer) -> None:
    token = mint_seed_key(DEMO_TENANT, DEMO_SECRET, model="deepseek-chat", max_tokens=50, ttl=60, event_id=7)
    body = orjson.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}],
                         "max_tokens": 50})
    decision = decide(authorizer, token, body, header="dynasealtoken")
    assert decision.allowed, decision
    assert decision.metadata["event_id"] == "7"


def test_rotated_key_also_verifies(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    token = mint(test_keys.acme_rotated, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=100, ttl=60)
    assert decide(authorizer, token).allowed


def _forgeries(keys: TenantKeys) -> dict[str, tuple[str, str]]:
    """name -> (token, expected code)."""
    acme_pub_pem = keys.acme_ed25519.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    acme_pub_raw = keys.acme_ed25519.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    claims = native_claims(OTHER_TENANT)
    valid = acme_ed(keys)
    head, payload, sig = valid.split(".")
    other_payload = b64(orjson.dumps({**claims, "models": ["gpt-4o"], "max_tokens": 512}))
    now = int(time.time())
    return {
        "alg_none": (raw_token({"alg": "none", "typ": "JWT"}, claims), "invalid_api_key"),
        "alg_none_with_kid": (raw_token({"alg": "none", "kid": keys.acme_ed25519.kid}, claims), "invalid_api_key"),
        "hs256_with_public_key_pem": (raw_token({"alg": "HS256", "kid": keys.acme_ed25519.kid}, claims,
                                                hs256(acme_pub_pem)), "invalid_api_key"),
        "hs256_with_public_key_raw": (raw_token({"alg": "HS256", "kid": keys.acme_ed25519.kid}, claims,
                                                hs256(acme_pub_raw)), "invalid_api_key"),
        "rs256_header": (raw_token({"alg": "RS256", "kid": keys.acme_ed25519.kid}, claims,
                                   ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "unknown_kid": (raw_token({"alg": "EdDSA", "kid": "nope-1"}, claims, ed25519(keys.acme_ed25519)),
                        "invalid_api_key"),
        "kid_path_traversal": (raw_token({"alg": "EdDSA", "kid": "../../etc/passwd"}, claims,
                                         ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "kid_url": (raw_token({"alg": "EdDSA", "kid": "http://evil.example/jwks.json"}, claims,
                              ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "kid_not_string": (raw_token({"alg": "EdDSA", "kid": 1}, claims, ed25519(keys.acme_ed25519)),
                           "invalid_api_key"),
        "jku_header": (raw_token({"alg": "EdDSA", "kid": keys.acme_ed25519.kid, "jku": "http://evil/jwks"},
                                 claims, ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "expired": (acme_ed(keys, iat=now - 7200, nbf=now - 7200, exp=now - 3600), "expired_key"),
        "not_yet_valid": (acme_ed(keys, nbf=now + 600, exp=now + 900), "invalid_api_key"),
        "issued_in_future": (acme_ed(keys, iat=now + 600, nbf=None, exp=now + 900), "invalid_api_key"),
        "lifetime_over_max_ttl": (acme_ed(keys, exp=now + 7200), "invalid_api_key"),
        "no_exp": (acme_ed(keys, exp=None), "invalid_api_key"),
        "exp_is_string": (acme_ed(keys, exp=str(now + 60)), "invalid_api_key"),
        "wrong_aud": (acme_ed(keys, aud="someone-else"), "invalid_api_key"),
        "missing_aud": (acme_ed(keys, aud=None), "invalid_api_key"),
        "unknown_iss": (raw_token({"alg": "EdDSA", "kid": keys.acme_ed25519.kid},
                                  native_claims("no-such-tenant"), ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "payload_tampered": (f"{head}.{other_payload}.{sig}", "invalid_api_key"),
        "signature_truncated": (f"{head}.{payload}.{sig[:20]}", "invalid_api_key"),
        "signature_empty": (f"{head}.{payload}.", "invalid_api_key"),
        "non_base64": (f"{head}.{payload}.{sig[:-3]}$%^", "invalid_api_key"),
        "two_segments": (f"{head}.{payload}", "invalid_api_key"),
        "huge_100kb": (f"{head}.{payload}{'A' * 100_000}.{sig}", "invalid_api_key"),
        "binary_garbage": ("\x00\x01\x02.\xff\xfe.\x80", "invalid_api_key"),
        "duplicate_claim_keys": (raw_token({"alg": "EdDSA", "kid": keys.acme_ed25519.kid},
                                           '{"iss":"acme","iss":"' + DEMO_TENANT + '","aud":"dynaseal","exp":'
                                           + str(now + 60) + '}', ed25519(keys.acme_ed25519)), "invalid_api_key"),
        "header_not_object": (raw_token('"EdDSA"', claims, ed25519(keys.acme_ed25519)), "invalid_api_key"),
        # Signed by tenant A's key but claiming tenant B: B has no such kid.
        "tenant_a_key_claims_tenant_b": (raw_token({"alg": "EdDSA", "kid": keys.acme_ed25519.kid},
                                                   native_claims(DEMO_TENANT, models=["deepseek-chat"]),
                                                   ed25519(keys.acme_ed25519)), "invalid_api_key"),
        # Tenant B's seed secret used to sign a key naming tenant A.
        "tenant_b_secret_for_tenant_a": (mint_seed_key(OTHER_TENANT, DEMO_SECRET, model="gpt-4o-mini",
                                                       max_tokens=10, ttl=60, event_id=1), "invalid_api_key"),
        "seed_key_expired": (mint_seed_key(DEMO_TENANT, DEMO_SECRET, model="deepseek-chat", max_tokens=10,
                                           ttl=60, event_id=1, now=time.time() - 3600), "expired_key"),
    }


FORGERY_NAMES = sorted(_forgeries(TenantKeys(SigningKey.generate("x-1"), SigningKey.generate("x-2"))))


@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_forgery_is_refused(authorizer: Authorizer, test_keys: TenantKeys, name: str) -> None:
    token, code = _forgeries(test_keys)[name]
    decision = decide(authorizer, token)
    assert not decision.allowed
    assert (decision.status, decision.code) == (401, code), decision.message


def test_refusal_never_echoes_the_key(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    token = acme_ed(test_keys, aud="someone-else")
    decision = decide(authorizer, token)
    assert token not in decision.error_body().decode()
    assert token.split(".")[2] not in decision.error_body().decode()


def test_two_different_keys_are_refused(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    a, b = acme_ed(test_keys), acme_ed(test_keys, jti="other")
    decision = asyncio.run(authorizer.decide(AuthRequest(
        "POST", "/v1/chat/completions", {"authorization": f"Bearer {a}", "dynasealtoken": b}, BODY)))
    assert decision.code == "invalid_api_key"


def test_non_bearer_authorization_is_refused(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    decision = asyncio.run(authorizer.decide(AuthRequest(
        "POST", "/v1/chat/completions", {"authorization": f"Basic {acme_ed(test_keys)}"}, BODY)))
    assert decision.code == "invalid_api_key"


def test_tenant_budget_and_rpm_cap_every_key(cfg: DynasealConfig, test_keys: TenantKeys) -> None:
    import yaml

    from dynaseal.config import DynasealConfig as Config
    from dynaseal.keys.claims import check_claims

    raw = cfg.model_dump(mode="json")
    acme = next(t for t in raw["tenants"] if t["id"] == OTHER_TENANT)
    acme["limits"].update(budget=500, rpm=20)
    registry = build_registry(Config.model_validate(yaml.safe_load(yaml.safe_dump(raw))))
    tenant = registry.get(OTHER_TENANT)
    assert tenant is not None
    now = time.time()
    over = check_claims(native_claims(OTHER_TENANT, budget=10_000, rpm=1000), tenant, registry, b"t1", now)
    assert (over.budget, over.rpm) == (500, 20)
    none = check_claims(native_claims(OTHER_TENANT), tenant, registry, b"t2", now)
    assert (none.budget, none.rpm) == (500, 20)
    under = check_claims(native_claims(OTHER_TENANT, budget=100, rpm=5), tenant, registry, b"t3", now)
    assert (under.budget, under.rpm) == (100, 5)
