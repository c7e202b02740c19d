"""issuer_api sessions: seed login (form and JSON), throttling, refresh, token types and expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from test_issuer_support import CLIENT1_ID, assert_error, bearer, issuer_client, login, session_secret

from dynaseal.config import DynasealConfig
from issuer_api.login_limiter import LoginLimiter


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-sessions"))
    yield cfg, client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client1_pair(issuer: tuple[DynasealConfig, TestClient]) -> dict[str, str]:
    return login(issuer[1], "client1")


def test_login_as_oauth2_form_answers_the_seed_shape(issuer: tuple[DynasealConfig, TestClient]) -> None:
    pair = login(issuer[1], "user1")
    assert set(pair) == {"access_token", "refresh_token", "token_type"}
    assert pair["token_type"] == "bearer"
    assert pair["access_token"] != pair["refresh_token"]


def test_login_as_json(issuer: tuple[DynasealConfig, TestClient]) -> None:
    response = issuer[1].post("/user/login", json={"username": "client1", "password": "client1"})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


def test_wrong_password_is_401(issuer: tuple[DynasealConfig, TestClient]) -> None:
    response = issuer[1].post("/user/login", data={"username": "client1", "password": "nope"})
    assert_error(response, 401, "invalid_credentials")


def test_unknown_user_is_401_like_a_wrong_password(issuer: tuple[DynasealConfig, TestClient]) -> None:
    response = issuer[1].post("/user/login", json={"username": "mallory", "password": "x"})
    assert_error(response, 401, "invalid_credentials")


@pytest.mark.parametrize(("body", "param"), [
    ({"username": "client1"}, "password"),
    ({"password": "client1"}, "username"),
    ({"username": 5, "password": "x"}, "username"),
])
def test_incomplete_credentials_are_400(issuer: tuple[DynasealConfig, TestClient], body: dict[str, object],
                                        param: str) -> None:
    error = assert_error(issuer[1].post("/user/login", json=body), 400)
    assert error["param"] == param


def test_malformed_login_bodies_are_400(issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    as_json = {"content-type": "application/json"}
    assert_error(client.post("/user/login", content=b"{nope", headers=as_json), 400)
    assert_error(client.post("/user/login", content=b"[1]", headers=as_json), 400)
    assert_error(client.post("/user/login", content=b"\xff\xfe", headers={"content-type": "text/plain"}), 400)


def test_repeated_failures_are_throttled(tmp_path: Path) -> None:
    _cfg, client = issuer_client(tmp_path)
    try:
        for _ in range(5):
            assert_error(client.post("/user/login", data={"username": "user1", "password": "bad"}), 401)
        blocked = client.post("/user/login", data={"username": "user1", "password": "user1"})
        assert_error(blocked, 429, "too_many_login_attempts")
        assert int(blocked.headers["retry-after"]) > 0
        # The limit is per username: another account from the same address still logs in.
        login(client, "client1")
    finally:
        client.__exit__(None, None, None)


def test_refresh_returns_a_new_pair(issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    pair = login(client, "client1")
    by_body = client.post("/user/refresh", json={"refresh_token": pair["refresh_token"]})
    assert by_body.status_code == 200, by_body.text
    fresh = by_body.json()
    assert fresh["access_token"] != pair["access_token"] and fresh["refresh_token"] != pair["refresh_token"]
    assert client.post("/key/create", headers=bearer(fresh["access_token"])).status_code == 200
    # Each way of sending it, each time with the token the last refresh handed out (rotation).
    by_header = client.post("/user/refresh", headers=bearer(fresh["refresh_token"]))
    assert by_header.status_code == 200, by_header.text
    by_form = client.post("/user/refresh", data={"refresh_token": by_header.json()["refresh_token"]})
    assert by_form.status_code == 200, by_form.text


def test_access_token_is_not_a_refresh_token(issuer: tuple[DynasealConfig, TestClient],
                                             client1_pair: dict[str, str]) -> None:
    client = issuer[1]
    response = client.post("/user/refresh", json={"refresh_token": client1_pair["access_token"]})
    assert_error(response, 401, "wrong_token_type")
    assert_error(client.post("/key/create", headers=bearer(client1_pair["refresh_token"])), 401,
                 "wrong_token_type")


def test_missing_garbage_and_expired_tokens_are_401(issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    assert_error(client.post("/key/create"), 401, "missing_token")
    assert_error(client.post("/key/create", headers=bearer("not.a.jwt")), 401, "invalid_token")
    assert_error(client.post("/user/refresh"), 401, "missing_token")
    now = int(time.time())
    expired = jwt.encode({"iss": "dynaseal-issuer", "sub": CLIENT1_ID, "typ": "access", "iat": now - 120,
                          "exp": now - 60}, session_secret(cfg), algorithm="HS256")
    response = client.post("/key/create", headers=bearer(expired))
    assert_error(response, 401, "token_expired")
    assert response.headers["www-authenticate"] == "Bearer"


def test_token_signed_with_another_secret_is_401(issuer: tuple[DynasealConfig, TestClient]) -> None:
    now = int(time.time())
    forged = jwt.encode({"iss": "dynaseal-issuer", "sub": CLIENT1_ID, "typ": "access", "iat": now,
                         "exp": now + 60}, "x" * 40, algorithm="HS256")
    assert_error(issuer[1].post("/key/create", headers=bearer(forged)), 401, "invalid_token")


def test_health_and_docs(issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    assert client.get("/healthz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/user/login", "/user/refresh", "/key/create", "/key/revoke", "/.well-known/jwks.json",
                 "/callback/usage", "/v1/callback/usage", "/usage"):
        assert path in paths
    assert_error(client.get("/no/such/route"), 404, "not_found")


def test_login_limiter_window_slides_and_resets() -> None:
    limiter = LoginLimiter(max_failures=2, window_s=60)
    for t in (0.0, 10.0):
        limiter.record_failure("u", "1.2.3.4", now=t)
    assert limiter.retry_after("u", "1.2.3.4", now=11.0) == 49
    assert limiter.retry_after("u", "5.6.7.8", now=11.0) == 0  # per client address
    assert limiter.retry_after("u", "1.2.3.4", now=60.5) == 0  # the first failure left the window
    limiter.reset("u", "1.2.3.4")
    assert limiter.retry_after("u", "1.2.3.4", now=11.0) == 0
