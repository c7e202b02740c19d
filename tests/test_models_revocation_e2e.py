"""`GET /v1/models` through Envoy checks revocation like every other answer (#21: a revoked key got 200)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from conftest import DEMO_TENANT, jwt_payload
from ledger_sync import revoke

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import HolderKey, SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models_url(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/models"


@pytest.fixture
def store(cfg: DynasealConfig) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url(cfg))
    yield client
    client.close()


def list_models(url: str, token: str) -> httpx.Response:
    return httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=30)


def test_a_revoked_key_cannot_list_models(models_url: str, issuer_key: SigningKey, store: redis.Redis) -> None:
    key = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=64, ttl=300)
    listed = list_models(models_url, key)
    assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == ["deepseek-chat"]
    payload = jwt_payload(key)
    revoke(store, DEMO_TENANT, str(payload["jti"]), float(payload["exp"]))  # type: ignore[arg-type]
    refused = list_models(models_url, key)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "revoked_key")
    assert "data" not in refused.json()


def test_a_child_of_a_revoked_key_cannot_list_models(models_url: str, issuer_key: SigningKey,
                                                     store: redis.Redis) -> None:
    holder = HolderKey.generate()
    parent = mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=64, ttl=300,
                  cnf=holder.cnf_jwk())
    child = holder.child(parent)
    assert list_models(models_url, child).status_code == 200
    payload = jwt_payload(parent)
    revoke(store, DEMO_TENANT, str(payload["jti"]), float(payload["exp"]))  # type: ignore[arg-type]
    refused = list_models(models_url, child)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "revoked_key")
    assert "ancestor" in refused.json()["error"]["message"]
