"""End to end through the real Envoy + authz + mock upstream, with the official openai SDK."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import DEMO_SECRET, DEMO_TENANT, PROVIDER_KEY
from openai.types.chat import ChatCompletionMessageParam

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint, mint_seed_key

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me something about the edge of the network."}]


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    """Base URL of Envoy's OpenAI-compatible API."""
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}"


@pytest.fixture(scope="module")
def mock_url(cfg: DynasealConfig, stack: object) -> str:
    """Base URL of the mock upstream (for its request recording)."""
    return f"http://127.0.0.1:{cfg.local.mock_upstream_port}"


def demo_key(signing_key: SigningKey, **overrides: object) -> str:
    """A native dynamic key for the demo tenant."""
    claims: dict[str, object] = {"tenant": DEMO_TENANT, "models": ["deepseek-chat"], "max_tokens": 64, "ttl": 300}
    claims.update(overrides)
    return mint(signing_key, **claims)  # type: ignore[arg-type]


def sdk(gw: str, key: str) -> openai.OpenAI:
    """An OpenAI client pointed at the gateway, no retries (a retry would hide a refusal)."""
    return openai.OpenAI(base_url=f"{gw}/v1", api_key=key, max_retries=0, timeout=10)


def test_non_streaming_completion_succeeds(gw: str, issuer_key: SigningKey) -> None:
    reply = sdk(gw, demo_key(issuer_key)).chat.completions.create(
        model="deepseek-chat", messages=MESSAGES, max_tokens=20)
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_completion_succeeds(gw: str, issuer_key: SigningKey) -> None:
    stream = sdk(gw, demo_key(issuer_key)).chat.completions.create(
        model="deepseek-chat", messages=MESSAGES, max_tokens=30, stream=True,
        stream_options={"include_usage": True})
    text, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(text).strip()
    assert usage is not None and 0 < usage.completion_tokens <= 30


def test_model_outside_key_is_permission_denied(gw: str, issuer_key: SigningKey) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk(gw, demo_key(issuer_key)).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert err.value.code == "model_not_allowed"


def test_tampered_signature_is_authentication_error(gw: str, issuer_key: SigningKey) -> None:
    key = demo_key(issuer_key)
    head, payload, sig = key.split(".")
    tampered = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(gw, tampered).chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=5)
    assert err.value.code == "invalid_api_key"


def test_expired_key_is_authentication_error(gw: str, issuer_key: SigningKey) -> None:
    expired = demo_key(issuer_key, ttl=60, now=time.time() - 3600)
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(gw, expired).chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=5)
    assert err.value.code == "expired_key"


def test_no_key_is_authentication_error(gw: str) -> None:
    reply = httpx.post(f"{gw}/v1/chat/completions", json={"model": "deepseek-chat", "messages": MESSAGES,
                                                          "max_tokens": 5})
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"
    # The SDK insists on some api_key: a provider-style key is not a dynamic key.
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "sk-not-a-dynamic-key").chat.completions.create(model="deepseek-chat", messages=MESSAGES,
                                                                max_tokens=5)


def test_seed_path_with_dynasealtoken_and_seed_key(gw: str, mock_url: str) -> None:
    seed_key = mint_seed_key(DEMO_TENANT, DEMO_SECRET, model="deepseek-chat", max_tokens=100, ttl=300,
                             event_id=111)
    reply = httpx.post(f"{gw}/client-side/chat/completions", headers={"dynasealtoken": seed_key},
                       json={"model": "deepseek-chat", "messages": MESSAGES, "max_tokens": 50, "stream": True,
                             "stream_options": {"include_usage": True}}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.text.rstrip().endswith("data: [DONE]")
    recorded = httpx.get(f"{mock_url}/_mock/requests").json()
    assert recorded[-1]["path"] == "/v1/chat/completions"


def test_upstream_never_sees_dynamic_key_and_gets_provider_credential(
        gw: str, mock_url: str, issuer_key: SigningKey) -> None:
    key = demo_key(issuer_key)
    httpx.delete(f"{mock_url}/_mock/requests")
    for headers in ({"authorization": f"Bearer {key}"}, {"dynasealtoken": key},
                    {"authorization": f"Bearer {key}", "dynasealtoken": key}):
        reply = httpx.post(f"{gw}/v1/chat/completions", headers=headers,
                           json={"model": "deepseek-chat", "messages": MESSAGES, "max_tokens": 5})
        assert reply.status_code == 200, reply.text
    recorded = httpx.get(f"{mock_url}/_mock/requests").json()
    assert len(recorded) == 3
    for request in recorded:
        seen = request["headers"]
        assert seen["authorization"] == f"Bearer {PROVIDER_KEY}"
        assert "dynasealtoken" not in seen
        assert all(key not in value for value in seen.values())


def test_body_over_limit_is_413_openai_shaped(gw: str, cfg: DynasealConfig, issuer_key: SigningKey) -> None:
    big = "x" * (cfg.gateway.max_body_bytes + 10)
    reply = httpx.post(f"{gw}/v1/chat/completions", headers={"authorization": f"Bearer {demo_key(issuer_key)}"},
                       json={"model": "deepseek-chat", "messages": [{"role": "user", "content": big}],
                             "max_tokens": 5})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_unknown_path_is_404_openai_shaped(gw: str) -> None:
    reply = httpx.get(f"{gw}/v1/embeddings")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_max_tokens_over_cap_is_refused(gw: str, issuer_key: SigningKey) -> None:
    client = sdk(gw, demo_key(issuer_key, max_tokens=16))
    with pytest.raises(openai.PermissionDeniedError) as over:
        client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=17)
    assert over.value.code == "param_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=10, n=2)


def test_streaming_that_turns_usage_off_is_refused(gw: str, issuer_key: SigningKey) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gw, demo_key(issuer_key)).chat.completions.create(
            model="deepseek-chat", messages=MESSAGES, max_tokens=5, stream=True,
            stream_options={"include_usage": False})
    assert err.value.code == "stream_usage_required"


def test_authz_metrics_count_decisions_by_code(gw: str, cfg: DynasealConfig, issuer_key: SigningKey) -> None:
    metrics_url = f"http://127.0.0.1:{cfg.gateway.ports.authz_metrics}/metrics"

    def count(code: str) -> float:
        for line in httpx.get(metrics_url).text.splitlines():
            if line.startswith("dynaseal_authz_decisions_total{") and f'code="{code}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count("model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, demo_key(issuer_key)).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert count("model_not_allowed") == before + 1
    assert "dynaseal_authz_check_seconds_bucket" in httpx.get(metrics_url).text


def test_deny_log_line_names_jti_never_the_key(gw: str, cfg: DynasealConfig, issuer_key: SigningKey) -> None:
    key = demo_key(issuer_key)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, key).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    log_text = (Path(cfg.gateway.data_dir) / "logs" / "authz.log").read_text()
    jti = key_jti(key)
    deadline = time.monotonic() + 5
    while jti not in log_text and time.monotonic() < deadline:
        time.sleep(0.1)
        log_text = (Path(cfg.gateway.data_dir) / "logs" / "authz.log").read_text()
    assert jti in log_text
    assert key not in log_text and key.split(".")[2] not in log_text


def key_jti(key: str) -> str:
    from conftest import jwt_payload

    return str(jwt_payload(key)["jti"])
