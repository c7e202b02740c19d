"""issuer_api and the original client: every route under `/api/v1` as well as the root, e-mail login
with the exact OAuth2 form the client sends, and the original backend's refresh call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_issuer_support import assert_error, bearer, callback_secret, issuer_client, login, signed_callback, usage_body

from dynaseal.config import DynasealConfig
from dynaseal.keys.tenants import build_registry
from issuer_api.app import issuer_state
from issuer_api.users import create_user

PREFIXES = ("", "/api/v1")
# What the original client's request_side.py posts, byte for byte.
SEED_LOGIN_FORM = ("username=client1%40example.com&password=client1&grant_type=password&scope="
                   "&client_id=string&client_secret=string")
FORM = {"accept": "application/json", "content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-compat"))
    yield cfg, client
    client.__exit__(None, None, None)


def test_the_original_client_flow_under_api_v1(issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    response = client.post("/api/v1/user/login", content=SEED_LOGIN_FORM, headers=FORM)
    assert response.status_code == 200, response.text
    access = response.json()["access_token"]
    created = client.post("/api/v1/key/create", headers=bearer(access))  # no body, as the client sends
    assert created.status_code == 200, created.text
    from dynaseal.keys.verification import verify_token

    assert verify_token(created.json()["token"], build_registry(cfg)).sub == "client1"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("login_name", "password"), [
    ("client1", "client1"), ("client1@example.com", "client1"), ("Client1@Example.COM", "client1"),
    ("user1@example.com", "user1")])
def test_login_by_username_or_email(issuer: tuple[DynasealConfig, TestClient], prefix: str, login_name: str,
                                    password: str) -> None:
    response = issuer[1].post(f"{prefix}/user/login", data={"username": login_name, "password": password})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("login_name", "password"), [
    ("client1@example.com", "user1"),  # user1's password does not open client1 by its e-mail
    ("client1@example.org", "client1"),
    ("example.com", "client1"),
])
def test_a_wrong_email_or_password_is_401(issuer: tuple[DynasealConfig, TestClient], login_name: str,
                                          password: str) -> None:
    response = issuer[1].post("/api/v1/user/login", data={"username": login_name, "password": password})
    assert_error(response, 401, "invalid_credentials")


def test_a_username_shaped_like_an_email_opens_only_one_account(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A user named like another's e-mail: that e-mail logs in to its owner, never to the look-alike."""
    _cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-lookalike"))
    try:
        with issuer_state(client.app).sessions.begin() as db:  # type: ignore[arg-type]
            create_user(db, "client1@example.com", "mallory-pass", "end_user", "t")
        assert_error(client.post("/user/login", data={"username": "client1@example.com",
                                                      "password": "mallory-pass"}), 401)
        login(client, "client1@example.com", "client1")
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_route_answers_under_both_prefixes(issuer: tuple[DynasealConfig, TestClient], prefix: str) -> None:
    cfg, client = issuer
    assert client.get(f"{prefix}/healthz").json() == {"status": "ok"}
    pair = client.post(f"{prefix}/user/login", data={"username": "client1", "password": "client1"}).json()
    refreshed = client.post(f"{prefix}/user/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    access = bearer(refreshed.json()["access_token"])
    created = client.post(f"{prefix}/key/create", headers=access, json={"ttl": 60})
    assert created.status_code == 200, created.text
    jti = created.json()["jti"]
    revoked = client.post(f"{prefix}/key/revoke", headers=access, json={"jti": jti})
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True, revoked.text
    keys = client.get(f"{prefix}/.well-known/jwks.json").json()["keys"]
    assert created.json()["kid"] in {k["kid"] for k in keys}
    body, headers = signed_callback(callback_secret(cfg), usage_body(f"evt{prefix}", jti, "client1"))
    stored = client.post(f"{prefix}/callback/usage", content=body, headers=headers)
    assert stored.json()["status"] == "stored", stored.text
    usage = client.get(f"{prefix}/usage", headers=access, params={"jti": jti}).json()
    assert [item["event_id"] for item in usage["items"]] == [f"evt{prefix}"]


def test_the_seed_callback_url_stays_at_the_root(issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    body, headers = signed_callback(callback_secret(cfg), usage_body("evt-root-v1", None, None))
    assert client.post("/v1/callback/usage", content=body, headers=headers).json()["status"] == "stored"
    assert_error(client.post("/api/v1/v1/callback/usage", content=body, headers=headers), 404)


def test_refresh_the_original_backends_way(issuer: tuple[DynasealConfig, TestClient]) -> None:
    """`POST /api/v1/user/refresh?refresh_token=...` with the access token as bearer."""
    client = issuer[1]
    pair = login(client, "client1")
    response = client.post("/api/v1/user/refresh", params={"refresh_token": pair["refresh_token"]},
                           headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.text
    # The query carries the refresh token: an access token there is refused, bearer or not.
    wrong = client.post("/api/v1/user/refresh", params={"refresh_token": pair["access_token"]},
                        headers=bearer(pair["refresh_token"]))
    assert_error(wrong, 401, "wrong_token_type")


def test_openapi_lists_each_operation_once(issuer: tuple[DynasealConfig, TestClient]) -> None:
    paths = issuer[1].get("/openapi.json").json()["paths"]
    assert "/user/login" in paths and not any(p.startswith("/api/v1") for p in paths)
