"""Tenant keys from a jwks_url: replaced on refresh (scheduled or on an unknown kid), size-capped,
bounded in time, kept when a fetch fails, shared across reloads, and never in the way of a Check."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import REGISTRY

from authz_service.server import AuthzOptions, AuthzServer
from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.remote_jwks import JwksFetchError, RemoteJwks, fetch_jwks, parse_document
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})


class JwksServer:
    """A local JWKS endpoint whose answer the test changes: document, status, size, hang, redirect."""

    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.status = 200
        self.fetches = 0
        self.endless = False  # stream a body that never ends, without content-length
        self.redirect_to: str | None = None
        self.cache_control: str | None = None
        self.hang = threading.Event()  # set: requests block until `release` is set
        self.release = threading.Event()
        self.hanging = threading.Event()  # set by the handler once a request is blocked
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                if outer.hang.is_set():
                    outer.hanging.set()
                    outer.release.wait(30)
                if outer.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("location", outer.redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if outer.endless:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    try:
                        self.wfile.write(b'{"keys": [')
                        while True:
                            self.wfile.write(b" " * 4096)
                    except OSError:  # the client hung up, as it should
                        return
                body = json.dumps(outer.document).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if outer.cache_control:
                    self.send_header("cache-control", outer.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.release.set()
    server.server.shutdown()


def remote_config(url: str, **tenant: object) -> DynasealConfig:
    return DynasealConfig.model_validate({"tenants": [{"id": "remote", "jwks_url": url,
                                                      "limits": {"models": ["m"]}, **tenant}]})


def token(key: SigningKey) -> str:
    return mint(key, tenant="remote", models=["m"], max_tokens=5, ttl=60)


def request(tok: str) -> AuthRequest:
    return AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {tok}"}, BODY)


def decide(authorizer: Authorizer, tok: str) -> str:
    return asyncio.run(authorizer.decide(request(tok))).code


def failures(tenant: str) -> float:
    return REGISTRY.get_sample_value("dynaseal_jwks_refreshes_total",
                                     {"tenant": tenant, "result": "failed"}) or 0.0


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
    for broken in ({"status": 500}, {"document": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]}},
                   {"document": {"nokeys": True}}):
        jwks.status = int(broken.get("status", 200))  # type: ignore[call-overload]
        jwks.document = broken.get("document", jwks.document)  # type: ignore[assignment]
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


def test_refreshed_keys_and_the_limiter_survive_a_reload(jwks: JwksServer) -> None:
    first, second = SigningKey.generate("r-1"), SigningKey.generate("r-2")
    jwks.document = {"keys": [first.public_jwk()]}
    store = RemoteJwks()
    cfg = remote_config(jwks.url)
    authorizer = Authorizer(build_registry(cfg, store))
    jwks.document = {"keys": [second.public_jwk()]}
    assert decide(authorizer, token(second)) == "ok"  # refreshed on the unknown kid
    assert jwks.fetches == 2

    reloaded = Authorizer(build_registry(cfg, store, fetch_new_jwks=False))  # a config reload
    assert decide(reloaded, token(second)) == "ok"
    assert decide(reloaded, token(first)) == "invalid_api_key"  # removed remotely, and stays removed
    assert decide(reloaded, token(SigningKey.generate("r-9"))) == "invalid_api_key"
    assert jwks.fetches == 2  # no fetch at the reload, and the limiter still holds


def test_a_new_jwks_url_on_reload_starts_from_no_keys(jwks: JwksServer) -> None:
    key = SigningKey.generate("r-1")
    jwks.document = {"keys": [key.public_jwk()]}
    store = RemoteJwks()
    authorizer = Authorizer(build_registry(remote_config(jwks.url), store))
    assert decide(authorizer, token(key)) == "ok"
    moved = Authorizer(build_registry(remote_config(jwks.base + "/other.json"), store, fetch_new_jwks=False))
    jwks.status = 404
    assert decide(moved, token(key)) == "invalid_api_key"


def test_the_authz_server_keeps_one_store_across_reloads(jwks: JwksServer, tmp_path: Path) -> None:
    first, second = SigningKey.generate("r-1"), SigningKey.generate("r-2")
    jwks.document = {"keys": [first.public_jwk()]}
    config = tmp_path / "dynaseal.yaml"
    raw = {"gateway": {"data_dir": str(tmp_path)}, "tenants": [
        {"id": "remote", "jwks_url": jwks.url, "limits": {"models": ["m"]}}]}
    config.write_text(yaml.safe_dump(raw))
    server = AuthzServer(AuthzOptions(str(config)))
    jwks.document = {"keys": [second.public_jwk()]}
    asyncio.run(server.remote_jwks.refresh("remote"))
    raw["tenants"][0]["name"] = "renamed"  # type: ignore[index]
    config.write_text(yaml.safe_dump(raw))
    server.reload()
    authorizer = server.servicer.authorizer
    assert authorizer.registry.get("remote").name == "renamed"  # type: ignore[union-attr]
    assert authorizer.registry.remote_jwks is server.remote_jwks
    fetches = jwks.fetches
    authorizer.quota = None  # no Redis here: the keys are what is under test
    assert decide(authorizer, token(second)) == "ok"
    assert jwks.fetches == fetches  # the reload fetched nothing: the refreshed set was kept
    assert decide(authorizer, token(first)) == "invalid_api_key"


def test_unreachable_jwks_at_load_refuses_until_it_answers() -> None:
    authorizer = Authorizer(build_registry(remote_config("http://127.0.0.1:1/jwks")))
    key = SigningKey.generate("r-9")
    assert decide(authorizer, token(key)) == "invalid_api_key"
    assert decide(authorizer, token(key)) == "invalid_api_key"


def test_reloads_under_load_never_stall_checks_while_a_jwks_fetch_hangs(jwks: JwksServer, tmp_path: Path) -> None:
    """SIGHUP-style reloads on the event loop, many Checks in flight, a JWKS fetch held by a slow server:
    every Check answers within a generous bound (the fetch is held for seconds), every reload applies."""
    import time

    remote, local = SigningKey.generate("r-1"), SigningKey.generate("l-1")
    jwks.document = {"keys": [remote.public_jwk()]}
    config = tmp_path / "dynaseal.yaml"
    local_tenant = {"id": "local", "keys": [{"kid": local.kid, "alg": "EdDSA", "public_jwk": local.public_jwk()}],
                    "limits": {"models": ["m"]}}

    def write(generation: int) -> None:
        tenants: list[dict[str, object]] = [
            {"id": "remote", "jwks_url": jwks.url, "limits": {"models": ["m"]}, "name": f"gen-{generation}"},
            local_tenant]
        if generation % 2:  # a jwks_url never fetched before: a reload must not fetch it on the loop
            tenants.append({"id": f"new-{generation}", "jwks_url": f"{jwks.base}/new-{generation}.json",
                            "limits": {"models": ["m"]}})
        config.write_text(yaml.safe_dump({"gateway": {"data_dir": str(tmp_path)}, "tenants": tenants}))

    write(0)
    server = AuthzServer(AuthzOptions(str(config)))
    server.quota = None  # type: ignore[assignment]  # no Redis: the decision path up to admission is measured
    server.servicer.authorizer.quota = None
    local_token = mint(local, tenant="local", models=["m"], max_tokens=5, ttl=60)
    jwks.hang.set()
    latencies: list[float] = []
    codes: set[str] = set()

    async def client(until: float) -> None:
        while time.monotonic() < until:
            started = time.perf_counter()
            decision = await server.servicer.authorizer.decide(request(local_token))
            latencies.append(time.perf_counter() - started)
            codes.add(decision.code)
            await asyncio.sleep(0)

    async def scenario() -> tuple[int, bool]:
        held = asyncio.create_task(server.remote_jwks.refresh("remote"))
        unknown = asyncio.create_task(server.servicer.authorizer.decide(request(token(SigningKey.generate("r-2")))))
        assert await asyncio.to_thread(jwks.hanging.wait, 10)
        until = time.monotonic() + 1.5
        clients = [asyncio.create_task(client(until)) for _ in range(8)]
        reloads = 0
        while time.monotonic() < until:
            reloads += 1
            write(reloads)
            server.reload()  # as the SIGHUP handler and the file watcher call it: on the event loop
            await asyncio.sleep(0.05)
        await asyncio.gather(*clients)
        still_held = not held.done() and not unknown.done()
        jwks.hang.clear()
        jwks.release.set()
        await held
        await unknown
        return reloads, still_held

    reloads, still_held = asyncio.run(scenario())
    assert still_held, "the JWKS fetch must still be held by the slow server while the Checks run"
    assert codes == {"ok"} and len(latencies) > 100
    assert server.servicer.authorizer.registry.get("remote").name == f"gen-{reloads}"  # type: ignore[union-attr]
    latencies.sort()
    # A blocked loop would hold Checks for the whole fetch (seconds); a reload costs a few ms.
    summary = (f"checks={len(latencies)} reloads={reloads} p50={latencies[len(latencies) // 2] * 1000:.2f} ms "
               f"p99={latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms max={latencies[-1] * 1000:.2f} ms")
    assert latencies[-1] < 0.5, summary
    print(summary)
