"""The tenant store on PostgreSQL through the same code as on SQLite: writes, generations, the overlay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_support import postgres_server, unavailable
from test_tenancy import DEMO, stored_tenant, write_config

from dynaseal.config import load_config
from dynaseal.keys.mint import mint_seed_key
from dynaseal.keys.tenants import build_registry
from dynaseal.keys.verification import verify_token
from dynaseal.secrets import use_stored_secrets
from dynaseal.tenancy.overlay import overlay
from dynaseal.tenancy.store import PURPOSE_CALLBACK, PURPOSE_SEED, TenantStore

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
SECRET = "postgres-stored-seed-secret-0123456789"
HOOK = "whsec_cG9zdGdyZXMtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A PostgreSQL server for this module."""
    with postgres_server() as running:
        yield running


def test_the_store_works_on_postgresql(url: str, tmp_path: Path) -> None:
    store = TenantStore(url)
    again = TenantStore(url)  # a second service opening the same store: tables and the row exist
    base = store.generation()
    assert store.put_tenant("pg", stored_tenant("pg", callback={"url": "http://127.0.0.1:9/cb",
                                                                "secret_env": "dynaseal-store:pg/callback"}),
                            {PURPOSE_SEED: SECRET, PURPOSE_CALLBACK: HOOK}) == base + 1
    assert store.rotate_secret("pg", PURPOSE_CALLBACK, HOOK.replace("cG9z", "bmV3"), 60) == base + 2
    assert store.set_disabled(DEMO, True) == base + 3
    assert again.generation() == base + 3
    store.add_account("Backend@Example.com", "backend", "$2b$12$hash", "pg")
    store.add_account("backend@example.com", "backend", "$2b$12$other", "pg")  # exists: unchanged
    account = again.account("backend@example.com")
    assert account is not None and account.password_hash == "$2b$12$hash"
    tenancy = overlay(load_config(write_config(tmp_path)), again.snapshot(), time.time())
    use_stored_secrets(tenancy.secrets)
    assert tenancy.disabled == {DEMO} and tenancy.generation == base + 3
    registry = build_registry(tenancy.cfg, fetch_new_jwks=False)
    token = mint_seed_key("pg", SECRET, model="deepseek-chat", max_tokens=16, ttl=60, event_id="e")
    assert verify_token(token, registry).tenant.id == "pg"
    callback = next(t for t in tenancy.cfg.tenants if t.id == "pg").callback
    assert callback is not None and len(callback.previous_secret_envs) == 1
    store.close()
    again.close()
