"""The seed's flow exactly as it documents it, plus revocation through the issuer, on the real stack."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import jwt_payload

from dynaseal.config import DynasealConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def urls(cfg: DynasealConfig, stack: object) -> tuple[str, str]:
    """(llm_server_url, backend_url) as the seed names them."""
    return (f"http://127.0.0.1:{cfg.gateway.ports.envoy}", f"http://127.0.0.1:{cfg.gateway.ports.issuer}")


def login_and_create_key(backend_url: str, username: str = "client1") -> str:
    """backend_url/user/login then backend_url/key/create, as the seed's client does."""
    login = httpx.post(f"{backend_url}/user/login", data={"username": username, "password": username})
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert set(tokens) >= {"access_token", "refresh_token", "token_type"}
    created = httpx.post(f"{backend_url}/key/create", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert created.status_code == 200, created.text
    return str(created.json()["token"])


def test_seed_flow_with_dynasealtoken(urls: tuple[str, str]) -> None:
    llm_server_url, backend_url = urls
    key = login_and_create_key(backend_url)
    reply = httpx.post(f"{llm_server_url}/client-side/chat/completions", headers={"dynasealtoken": key},
                       json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello"}],
                             "max_tokens": 32, "stream": True, "stream_options": {"include_usage": True}},
                       timeout=10)
    assert reply.status_code == 200, reply.text
    events = [line for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][len("data: "):])["usage"]
    # The backend then receives and stores the signed callback (seed fields: event_id, content, tokens).
    jti = str(jwt_payload(key)["jti"])
    stored = wait_for_callback(backend_url, jti)
    assert stored is not None, "the callback never reached the backend"
    assert stored["tokens"] == usage["total_tokens"]
    assert stored["event_id"] == jti  # keys from /key/create use their jti as event_id
    assert stored["content"]


def wait_for_callback(backend_url: str, jti: str, timeout_s: float = 30) -> dict[str, object] | None:
    """Poll GET /usage as the tenant account until the key's callback is stored."""
    login = httpx.post(f"{backend_url}/user/login", data={"username": "user1", "password": "user1"}).json()
    auth = {"Authorization": f"Bearer {login['access_token']}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        items = httpx.get(f"{backend_url}/usage", params={"jti": jti}, headers=auth).json()["items"]
        if items:
            return dict(items[0])
        time.sleep(0.2)
    return None


def test_openai_sdk_flow_with_issued_key(urls: tuple[str, str]) -> None:
    llm_server_url, backend_url = urls
    key = login_and_create_key(backend_url)
    client = openai.OpenAI(base_url=f"{llm_server_url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=16)
    assert reply.usage is not None and reply.usage.completion_tokens <= 16


def test_revocation_takes_effect_on_the_next_request(urls: tuple[str, str]) -> None:
    llm_server_url, backend_url = urls
    login = httpx.post(f"{backend_url}/user/login", data={"username": "client1", "password": "client1"}).json()
    auth = {"Authorization": f"Bearer {login['access_token']}"}
    key = httpx.post(f"{backend_url}/key/create", headers=auth).json()["token"]
    client = openai.OpenAI(base_url=f"{llm_server_url}/v1", api_key=key, max_retries=0)
    body: Any = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    client.chat.completions.create(**body)  # works, and is now in the verified-key cache
    revoked = httpx.post(f"{backend_url}/key/revoke", headers=auth, json={"jti": jwt_payload(key)["jti"]})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["gateway_notified"] is True
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(**body)
    assert err.value.code == "revoked_key"
