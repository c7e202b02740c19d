"""The issuer's ceilings on one user's minting: `issuer.key_max_uses` (400) and `issuer.mint_rate_per_minute` (429)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_issuer_support import assert_error, bearer, issuer_config, login

from dynaseal.config import DynasealConfig
from issuer_api.app import create_app


def client_with(tmp_path: Path, **issuer: object) -> tuple[DynasealConfig, TestClient]:
    cfg = issuer_config(tmp_path)
    assert cfg.issuer is not None
    cfg = cfg.model_copy(update={"issuer": cfg.issuer.model_copy(update=issuer)})
    client = TestClient(create_app(cfg))
    client.__enter__()
    return cfg, client


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    _cfg, client = client_with(tmp_path, key_max_uses=50, mint_rate_per_minute=3)
    yield client
    client.__exit__(None, None, None)


@pytest.mark.parametrize("uses", [51, 10**18, 10**30])
def test_uses_above_the_issuers_maximum_are_refused(limited: TestClient, uses: int) -> None:
    access = bearer(login(limited, "client1")["access_token"])
    error = assert_error(limited.post("/key/create", json={"uses": uses}, headers=access), 400, "uses_above_limit")
    assert error["param"] == "uses" and "50" in error["message"]
    ok = limited.post("/key/create", json={"uses": 50}, headers=access)
    assert ok.status_code == 200 and ok.json()["scope"]["uses"] == 50


def test_the_default_ceiling_refuses_an_absurd_uses(tmp_path: Path) -> None:
    _cfg, client = client_with(tmp_path)
    try:
        access = bearer(login(client, "client1")["access_token"])
        assert_error(client.post("/key/create", json={"uses": 10**18}, headers=access), 400, "uses_above_limit")
    finally:
        client.__exit__(None, None, None)


def test_a_user_minting_too_fast_gets_429_with_retry_after(limited: TestClient) -> None:
    access = bearer(login(limited, "client1")["access_token"])
    assert [limited.post("/key/create", headers=access).status_code for _ in range(3)] == [200] * 3
    refused = limited.post("/key/create", headers=access)
    assert_error(refused, 429, "mint_rate_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Per user: the tenant account still mints.
    assert limited.post("/key/create", headers=bearer(login(limited, "user1")["access_token"])).status_code == 200


def test_parallel_mints_never_pass_the_rate(limited: TestClient) -> None:
    access = bearer(login(limited, "client1")["access_token"])
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: limited.post("/key/create", headers=access).status_code, range(12)))
    assert sorted(statuses) == [200] * 3 + [429] * 9


def test_the_mint_rate_survives_a_restart(tmp_path: Path) -> None:
    cfg, client = client_with(tmp_path, mint_rate_per_minute=2)
    access = bearer(login(client, "client1")["access_token"])
    assert [client.post("/key/create", headers=access).status_code for _ in range(2)] == [200, 200]
    client.__exit__(None, None, None)
    with TestClient(create_app(cfg)) as restarted:  # counted in the database, not in memory
        assert_error(restarted.post("/key/create", headers=bearer(login(restarted, "client1")["access_token"])),
                     429, "mint_rate_exceeded")
