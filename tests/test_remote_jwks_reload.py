"""Remote JWKS across config reloads: refreshed keys and the limiter survive, and a reload never
stalls a Check while a fetch hangs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from jwks_support import JwksServer, decide, remote_config, request, token

from authz_service.server import AuthzOptions, AuthzServer
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.remote_jwks import RemoteJwks
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer


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




def test_reloads_under_load_never_stall_checks_while_a_jwks_fetch_hangs(jwks: JwksServer, tmp_path: Path) -> None:
    """SIGHUP-style reloads on the event loop, many Checks in flight, a JWKS fetch held by a slow server:
    every Check answers within a generous bound (the fetch is held for seconds), every reload applies."""
    import time

    remote, local = SigningKey.generate("r-1"), SigningKey.generate("l-1")
    jwks.document = {"keys": [remote.public_jwk()]}
    config = tmp_path / "dynaseal.yaml"
    local_tenant: dict[str, object] = {
        "id": "local", "keys": [{"kid": local.kid, "alg": "EdDSA", "public_jwk": local.public_jwk()}],
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
