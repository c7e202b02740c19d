"""Helpers shared by the issuer_api tests (plain functions; each test module defines its fixtures).

Named test_issuer_* only so it lives beside the tests it serves; it holds no tests itself.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from dynaseal.config import DynasealConfig, bundled_dev_config, config_environment, load_config
from dynaseal.runtime.views import Runtime
from issuer_api.app import create_app

DEMO_TENANT = "671249a93f1cf2f8bf9b2b82"
CLIENT1_ID = "671247fadb2faa4fec2c6f39"


def issuer_config(data_dir: Path) -> DynasealConfig:
    """The bundled dev config with its data directory moved under the test's tmp dir."""
    return load_config(bundled_dev_config(), data_dir=str(data_dir))


def issuer_client(data_dir: Path) -> tuple[DynasealConfig, TestClient]:
    """A started issuer app (lifespan entered) on a fresh data directory."""
    cfg = issuer_config(data_dir)
    client = TestClient(create_app(cfg))
    client.__enter__()
    return cfg, client


def login(client: TestClient, username: str, password: str | None = None) -> dict[str, str]:
    """Log in with the OAuth2 form and return the token pair (asserting success)."""
    response = client.post("/user/login", data={"username": username, "password": password or username})
    assert response.status_code == 200, response.text
    pair: dict[str, str] = response.json()
    return pair


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is a JSON error envelope with this status (and code)."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    if code is not None:
        assert error["code"] == code, error
    return error


def callback_secret(cfg: DynasealConfig) -> str:
    """The demo tenant's webhook secret, as the gateway (its consumer) would sign with it."""
    target = Runtime.from_config(cfg).consumer().get(DEMO_TENANT)
    assert target is not None and target.callback_secret is not None
    return target.callback_secret.get_secret_value()


def signed_callback(secret: str, body: dict[str, Any], *, msg_id: str | None = None,
                    when: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """A callback body and Standard Webhooks headers, signed like the gateway does."""
    payload = json.dumps(body)
    msg_id = msg_id or "req_" + secrets.token_hex(8)
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, payload)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
               "webhook-signature": signature, "content-type": "application/json"}
    return payload.encode(), headers


def usage_body(event_id: str, jti: str | None, sub: str | None, tokens: int = 57,
               content: str = "hello from the model") -> dict[str, Any]:
    """A callback body in the shape the consumer sends (dynaseal.usage.callbacks)."""
    return {"type": "usage", "event_id": event_id, "content": content, "tokens": tokens,
            # Counts are never negative (the callback model refuses them): a small total is all prompt.
            "usage": {"prompt_tokens": min(12, tokens), "completion_tokens": max(tokens - 12, 0),
                      "total_tokens": tokens},
            "model": "deepseek-chat", "key_id": jti, "sub": sub, "request_id": "req-" + event_id,
            "status": 200, "stream": True, "started_at": "2025-01-01T00:00:00Z", "duration_ms": 812, "cb": {}}


def session_secret(cfg: DynasealConfig) -> str:
    """The issuer's session secret (dev.env supplies it)."""
    assert cfg.issuer is not None
    return config_environment(cfg)[cfg.issuer.session_secret_env]
