"""The original Dynaseal client (`client/request_side.py`) exactly as it talks, against the real stack.

Its wire behaviour: an OAuth2 form login by e-mail at the backend's `/api/v1/user/login` (with the
form fields FastAPI's docs fill in), `/api/v1/key/create` with the bearer, then the openai SDK on
`<llm server>/api/v1` with the dynamic key as its api key: `stream=True, max_tokens=100,
temperature=0.6, top_p=0.9`, no `stream_options`, reading `chunk.choices[0].delta.content` of every
chunk. The backend then stores the callback with the upstream's own usage.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import jwt_payload
from test_clients_sdks import stored_callback

from dynaseal.config import DynasealConfig

pytestmark = pytest.mark.integration

SEED_FORM = {"grant_type": "password", "scope": "", "client_id": "string", "client_secret": "string"}


@pytest.fixture(scope="module")
def urls(cfg: DynasealConfig, stack: object) -> tuple[str, str]:
    """(llm_server_url, backend_url)."""
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}", f"http://127.0.0.1:{cfg.gateway.ports.issuer}"


def request_side_stream(llm_server_url: str, key: str) -> tuple[str, int]:
    """The seed client's call, verbatim: returns (printed text, chunks read)."""
    client = openai.OpenAI(base_url=f"{llm_server_url}/api/v1", api_key=key, max_retries=0, timeout=30)
    response = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "Hello, who are you?"}],
        stream=True, max_tokens=100, temperature=0.6, top_p=0.9)
    text, chunks = [], 0
    for chunk in response:
        text.append(chunk.choices[0].delta.content or "")  # IndexError on a usage-only chunk
        chunks += 1
    return "".join(text), chunks


def check_billed(cfg: DynasealConfig, key: str, text: str) -> None:
    """The backend stored one callback for the key, with the upstream's usage of exactly this answer."""
    callback = stored_callback(cfg, str(jwt_payload(key)["jti"]))
    assert callback["usage_source"] == "upstream"
    assert callback["usage"]["completion_tokens"] == len(text.split())
    assert callback["tokens"] == callback["usage"]["total_tokens"]
    assert callback["content"] == text


def test_seed_request_side_exactly(urls: tuple[str, str], cfg: DynasealConfig) -> None:
    llm_server_url, backend_url = urls
    login = httpx.post(f"{backend_url}/api/v1/user/login",
                       data={"username": "client1@example.com", "password": "client1", **SEED_FORM})
    assert login.status_code == 200, login.text
    created = httpx.post(f"{backend_url}/api/v1/key/create",
                         headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert created.status_code == 200, created.text
    key = created.json()["token"]
    text, chunks = request_side_stream(llm_server_url, key)
    assert text.strip() and chunks > 2
    check_billed(cfg, key, text)


def test_seed_request_side_stream_with_an_issued_key(urls: tuple[str, str], cfg: DynasealConfig) -> None:
    """The same call with a key from the backend's root layout (username login)."""
    llm_server_url, backend_url = urls
    login = httpx.post(f"{backend_url}/user/login", data={"username": "client1", "password": "client1", **SEED_FORM})
    assert login.status_code == 200, login.text
    key = httpx.post(f"{backend_url}/key/create",
                     headers={"Authorization": f"Bearer {login.json()['access_token']}"}).json()["token"]
    text, chunks = request_side_stream(llm_server_url, key)
    assert text.strip() and chunks > 2
    check_billed(cfg, key, text)
