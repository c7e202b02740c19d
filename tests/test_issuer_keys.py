"""issuer_api keys: minting within scope, verification by the gateway code, revocation, JWKS, rotation."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_issuer_support import DEMO_TENANT, assert_error, bearer, issuer_client, login

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.keys.tenants import build_registry
from dynaseal.keys.verification import verify_token
from issuer_api.app import issuer_state
from issuer_api.store import MintedKey


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-keys"))
    yield cfg, client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client1(issuer: tuple[DynasealConfig, TestClient]) -> dict[str, str]:
    return bearer(login(issuer[1], "client1")["access_token"])


@pytest.fixture(scope="module")
def user1(issuer: tuple[DynasealConfig, TestClient]) -> dict[str, str]:
    return bearer(login(issuer[1], "user1")["access_token"])


def _mint(client: TestClient, headers: dict[str, str], **scope: object) -> dict[str, object]:
    response = client.post("/key/create", headers=headers, json=scope or None)
    assert response.status_code == 200, response.text
    minted: dict[str, object] = response.json()
    return minted


def test_default_key_verifies_with_the_gateway_code(issuer: tuple[DynasealConfig, TestClient],
                                                    client1: dict[str, str]) -> None:
    cfg, client = issuer
    created = _mint(client, client1)
    verified = verify_token(str(created["token"]), build_registry(cfg))
    assert verified.tenant.id == DEMO_TENANT
    assert verified.jti == created["jti"]
    assert verified.sub == "client1"
    assert verified.models == frozenset({"deepseek-chat", "gpt-4o-mini", "claude-sonnet-4-5", "text-embedding-3-small"})
    assert verified.max_tokens == 256
    assert verified.exp == created["expires_at"]
    with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
        record = db.get(MintedKey, created["jti"])
    assert record is not None and record.revoked_at is None
    assert str(created["token"]) not in str(record.scope)  # the token itself is never stored


def test_narrowed_scope_is_honoured(issuer: tuple[DynasealConfig, TestClient],
                                    client1: dict[str, str]) -> None:
    cfg, client = issuer
    created = _mint(client, client1, models=["gpt-4o-mini"], max_tokens=64, ttl=60, uses=1, budget=500, rpm=5)
    verified = verify_token(str(created["token"]), build_registry(cfg))
    assert verified.models == frozenset({"gpt-4o-mini"})
    assert (verified.max_tokens, verified.uses, verified.budget, verified.rpm) == (64, 1, 500, 5)


@pytest.mark.parametrize(("scope", "status", "param"), [
    ({"models": ["gpt-4o"]}, 403, "models"),          # tenant allows it, the issuer does not grant it
    ({"models": ["gpt-5-secret"]}, 403, "models"),
    ({"max_tokens": 257}, 403, "max_tokens"),         # above issuer key_max_tokens
    ({"max_tokens": 5000}, 403, "max_tokens"),        # above the tenant ceiling too
    ({"ttl": 601}, 403, "ttl"),
    ({"ttl": 100_000}, 403, "ttl"),                   # above the tenant max_ttl
    ({"rpm": 601}, 403, "rpm"),
    ({"sub": "someone-else"}, 403, "sub"),            # an end user cannot speak for another
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"models": []}, 400, "models"),
    ({"models": "deepseek-chat"}, 400, "models"),
    ({"surprise": True}, 400, "surprise"),
])
def test_over_scope_and_malformed_requests_are_refused(issuer: tuple[DynasealConfig, TestClient],
                                                       client1: dict[str, str], scope: dict[str, object],
                                                       status: int, param: str) -> None:
    error = assert_error(issuer[1].post("/key/create", headers=client1, json=scope), status)
    assert error["param"] == param


def test_tenant_account_may_mint_for_a_subject(issuer: tuple[DynasealConfig, TestClient],
                                               user1: dict[str, str]) -> None:
    cfg, client = issuer
    created = _mint(client, user1, sub="client1")
    assert verify_token(str(created["token"]), build_registry(cfg)).sub == "client1"


def test_revoke_own_key_and_not_another_users(issuer: tuple[DynasealConfig, TestClient],
                                              client1: dict[str, str], user1: dict[str, str]) -> None:
    client = issuer[1]
    mine = _mint(client, client1)
    first = client.post("/key/revoke", headers=client1, json={"jti": mine["jti"]})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["revoked"] is True and body["already_revoked"] is False
    assert body["gateway_notified"] is False  # no Redis configured in this config
    again = client.post("/key/revoke", headers=client1, json={"jti": mine["jti"]}).json()
    assert again["already_revoked"] is True and again["revoked_at"] == body["revoked_at"]

    tenant_key = _mint(client, user1)
    assert_error(client.post("/key/revoke", headers=client1, json={"jti": tenant_key["jti"]}), 404,
                 "key_not_found")
    assert_error(client.post("/key/revoke", headers=client1, json={"jti": "never-minted"}), 404)
    assert_error(client.post("/key/revoke", headers=client1, json={}), 400)
    assert_error(client.post("/key/revoke", json={"jti": tenant_key["jti"]}), 401)
    # The tenant account may revoke any of its end users' keys.
    theirs = _mint(client, client1)
    assert client.post("/key/revoke", headers=user1, json={"jti": theirs["jti"]}).status_code == 200


def test_revoke_with_unreachable_redis_changes_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    _cfg, client = issuer_client(tmp_path)
    try:
        headers = bearer(login(client, "client1")["access_token"])
        created = _mint(client, headers)
        assert_error(client.post("/key/revoke", headers=headers, json={"jti": created["jti"]}), 503,
                     "gateway_unavailable")
        with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
            record = db.get(MintedKey, created["jti"])
        assert record is not None and record.revoked_at is None  # retryable: nothing half-written
    finally:
        client.__exit__(None, None, None)


def test_jwks_endpoint_matches_the_store(issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    store = SigningKeyStore(Path(cfg.gateway.data_dir) / "issuer")
    assert response.json() == store.public_jwks()
    assert all("d" not in key for key in response.json()["keys"])  # never private material


def test_rotation_keeps_old_keys_valid_until_removed(tmp_path: Path) -> None:
    cfg, client = issuer_client(tmp_path)
    try:
        headers = bearer(login(client, "client1")["access_token"])
        store = SigningKeyStore(Path(cfg.gateway.data_dir) / "issuer")
        old_kid = store.active().kid
        before = str(_mint(client, headers)["token"])
        new_kid = store.rotate(max_key_ttl=86400).kid
        after = _mint(client, headers)
        assert after["kid"] == new_kid != old_kid
        registry = build_registry(cfg)
        verify_token(before, registry)
        verify_token(str(after["token"]), registry)
        assert {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]} == {old_kid, new_kid}

        assert store.remove(old_kid)
        registry = build_registry(cfg)
        with pytest.raises(Refusal) as refused:
            verify_token(before, registry)
        assert refused.value.code is ErrorCode.INVALID_API_KEY
        verify_token(str(after["token"]), registry)
        assert [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]] == [new_kid]
    finally:
        client.__exit__(None, None, None)
