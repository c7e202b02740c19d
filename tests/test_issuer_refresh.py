"""Refresh tokens rotate on use; a reused one revokes its login's whole family (RFC 9700 §4.14.2), durably."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from test_issuer_support import CLIENT1_ID, assert_error, bearer, issuer_client, login, session_secret

from dynaseal.config import DynasealConfig
from issuer_api.app import create_app


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path)
    yield cfg, client
    client.__exit__(None, None, None)


def test_a_refresh_token_is_good_once_and_its_reuse_revokes_the_family(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    first = login(client, "client1")
    other_login = login(client, "client1")  # another device: another family
    second = client.post("/user/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]

    # The first token again (a thief's copy, or its owner's after the thief rotated): the family is revoked.
    assert_error(client.post("/user/refresh", json={"refresh_token": first["refresh_token"]}), 401,
                 "refresh_token_reused")
    assert_error(client.post("/user/refresh", json={"refresh_token": rotated["refresh_token"]}), 401,
                 "session_revoked")
    for access in (first["access_token"], rotated["access_token"]):
        assert_error(client.post("/key/create", headers=bearer(access)), 401, "session_revoked")
    # The other login is untouched.
    assert client.post("/key/create", headers=bearer(other_login["access_token"])).status_code == 200
    assert client.post("/user/refresh", json={"refresh_token": other_login["refresh_token"]}).status_code == 200


def test_the_seed_backends_query_refresh_rotates_too(issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    pair = login(client, "client1")
    reply = client.post("/api/v1/user/refresh", params={"refresh_token": pair["refresh_token"]},
                        headers=bearer(pair["access_token"]))
    assert reply.status_code == 200 and set(reply.json()) == {"access_token", "refresh_token", "token_type"}
    again = client.post("/api/v1/user/refresh", params={"refresh_token": pair["refresh_token"]},
                        headers=bearer(reply.json()["access_token"]))
    assert_error(again, 401, "refresh_token_reused")


def test_concurrent_uses_of_one_token_rotate_it_exactly_once(issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    token = login(client, "client1")["refresh_token"]
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: client.post("/user/refresh", json={"refresh_token": token}).status_code,
                                   range(8)))
    assert statuses == [200] + [401] * 7


def test_used_tokens_and_revoked_families_survive_a_restart(tmp_path: Path) -> None:
    cfg, client = issuer_client(tmp_path)
    pair = login(client, "client1")
    rotated = client.post("/user/refresh", json={"refresh_token": pair["refresh_token"]}).json()
    client.__exit__(None, None, None)
    with TestClient(create_app(cfg)) as restarted:  # same database, fresh process state
        assert_error(restarted.post("/user/refresh", json={"refresh_token": pair["refresh_token"]}), 401,
                     "refresh_token_reused")
        assert_error(restarted.post("/user/refresh", json={"refresh_token": rotated["refresh_token"]}), 401,
                     "session_revoked")


def test_a_validly_signed_token_the_issuer_never_recorded_is_refused(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    now = int(time.time())
    base = {"iss": "dynaseal-issuer", "sub": CLIENT1_ID, "typ": "refresh", "iat": now, "exp": now + 60}
    for claims in (base, {**base, "jti": "made-up", "fam": "made-up"}):
        forged = jwt.encode(claims, session_secret(cfg), algorithm="HS256")
        assert_error(client.post("/user/refresh", json={"refresh_token": forged}), 401, "invalid_token")
    pair = login(client, "client1")
    # Another user's family under this user's name: unknown, never rotated.
    theirs = jwt.decode(pair["refresh_token"], options={"verify_signature": False})
    swapped = jwt.encode({**theirs, "sub": "671249a93f1cf2f8bf9b2b82"}, session_secret(cfg), algorithm="HS256")
    assert_error(client.post("/user/refresh", json={"refresh_token": swapped}), 401, "invalid_token")
    assert client.post("/user/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200
