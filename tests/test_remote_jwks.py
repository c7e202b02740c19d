"""Tenant keys from a jwks_url: replaced on refresh (scheduled or on an unknown kid), size-capped,
bounded in time, kept when a fetch fails, and never in the way of a Check."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from jwks_support import JwksServer, decide, failures, remote_config, request, token

from dynaseal.keys.mint import SigningKey
from dynaseal.keys.remote_jwks import JwksFetchError, RemoteJwks, fetch_jwks, parse_document
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer


def test_rotation_at_the_jwks_url_is_picked_up_once(jwks: JwksServer) -> None:
    first, second = SigningKey.generate("r-1"), SigningKey.generate("r-2")
    jwks.document = {"keys": [first.public_jwk()]}
    authorizer = Authorizer(build_registry(remote_config(jwks.url)))
    assert jwks.fetches == 1
    assert decide(authorizer, token(first)) == "ok"

    jwks.document = {"keys": [first.public_jwk(), second.public_jwk()]}  # the tenant rotates
    assert decide(authorizer, token(second)) == "ok"
    assert jwks.fetches == 2

    forged = SigningKey.generate("r-3")  # unknown kids: at most one refresh per interval
    for _ in range(5):
        assert decide(authorizer, token(forged)) == "invalid_api_key"
    assert jwks.fetches == 2


def test_a_kid_removed_remotely_stops_verifying_after_the_refresh(jwks: JwksServer) -> None:
    old, new = SigningKey.generate("old-1"), SigningKey.generate("new-1")
    jwks.document = {"keys": [old.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    old_token = token(old)
    assert decide(authorizer, old_token) == "ok"  # now cached as verified

    jwks.document = {"keys": [new.public_jwk()]}  # the tenant withdraws `old`
    asyncio.run(store.refresh("remote"))  # what the schedule does
    assert decide(authorizer, old_token) == "invalid_api_key"  # the cached verification is gone too
    assert decide(authorizer, token(new)) == "ok"
    assert [k.kid for k in store.keys_for("remote")] == ["new-1"]


def test_remote_set_replaces_but_local_keys_stay(jwks: JwksServer, tmp_path: Path) -> None:
    local, remote = SigningKey.generate("local-1"), SigningKey.generate("remote-1")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [local.public_jwk()]}))
    # The remote server also publishes a different key under the operator's kid: it must not win.
    impostor = SigningKey.generate("local-1")
    jwks.document = {"keys": [remote.public_jwk(), impostor.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url, jwks_file=str(jwks_file)), store))
    assert decide(authorizer, token(local)) == "ok"
    assert decide(authorizer, token(remote)) == "ok"
    assert decide(authorizer, token(impostor)) == "invalid_api_key"

    jwks.document = {"keys": []}
    asyncio.run(store.refresh("remote"))
    assert decide(authorizer, token(remote)) == "invalid_api_key"
    assert decide(authorizer, token(local)) == "ok"


def test_the_schedule_refreshes_without_any_request(jwks: JwksServer) -> None:
    first, second = SigningKey.generate("s-1"), SigningKey.generate("s-2")
    jwks.document = {"keys": [first.public_jwk()]}
    store = RemoteJwks(min_interval_s=0.05)
    store.track({"remote": (jwks.url, 0.1)})

    async def scenario() -> list[str | None]:
        runner = asyncio.create_task(store.run(tick_s=0.02))
        try:
            for _ in range(500):
                if store.keys_for("remote"):
                    break
                await asyncio.sleep(0.01)
            jwks.document = {"keys": [second.public_jwk()]}
            seen = [k.kid for k in store.keys_for("remote")]
            for _ in range(500):
                if [k.kid for k in store.keys_for("remote")] == ["s-2"]:
                    break
                await asyncio.sleep(0.01)
            return seen + [k.kid for k in store.keys_for("remote")]
        finally:
            runner.cancel()

    assert asyncio.run(scenario()) == ["s-1", "s-2"]


def test_a_max_age_brings_the_next_fetch_forward_within_bounds() -> None:
    assert parse_document(b'{"keys": []}', "public, max-age=30").max_age_s == 30
    assert parse_document(b'{"keys": []}', "no-store").max_age_s == 0
    assert parse_document(b'{"keys": []}', "max-age=abc").max_age_s is None
    assert parse_document(b'{"keys": []}', None).max_age_s is None


def test_a_failed_fetch_keeps_the_last_good_set(jwks: JwksServer) -> None:
    key = SigningKey.generate("k-1")
    jwks.document = {"keys": [key.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    before = failures("remote")
    broken: Any
    for broken in ({"status": 500}, {"document": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}},
                   {"document": {"nokeys": True}}):
        jwks.status = int(broken.get("status", 200))
        jwks.document = broken.get("document", jwks.document)
        asyncio.run(store.refresh("remote"))
        assert [k.kid for k in store.keys_for("remote")] == ["k-1"]
        assert decide(authorizer, token(key)) == "ok"
    assert failures("remote") == before + 3


def test_an_oversized_body_is_refused_and_the_old_set_kept(jwks: JwksServer) -> None:
    key = SigningKey.generate("k-1")
    jwks.document = {"keys": [key.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    # Declared too large: refused from the header.
    jwks.document = {"keys": [key.public_jwk()], "padding": "x" * 70_000}
    with pytest.raises(JwksFetchError, match="above"):
        fetch_jwks(jwks.url)
    asyncio.run(store.refresh("remote"))
    assert decide(authorizer, token(key)) == "ok"
    # An endless body with no length: refused while reading, not after (it would never end).
    jwks.endless = True
    with pytest.raises(JwksFetchError, match="above"):
        fetch_jwks(jwks.url, timeout_s=5, deadline_s=20)
    asyncio.run(store.refresh("remote"))
    assert [k.kid for k in store.keys_for("remote")] == ["k-1"]
    assert decide(authorizer, token(key)) == "ok"


def test_only_http_urls_and_no_redirect_to_another_scheme(jwks: JwksServer) -> None:
    for bad in ("file:///etc/passwd", "ftp://example.com/jwks", "127.0.0.1/jwks", "http:///nohost"):
        with pytest.raises(ValueError, match="jwks_url"):
            remote_config(bad)
        with pytest.raises(JwksFetchError):
            fetch_jwks(bad)
    jwks.redirect_to = "file:///etc/passwd"
    with pytest.raises(JwksFetchError, match="http"):
        fetch_jwks(jwks.url)
    jwks.redirect_to = jwks.url  # a loop
    with pytest.raises(JwksFetchError, match="redirects"):
        fetch_jwks(jwks.url)


def test_a_same_scheme_redirect_is_followed(jwks: JwksServer) -> None:
    key = SigningKey.generate("k-1")
    target = JwksServer()
    try:
        target.document = {"keys": [key.public_jwk()]}
        jwks.redirect_to = target.url
        assert [k.kid for k in fetch_jwks(jwks.url).keys] == ["k-1"]
    finally:
        target.server.shutdown()
        target.server.server_close()


def test_a_hanging_jwks_server_does_not_delay_checks(jwks: JwksServer) -> None:
    cached, unknown = SigningKey.generate("k-1"), SigningKey.generate("k-2")
    jwks.document = {"keys": [cached.public_jwk()]}
    store = RemoteJwks(min_interval_s=0, timeout_s=30, deadline_s=30)
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    jwks.hang.set()

    async def scenario() -> tuple[str, bool, str]:
        # Two fetches stall on the server: the schedule's, and the one an unknown kid asks for.
        scheduled = asyncio.create_task(store.refresh("remote"))
        stalled_check = asyncio.create_task(authorizer.decide(request(token(unknown))))
        assert await asyncio.to_thread(jwks.hanging.wait, 10)
        decision = await asyncio.wait_for(authorizer.decide(request(token(cached))), 10)
        still_hanging = not scheduled.done() and not stalled_check.done()
        jwks.hang.clear()
        jwks.release.set()
        await scheduled
        return decision.code, still_hanging, (await stalled_check).code

    assert asyncio.run(scenario()) == ("ok", True, "invalid_api_key")



def test_unreachable_jwks_at_load_refuses_until_it_answers() -> None:
    authorizer = Authorizer(build_registry(remote_config("http://127.0.0.1:1/jwks")))
    key = SigningKey.generate("r-9")
    assert decide(authorizer, token(key)) == "invalid_api_key"
    assert decide(authorizer, token(key)) == "invalid_api_key"


