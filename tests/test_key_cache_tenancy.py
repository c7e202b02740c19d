"""The verified-key cache never outlives what verified a key: after a seed-secret rotation's grace period
ends (no store write at that moment), a tenant is disabled, or the remote key set is pushed again, a key
verified and cached before is decided against the registry in force, as authz runs it (AuthzServer over a
config file with the tenant store beside it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from authz_service.server import AuthzOptions, AuthzServer
from dynaseal.config import bundled_dev_config
from dynaseal.errors import Refusal
from dynaseal.keys.mint import mint_seed_key
from dynaseal.keys.registry_holder import JwksSnapshot
from dynaseal.tenancy import source as tenancy_source
from dynaseal.tenancy.overlay import seed_marker
from dynaseal.tenancy.store import PURPOSE_SEED, TenantStore

TENANT = "beta"
FIRST = "beta-first-secret-0123456789-padded-to-32"
SECOND = "beta-second-secret-012345678-padded-to-32"
GRACE_S = 600.0


def write_config(tmp_path: Path) -> Path:
    """The bundled dev config with its store in tmp_path."""
    raw: dict[str, Any] = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw["tenants"][0].pop("jwks_file", None)  # no issuer keys here
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def seed_key(secret: str) -> str:
    """A seed-format key of the stored tenant, signed with `secret`."""
    return mint_seed_key(TENANT, secret, model="deepseek-chat", max_tokens=16, ttl=300, event_id="e")


class Authz:
    """An authz server's key decisions and its reload, as its config watch runs them."""

    def __init__(self, server: AuthzServer) -> None:
        self.server = server

    def verify(self, token: str) -> str:
        """'ok' or the refusal's message, through the cache of the authorizer in force."""
        try:
            self.server.servicer.authorizer.keys.verify(token)
        except Refusal as refusal:
            return refusal.message
        return "ok"

    def poll(self) -> bool:
        """One round of the config watch: reload if anything changed; whether it did."""
        if not self.server.tenancy.changed():
            return False
        self.server.reload()
        return True


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Authz, TenantStore]]:
    """An authz server whose store holds tenant `beta` with one seed secret."""
    path = write_config(tmp_path)
    (tmp_path / "data" / "admin").mkdir(parents=True, exist_ok=True)
    store = TenantStore(f"sqlite:///{tmp_path / 'data' / 'admin' / 'admin.db'}")
    store.put_tenant(TENANT, {"id": TENANT, "keys": [{"alg": "HS256", "secret_env": seed_marker(TENANT)}],
                              "limits": {"models": ["deepseek-chat"], "max_tokens": 64}}, {PURPOSE_SEED: FIRST})
    server = AuthzServer(AuthzOptions(config_path=str(path)))
    yield Authz(server), store
    store.close()


def test_a_key_of_a_retired_seed_secret_is_refused_once_the_grace_period_ends(
        setup: tuple[Authz, TenantStore], monkeypatch: pytest.MonkeyPatch) -> None:
    authz, store = setup
    old, new = seed_key(FIRST), seed_key(SECOND)
    assert authz.verify(old) == "ok"  # cached from here on
    store.rotate_secret(TENANT, PURPOSE_SEED, SECOND, grace_s=GRACE_S)
    assert authz.poll()
    assert authz.verify(old) == "ok" and authz.verify(new) == "ok"  # both during the grace period

    # The grace period ends with no write to the store: the moment alone must reload the config.
    later = time.time() + GRACE_S + 1
    monkeypatch.setattr(tenancy_source, "time", SimpleNamespace(time=lambda: later))
    assert authz.poll(), "the end of a rotation's grace period was not noticed"
    assert authz.verify(old) == "dynamic key signature is invalid"
    assert authz.verify(new) == "ok"


def test_a_disabled_tenants_cached_keys_are_refused_at_the_next_reload(setup: tuple[Authz, TenantStore]) -> None:
    authz, store = setup
    token = seed_key(FIRST)
    assert authz.verify(token) == "ok"
    assert authz.verify(token) == "ok"  # from the cache
    store.set_disabled(TENANT, True)
    assert authz.poll()
    assert authz.verify(token) == "dynamic key names an unknown tenant"
    # A remote key set pushed to the holder afterwards rebuilds from the view without the disabled tenant.
    holder = authz.server.servicer.authorizer.holder
    holder.push(JwksSnapshot(holder.registry.remote_generation + 1, {}))
    assert authz.verify(token) == "dynamic key names an unknown tenant"
    store.set_disabled(TENANT, False)
    assert authz.poll()
    assert authz.verify(token) == "ok"


def test_a_rotation_with_no_grace_refuses_the_previous_secret_at_the_next_reload(
        setup: tuple[Authz, TenantStore]) -> None:
    authz, store = setup
    old = seed_key(FIRST)
    assert authz.verify(old) == "ok"
    store.rotate_secret(TENANT, PURPOSE_SEED, SECOND, grace_s=0.0)
    assert authz.poll()
    assert authz.verify(old) == "dynamic key signature is invalid"
    assert authz.verify(seed_key(SECOND)) == "ok"


def test_a_disable_takes_effect_while_the_config_cannot_be_served(tmp_path: Path) -> None:
    """Regression: a reload authz could not serve (here a file tenant's JWKS file broken) kept the running
    registry whole, so a tenant disabled meanwhile went on being served with its cached keys."""
    raw: dict[str, Any] = yaml.safe_load(write_config(tmp_path).read_text())
    jwks_file = tmp_path / "gamma.jwks.json"
    jwks_file.write_text('{"keys": []}')
    raw["tenants"].append({"id": "gamma", "jwks_file": str(jwks_file), "limits": {"models": ["deepseek-chat"]}})
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "data" / "admin").mkdir(parents=True, exist_ok=True)
    store = TenantStore(f"sqlite:///{tmp_path / 'data' / 'admin' / 'admin.db'}")
    try:
        store.put_tenant(TENANT, {"id": TENANT, "keys": [{"alg": "HS256", "secret_env": seed_marker(TENANT)}],
                                  "limits": {"models": ["deepseek-chat"], "max_tokens": 64}}, {PURPOSE_SEED: FIRST})
        authz = Authz(AuthzServer(AuthzOptions(config_path=str(path))))
        token = seed_key(FIRST)
        assert authz.verify(token) == "ok"
        jwks_file.write_text('{"keys": "not a list"}')  # every reload from now on is rejected
        assert authz.poll()
        assert authz.verify(token) == "ok"  # the last good config still serves
        store.set_disabled(TENANT, True)
        assert authz.poll()
        assert authz.verify(token) == "dynamic key names an unknown tenant"
        store.set_disabled(TENANT, False)  # enabling waits for a config authz can serve
        assert authz.poll()
        assert authz.verify(token) == "dynamic key names an unknown tenant"
        jwks_file.write_text('{"keys": []}')
        assert authz.poll()
        assert authz.verify(token) == "ok"
    finally:
        store.close()
