"""Tenants as data without a stack: the store, how it overlays the file, secret files, rotation signing."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from standardwebhooks import Webhook, WebhookVerificationError

from dynaseal.config import ConfigError, bundled_dev_config, load_config
from dynaseal.keys.mint import mint_seed_key
from dynaseal.keys.tenants import build_registry
from dynaseal.keys.verification import verify_token
from dynaseal.secrets import use_stored_secrets
from dynaseal.tenancy.overlay import Tenancy, callback_marker, overlay, seed_marker
from dynaseal.tenancy.source import TenancySource
from dynaseal.tenancy.store import PURPOSE_CALLBACK, PURPOSE_SEED, TenantStore
from dynaseal.usage.callbacks import CallbackSigner

DEMO = "671249a93f1cf2f8bf9b2b82"
OLD_HOOK = "whsec_" + base64.b64encode(b"old-webhook-secret-0123456789").decode()
BETA = "beta-secret-0123456789-padded-to-32-bytes-x"
FIRST = "first-added-secret-0123-padded-to-32-bytes-x"
ROTATED = "rotated-secret-0123456-padded-to-32-bytes-x"
HOOKED = "hooked-secret-0123456-padded-to-32-bytes-x"
MOUNTED_ONE = "mounted-secret-one-0123-padded-to-32-bytes-x"
MOUNTED_TWO = "mounted-secret-two-01234567-padded-to-32-bytes-x"
T_ONE = "t-secret-0123456789-padded-to-32-bytes-x"
T_TWO = "t-secret-two-0123456-padded-to-32-bytes-x"
NEW_HOOK = "whsec_" + base64.b64encode(b"new-webhook-secret-0123456789").decode()


def write_config(tmp_path: Path, **changes: Any) -> Path:
    """The bundled dev config in tmp_path (its store there too), with top-level `changes`."""
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw.update(changes)
    raw["tenants"][0].pop("jwks_file", None)  # no issuer keys in these tests
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stored_tenant(tenant_id: str, **extra: Any) -> dict[str, Any]:
    """A store tenant document, as the admin API stores it (the seed secret by store reference)."""
    return {"id": tenant_id, "keys": [{"alg": "HS256", "secret_env": seed_marker(tenant_id)}],
            "limits": {"models": ["deepseek-chat"], "max_tokens": 64}, **extra}


def effective_at(source: TenancySource, store: TenantStore, moment: float) -> Tenancy:
    """The effective config at another moment (a grace period over), its stored secrets made resolvable."""
    tenancy = overlay(load_config(source.config_path), store.snapshot(), moment)
    use_stored_secrets(tenancy.secrets)
    return tenancy


@pytest.fixture
def source(tmp_path: Path) -> TenancySource:
    """A tenancy source over a fresh store."""
    return TenancySource(write_config(tmp_path))


def test_a_stored_tenant_joins_the_file_tenants_and_its_secret_verifies(source: TenancySource) -> None:
    before = source.load()
    store = source.store(before.cfg)
    assert store is not None
    generation = store.put_tenant("beta", stored_tenant("beta"), {PURPOSE_SEED: BETA})
    assert generation == before.generation + 1
    assert source.changed()
    after = source.load()
    assert after.generation == generation
    assert [t.id for t in after.cfg.tenants] == [DEMO, "beta"]
    registry = build_registry(after.cfg, fetch_new_jwks=False)
    token = mint_seed_key("beta", BETA, model="deepseek-chat", max_tokens=16, ttl=60,
                          event_id="e1")
    assert verify_token(token, registry).tenant.id == "beta"


def test_the_store_cannot_shadow_a_file_tenant(source: TenancySource) -> None:
    cfg = source.load().cfg
    store = source.store(cfg)
    assert store is not None
    store.put_tenant(DEMO, stored_tenant(DEMO, limits={"models": ["gpt-4o"], "max_tokens": 1}), {})
    demo = next(t for t in source.load().cfg.tenants if t.id == DEMO)
    assert demo.limits.max_tokens == 1024  # the file's, not the store's


def test_seed_secrets_rotate_with_a_grace_period_for_the_previous_ones(source: TenancySource) -> None:
    cfg = source.load().cfg
    store = source.store(cfg)
    assert store is not None
    store.put_tenant(DEMO, None, {PURPOSE_SEED: FIRST})
    tenancy = source.load()
    registry = build_registry(tenancy.cfg, fetch_new_jwks=False)
    for secret in ("4d72c063-881f-45fa-85ab-3375c84f5dd7", FIRST):
        token = mint_seed_key(DEMO, secret, model="deepseek-chat", max_tokens=16, ttl=60, event_id="e")
        assert verify_token(token, registry).tenant.id == DEMO
    store.rotate_secret(DEMO, PURPOSE_SEED, ROTATED, grace_s=0.0, retire_file_seed=True)
    later = effective_at(source, store, time.time() + 1)
    registry = build_registry(later.cfg, fetch_new_jwks=False)
    fresh = mint_seed_key(DEMO, ROTATED, model="deepseek-chat", max_tokens=16, ttl=60, event_id="e")
    assert verify_token(fresh, registry).tenant.id == DEMO
    for retired in ("4d72c063-881f-45fa-85ab-3375c84f5dd7", FIRST):
        token = mint_seed_key(DEMO, retired, model="deepseek-chat", max_tokens=16, ttl=60, event_id="e")
        with pytest.raises(Exception, match="signature is invalid"):
            verify_token(token, registry)


def test_a_webhook_rotation_signs_with_both_secrets_until_the_grace_period_ends(tmp_path: Path) -> None:
    source = TenancySource(write_config(tmp_path))
    cfg = source.load().cfg
    store = source.store(cfg)
    assert store is not None
    store.put_tenant("hooked", stored_tenant("hooked", callback={
        "url": "http://127.0.0.1:9/cb", "secret_env": callback_marker("hooked")}),
        {PURPOSE_SEED: HOOKED, PURPOSE_CALLBACK: OLD_HOOK})
    store.rotate_secret("hooked", PURPOSE_CALLBACK, NEW_HOOK, grace_s=60)
    tenancy = source.load()
    callback = next(t for t in tenancy.cfg.tenants if t.id == "hooked").callback
    assert callback is not None and callback.previous_secret_envs
    assert tenancy.next_change_at is not None  # the grace period's end reloads the services
    from dynaseal.runtime.views import Runtime

    target = Runtime.from_config(tenancy.cfg).consumer().targets["hooked"]
    assert target.callback_secret is not None
    signer = CallbackSigner.from_secret(target.callback_secret.get_secret_value(),
                                        tuple(s.get_secret_value() for s in target.previous_secrets))
    headers = signer.headers("req-1", b'{"a": 1}')
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (OLD_HOOK, NEW_HOOK):  # a receiver holding either verifies
        assert Webhook(secret).verify(b'{"a": 1}', headers) == {"a": 1}
    after = effective_at(source, store, time.time() + 61)
    callback = next(t for t in after.cfg.tenants if t.id == "hooked").callback
    assert callback is not None and callback.previous_secret_envs == ()
    target = Runtime.from_config(after.cfg).consumer().targets["hooked"]
    assert target.callback_secret is not None
    headers = CallbackSigner.from_secret(target.callback_secret.get_secret_value()).headers("r", b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_HOOK).verify(b"{}", headers)


def test_a_stored_tenant_the_file_validators_refuse_is_left_out_naming_it(source: TenancySource) -> None:
    cfg = source.load().cfg
    store = source.store(cfg)
    assert store is not None
    store.put_tenant("beta", stored_tenant("beta"), {PURPOSE_SEED: BETA})
    store.put_tenant("bad", {"id": "bad", "keys": [], "limits": {}}, {})
    # One bad row must not stop every service (a restarted one would have no last good config to keep).
    tenancy = source.load()
    assert {t.id for t in tenancy.cfg.tenants} == {DEMO, "beta"}
    assert "stored tenant bad" in tenancy.quarantined["bad"]


def test_a_file_change_a_stored_tenant_no_longer_fits_leaves_only_that_tenant_out(tmp_path: Path) -> None:
    upstreams = [{"name": "first", "base_url": "http://127.0.0.1:9/v1"}]
    source = TenancySource(write_config(tmp_path, gateway={
        **yaml.safe_load(bundled_dev_config().read_text())["gateway"], "data_dir": str(tmp_path / "data"),
        "upstreams": upstreams}))
    store = source.store(source.load().cfg)
    assert store is not None
    routed = {"routes": [{"model": "*", "upstreams": ["first"]}]}
    store.put_tenant("routed", stored_tenant("routed", upstream=routed), {PURPOSE_SEED: T_ONE})
    store.put_tenant("beta", stored_tenant("beta"), {PURPOSE_SEED: BETA})
    assert {t.id for t in source.load().cfg.tenants} == {DEMO, "routed", "beta"}
    raw = yaml.safe_load(Path(str(source.config_path)).read_text())
    raw["gateway"]["upstreams"] = [{"name": "second", "base_url": "http://127.0.0.1:9/v1"}]
    Path(str(source.config_path)).write_text(yaml.safe_dump(raw, sort_keys=False))
    tenancy = source.load()
    assert {t.id for t in tenancy.cfg.tenants} == {DEMO, "beta"}
    assert set(tenancy.quarantined) == {"routed"} and "first" in tenancy.quarantined["routed"]


def test_a_malformed_callback_url_is_refused_at_load(tmp_path: Path) -> None:
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["tenants"][0]["callback"]["url"] = "htp:/127.0.0.1:9000/v1/callback/usage"
    path = write_config(tmp_path, tenants=raw["tenants"])
    with pytest.raises(ConfigError, match=r"callback url 'htp:/127\.0\.0\.1"):
        load_config(path)


def test_secrets_from_mounted_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    secret_file = tmp_path / "seed-secret"
    secret_file.write_text(MOUNTED_ONE + "\n")
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["tenants"][0]["keys"] = [{"alg": "HS256", "secret_file": str(secret_file)}]
    source = TenancySource(write_config(tmp_path, tenants=raw["tenants"]))
    tenancy = source.load()
    source.accept(tenancy)
    registry = build_registry(tenancy.cfg, fetch_new_jwks=False)
    one = mint_seed_key(DEMO, MOUNTED_ONE, model="deepseek-chat", max_tokens=16, ttl=60, event_id="e")
    assert verify_token(one, registry).tenant.id == DEMO
    assert not source.changed()
    secret_file.write_text(MOUNTED_TWO + "\n")  # a Kubernetes Secret update (another size)
    assert source.changed()
    registry = build_registry(source.load().cfg, fetch_new_jwks=False)
    two = mint_seed_key(DEMO, MOUNTED_TWO, model="deepseek-chat", max_tokens=16, ttl=60,
                        event_id="e")
    assert verify_token(two, registry).tenant.id == DEMO
    secret_file.unlink()
    with pytest.raises(ConfigError, match=r"secret file .*seed-secret cannot be read"):
        build_registry(source.load().cfg, fetch_new_jwks=False)


def test_the_store_generation_is_one_counter_for_every_write(tmp_path: Path) -> None:
    store = TenantStore(f"sqlite:///{tmp_path / 'admin.db'}")
    assert store.generation() == 0
    assert store.put_tenant("t", stored_tenant("t"), {PURPOSE_SEED: T_ONE}) == 1
    assert store.set_disabled("t", True) == 2
    assert store.rotate_secret("t", PURPOSE_SEED, T_TWO, 10) == 3
    snapshot = store.snapshot()
    assert snapshot.generation == 3 and snapshot.tenants["t"].disabled
    # A second handle (another service) sees the same generation.
    assert TenantStore(f"sqlite:///{tmp_path / 'admin.db'}").generation() == 3


def test_a_file_tenants_mounted_webhook_secret_keeps_signing_during_a_store_rotation(tmp_path: Path) -> None:
    hook_file = tmp_path / "webhook-secret"
    hook_file.write_text(OLD_HOOK + "\n")
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["tenants"][0]["callback"] = {"url": "http://127.0.0.1:9/cb", "secret_file": str(hook_file)}
    source = TenancySource(write_config(tmp_path, tenants=raw["tenants"]))
    store = source.store(source.load().cfg)
    assert store is not None
    store.rotate_secret(DEMO, PURPOSE_CALLBACK, NEW_HOOK, grace_s=60)
    from dynaseal.runtime.views import Runtime

    target = Runtime.from_config(source.load().cfg).consumer().targets[DEMO]
    assert target.callback_secret is not None
    assert [s.get_secret_value() for s in target.previous_secrets] == [OLD_HOOK]
    assert target.callback_secret.get_secret_value() == NEW_HOOK
