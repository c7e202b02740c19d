"""Browser origins: the tenant's `cors.origins` and the key's `origins` claim, decided by the authorizer
(no Envoy: tests/test_cors_e2e.py covers the preflight at the edge)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from conftest import DEMO_TENANT, OTHER_TENANT, TenantKeys, acme_key

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, status_of
from dynaseal.keys.mint import HolderKey, SigningKey
from dynaseal.keys.tenants import build_registry
from dynaseal.origin_patterns import check_origin_pattern, origin_matches, origin_regex
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision
from dynaseal.tenant_config import CorsConfig
from dynaseal_launcher.envoy_config import cors_origin_matchers

PAGE = "https://app.pages.example"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})


def test_exact_origins_and_wildcard_patterns() -> None:
    patterns = ["http://127.0.0.1:9000", "https://*.pages.example"]
    assert origin_matches("http://127.0.0.1:9000", patterns)
    assert origin_matches("https://app.pages.example", patterns)
    assert origin_matches("https://a.b.pages.example", patterns)
    for hostile in ("http://127.0.0.1:9001", "http://127.0.0.1:9000/", "HTTP://127.0.0.1:9000",
                    "https://pages.example", "http://app.pages.example", "https://evilpages.example",
                    "https://app.pages.example.evil.test", "https://app.pages.example:444", "null", "",
                    "https://app.pages.example\n", "https://x_y.pages.example", "https://.pages.example"):
        assert not origin_matches(hostile, patterns), hostile
    assert origin_regex("https://*.pages.example") == r"^https://([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+pages\.example$"


@pytest.mark.parametrize("bad", ["*", "null", "https://app.example/", "https://app.example/path", "app.example",
                                 "ftp://app.example", "https://App.example", "https://user@app.example",
                                 "https://app.*.example", "https://*", "https://app.example:0",
                                 "https://app.example:99999", "https://*.example.com/x", "https://app.example\n"])
def test_unusable_origin_patterns_are_refused_in_config(bad: str) -> None:
    with pytest.raises(ValueError):
        check_origin_pattern(bad)
    with pytest.raises(ValueError):
        CorsConfig(origins=(bad,))


def test_envoy_gets_the_union_of_tenants_origins(cfg: DynasealConfig) -> None:
    matchers = orjson.loads(cors_origin_matchers(cfg))
    issuer = f"http://127.0.0.1:{cfg.gateway.ports.issuer}"
    assert {"exact": issuer} in matchers
    assert {"safe_regex": {"regex": origin_regex("https://*.pages.example")}} in matchers


def decide(authorizer: Authorizer, key: str, **headers: str) -> Decision:
    request = AuthRequest("POST", "/v1/chat/completions",
                          {"authorization": f"Bearer {key}", "content-type": "application/json", **headers}, BODY)
    return asyncio.run(authorizer.decide(request))


@pytest.fixture(scope="module")
def cors_authorizer(cfg: DynasealConfig) -> Authorizer:
    """The test config with the acme tenant allowing one page origin."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    tenants = tuple(t.model_copy(update={"cors": CorsConfig(origins=(PAGE,))}) if t.id == OTHER_TENANT else t
                    for t in cfg.tenants)
    return Authorizer(build_registry(cfg.model_copy(update={"tenants": tenants})), quota=None)


def assert_origin_refused(decision: Decision) -> None:
    assert not decision.allowed
    assert decision.code == ErrorCode.ORIGIN_NOT_ALLOWED
    assert ErrorCode.ORIGIN_NOT_ALLOWED.value == "origin_not_allowed"
    assert decision.status == status_of(ErrorCode.ORIGIN_NOT_ALLOWED) == 403


def test_the_request_is_checked_against_the_keys_own_tenant(cors_authorizer: Authorizer,
                                                            test_keys: TenantKeys) -> None:
    key = acme_key(test_keys)
    assert decide(cors_authorizer, key, origin=PAGE).allowed
    assert decide(cors_authorizer, key).allowed  # not from a page: a server-side client
    # Another page; and the demo tenant's origin, allowed at the edge, is not acme's.
    assert_origin_refused(decide(cors_authorizer, key, origin="https://evil.example"))
    assert_origin_refused(decide(cors_authorizer, key, origin="null"))
    assert_origin_refused(decide(cors_authorizer, key, origin="http://127.0.0.1:9000"))


def test_a_tenant_without_cors_takes_no_page(cfg: DynasealConfig, registry: Any, test_keys: TenantKeys) -> None:
    key = acme_key(test_keys)
    plain = Authorizer(registry, quota=None)  # acme has no cors in the test config
    assert decide(plain, key).allowed
    assert_origin_refused(decide(plain, key, origin=PAGE))


def test_the_keys_origins_claim_narrows_the_tenants(cors_authorizer: Authorizer, test_keys: TenantKeys) -> None:
    key = acme_key(test_keys, origins=[PAGE])
    assert decide(cors_authorizer, key, origin=PAGE).allowed
    # Minted for pages only: a client that sends no Origin is refused too.
    assert_origin_refused(decide(cors_authorizer, key))
    other = acme_key(test_keys, origins=["https://other.pages.example"])
    assert_origin_refused(decide(cors_authorizer, other, origin=PAGE))  # the tenant allows it, the key not


@pytest.mark.parametrize("claim", [[], "https://app.pages.example", ["*"], ["null"], [1], ["https://a/"],
                                   ["https://x.example"] * 101])
def test_a_malformed_origins_claim_is_a_401(cors_authorizer: Authorizer, test_keys: TenantKeys,
                                            claim: Any) -> None:
    decision = decide(cors_authorizer, acme_key(test_keys, origins=claim), origin=PAGE)
    assert decision.status == 401 and decision.code == "invalid_api_key"
    assert "origins" in decision.message


def test_a_child_key_keeps_its_parents_origins(cfg: DynasealConfig) -> None:
    """The child names no origins, or others: every level's claim is checked, so a child never widens."""
    import time

    import jwt

    from dynaseal.keys.signing_keystore import SigningKeyStore

    issuer: SigningKey = SigningKeyStore(cfg.data_path / "issuer").ensure()
    holder = HolderKey.generate()
    page = f"http://127.0.0.1:{cfg.gateway.ports.issuer}"
    now = int(time.time())
    parent = jwt.encode({"iss": DEMO_TENANT, "aud": "dynaseal", "iat": now, "exp": now + 300, "jti": "p-origins",
                         "models": ["deepseek-chat"], "max_tokens": 50, "cnf": holder.cnf_jwk(), "origins": [page]},
                        issuer.private_key, algorithm="EdDSA", headers={"kid": issuer.kid})
    authorizer = Authorizer(build_registry(cfg), quota=None)
    body = orjson.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})

    def from_page(token: str, origin: str) -> Decision:
        return asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", {
            "authorization": f"Bearer {token}", "origin": origin}, body)))

    child = holder.child(parent, uses=1)
    assert from_page(child, page).allowed
    assert_origin_refused(from_page(child, "https://app.pages.example"))  # the tenant's, not the parent's
