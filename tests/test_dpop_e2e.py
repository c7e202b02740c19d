"""Sender-constrained keys through the real Envoy + authz + Redis (only the LLM is a mock).

A bound key lifted from a device is worthless: without the device's private key no proof can be
made, and a proof captured with a request is good for that request only (method, URL, key, now, once).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import DEMO_TENANT

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import DpopAuth, HolderKey, SigningKey, mint

pytestmark = pytest.mark.integration
BODY: dict[str, Any] = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}],
                        "max_tokens": 20}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


@pytest.fixture(scope="module")
def mock_url(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


def bound(issuer_key: SigningKey, holder: HolderKey, **claims: object) -> str:
    return mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300,
                cnf=holder.cnf_jkt(), **claims)  # type: ignore[arg-type]


def post(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, headers=headers, json=BODY, timeout=30)


def assert_dpop_refused(reply: httpx.Response) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "invalid_dpop_proof"
    assert reply.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')


def test_a_bound_key_without_its_proof_is_refused(gw: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound(issuer_key, holder)
    assert_dpop_refused(post(gw, {"authorization": f"Bearer {key}"}))
    assert_dpop_refused(post(gw, {"authorization": f"DPoP {key}"}))
    assert_dpop_refused(post(gw, {"dynasealtoken": key}))


def test_a_proof_for_anything_else_is_refused(gw: str, issuer_key: SigningKey) -> None:
    holder, thief = HolderKey.generate(), HolderKey.generate()
    key = bound(issuer_key, holder)
    other_key = bound(issuer_key, holder)
    base = gw.rsplit("/v1/", 1)[0]
    for what, proof in {
        "another method": holder.proof("PUT", gw, key),
        "another path": holder.proof("POST", f"{base}/client-side/chat/completions", key),
        "another host": holder.proof("POST", gw.replace("127.0.0.1", "localhost"), key),
        "another key": holder.proof("POST", gw, other_key),
        "another device": thief.proof("POST", gw, key),
        "an old iat": holder.proof("POST", gw, key, now=time.time() - 300),
    }.items():
        reply = post(gw, {"authorization": f"DPoP {key}", "dpop": proof})
        assert reply.status_code == 401, what
        assert_dpop_refused(reply)


def test_a_valid_proof_passes_and_never_reaches_the_upstream(gw: str, mock_url: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate("ES256")
    key = bound(issuer_key, holder)
    httpx.delete(f"{mock_url}/_mock/requests")
    headers = holder.headers(key, "POST", gw)
    reply = post(gw, headers)
    assert reply.status_code == 200, reply.text
    (received,) = httpx.get(f"{mock_url}/_mock/requests").json()
    names = {k.lower() for k in received["headers"]}
    assert "dpop" not in names and headers["dpop"] not in str(received) and key not in str(received)


def test_a_replayed_proof_is_refused(gw: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound(issuer_key, holder)
    headers = holder.headers(key, "POST", gw)
    assert post(gw, headers).status_code == 200
    assert_dpop_refused(post(gw, headers))
    assert post(gw, holder.headers(key, "POST", gw)).status_code == 200  # a fresh proof is fine


def test_concurrent_replays_admit_at_most_one(gw: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound(issuer_key, holder)
    headers = holder.headers(key, "POST", gw)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(*(client.post(gw, headers=headers, json=BODY) for _ in range(25)))
        return [r.status_code for r in replies]
    statuses = asyncio.run(burst())
    assert statuses.count(200) == 1 and statuses.count(401) == 24, statuses


def test_the_openai_sdk_works_with_a_bound_key(cfg: DynasealConfig, gw: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound(issuer_key, holder)
    client = openai.OpenAI(base_url=gw.rsplit("/chat/", 1)[0], api_key="unused", max_retries=0,
                           http_client=httpx.Client(auth=DpopAuth(holder, key), timeout=30))  # type: ignore[arg-type]  # httpx2.Client in the stub
    for _ in range(2):  # a new proof each time
        reply = client.chat.completions.create(model="deepseek-chat", messages=BODY["messages"], max_tokens=5)
        assert reply.usage is not None
    with pytest.raises(openai.AuthenticationError):  # the same key, lifted, in a plain SDK
        openai.OpenAI(base_url=gw.rsplit("/chat/", 1)[0], api_key=key, max_retries=0).chat.completions.create(
            model="deepseek-chat", messages=BODY["messages"], max_tokens=5)


def test_the_issuer_mints_bound_keys(cfg: DynasealConfig, gw: str, stack: object) -> None:
    issuer = f"http://127.0.0.1:{cfg.gateway.ports.issuer}"
    login = httpx.post(f"{issuer}/user/login", data={"username": "client1", "password": "client1"})
    auth = {"authorization": f"Bearer {login.json()['access_token']}"}
    holder = HolderKey.generate()
    by_jkt = httpx.post(f"{issuer}/key/create", headers=auth, json={"dpop_jkt": holder.jkt()})
    assert by_jkt.status_code == 200, by_jkt.text
    assert by_jkt.json()["scope"]["cnf"] == {"jkt": holder.jkt()}
    # RFC 9449 §10 style: the proof on the minting request names the key to bind to.
    url = f"{issuer}/key/create"
    by_proof = httpx.post(url, headers={**auth, "dpop": holder.proof("POST", url)}, json={"max_tokens": 20})
    assert by_proof.status_code == 200, by_proof.text
    for created in (by_jkt, by_proof):
        key = created.json()["token"]
        assert post(gw, holder.headers(key, "POST", gw)).status_code == 200
        assert_dpop_refused(post(gw, {"authorization": f"Bearer {key}"}))
    bad = httpx.post(url, headers={**auth, "dpop": holder.proof("POST", f"{issuer}/elsewhere")})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_dpop_proof")
    replay = httpx.post(url, headers={**auth, "dpop": by_proof.request.headers["dpop"]})
    assert (replay.status_code, replay.json()["error"]["code"]) == (400, "invalid_dpop_proof")
    mismatch = httpx.post(url, headers={**auth, "dpop": holder.proof("POST", url)},
                          json={"dpop_jkt": HolderKey.generate().jkt()})
    assert mismatch.status_code == 400
