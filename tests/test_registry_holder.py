"""The remote JWKS store pushes each new key set to the registry holders that follow it; the Authorizer
only reads what its holder has in force and never rebuilds its own registry."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from jwks_support import JwksServer, decide, remote_config, token

from dynaseal.keys.mint import SigningKey
from dynaseal.keys.registry_holder import RegistryHolder
from dynaseal.keys.remote_jwks import RemoteJwks
from dynaseal.keys.tenants import Registry, build_registry
from dynaseal.policy.authorizer import Authorizer


def test_a_refresh_is_pushed_to_the_holder_before_any_request(jwks: JwksServer) -> None:
    old, new = SigningKey.generate("old-1"), SigningKey.generate("new-1")
    jwks.document = {"keys": [old.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    before = authorizer.registry
    assert decide(authorizer, token(old)) == "ok"  # cached from here on

    jwks.document = {"keys": [new.public_jwk()]}
    asyncio.run(store.refresh("remote"))  # a scheduled refresh, no request in between
    pushed = authorizer.registry
    # Regression: the authorizer used to notice only at its next request, and rebuild its registry itself.
    assert pushed is not before and pushed.remote_generation == store.generation
    tenant = pushed.get("remote")
    assert tenant is not None and set(tenant.keys_by_kid) == {"new-1"}
    assert before.get("remote").keys_by_kid.keys() == {"old-1"}  # type: ignore[union-attr]  # values stay values
    assert decide(authorizer, token(old)) == "invalid_api_key"  # the cache went with the old registry
    assert decide(authorizer, token(new)) == "ok"


def test_the_authorizer_cannot_swap_its_registry(jwks: JwksServer) -> None:
    jwks.document = {"keys": [SigningKey.generate("k-1").public_jwk()]}
    authorizer = Authorizer(build_registry(remote_config(jwks.url), RemoteJwks()))
    with pytest.raises(AttributeError):
        authorizer.registry = authorizer.registry  # type: ignore[misc]
    assert not hasattr(authorizer, "_adopt_remote_keys")


def test_every_holder_of_the_store_is_told_and_a_dropped_one_is_forgotten(jwks: JwksServer) -> None:
    key = SigningKey.generate("k-1")
    jwks.document = {"keys": []}
    store = RemoteJwks()
    cfg = remote_config(jwks.url)
    current = RegistryHolder(build_registry(cfg, store), cache_size=8)
    dropped = RegistryHolder(build_registry(cfg, store, fetch_new_jwks=False), cache_size=8)  # an old reload's
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None, "the store must not keep a dropped holder (and its registry) alive"

    jwks.document = {"keys": [key.public_jwk()]}
    asyncio.run(store.refresh("remote"))
    tenant = current.registry.get("remote")
    assert tenant is not None and "k-1" in tenant.keys_by_kid
    assert current.keys.registry is current.registry


def test_a_holder_made_after_a_change_starts_from_the_latest_snapshot(jwks: JwksServer) -> None:
    key = SigningKey.generate("k-1")
    jwks.document = {"keys": []}
    store = RemoteJwks()
    stale: Registry = build_registry(remote_config(jwks.url), store)
    jwks.document = {"keys": [key.public_jwk()]}
    asyncio.run(store.refresh("remote"))
    holder = RegistryHolder(stale)  # built from a registry older than the store
    tenant = holder.registry.get("remote")
    assert tenant is not None and "k-1" in tenant.keys_by_kid
    assert holder.registry.remote_generation == store.generation


def test_a_registry_without_remote_keys_is_held_as_it_is() -> None:
    registry = Registry({}, "dynaseal", 30, None)
    holder = RegistryHolder(registry)
    assert holder.registry is registry and holder.store is None
    assert asyncio.run(holder.refresh_for_unknown_kid("nobody")) is False
