"""Fallback as a hostile key holder sees it, through the real Envoy, authz and Redis (scripted upstreams).

A try that timed out before its first byte was sent to a provider that may have generated (and billed) it:
what the next upstream answers must not make that request free.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import yaml
from conftest import free_ports, jwt_payload
from ledger_sync import counters
from upstream_support import Behaviour, ScriptedUpstream

from dynaseal.config import load_config
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.runtime.locations import redis_url

pytestmark = pytest.mark.integration
MESSAGES: Any = [{"role": "user", "content": "hi"}]


class Stack:
    """The running gateway, its upstreams, the tenant's signing key and its Redis."""

    def __init__(self, url: str, upstreams: dict[str, ScriptedUpstream], signer: SigningKey, redis_at: str) -> None:
        self.url, self.upstreams, self.signer, self.redis_url = url, upstreams, signer, redis_at
        self.access_log = Path()

    def key(self, **claims: Any) -> str:
        return mint(self.signer, tenant="alpha", models=["hedge"], max_tokens=50, ttl=600, **claims)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=20)


def _config(directory: Path, ports: dict[str, int], signer: SigningKey) -> Path:
    names = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka",
             "authz_metrics", "consumer_metrics", "shipper_metrics"]
    raw = {
        "gateway": {
            "data_dir": str(directory / "data"), "max_body_bytes": 65536, "redis_timeout_ms": 1000,
            "ports": dict(zip(names, free_ports(len(names)), strict=True)),
            "upstream": {"base_url": f"http://127.0.0.1:{ports['busy']}/v1"},
            "upstreams": [
                {"name": "slow", "base_url": f"http://127.0.0.1:{ports['slow']}/v1", "api_key_env": "F_KEY_SLOW",
                 "timeouts": {"first_byte_s": 0.5}, "outlier_detection": None},
                {"name": "busy", "base_url": f"http://127.0.0.1:{ports['busy']}/v1", "api_key_env": "F_KEY_BUSY",
                 "timeouts": {"first_byte_s": 0.5}, "outlier_detection": None},
            ],
        },
        "tenants": [
            {"id": "alpha", "keys": [{"kid": signer.kid, "alg": "EdDSA", "public_jwk": signer.public_jwk()}],
             "limits": {"models": ["hedge"], "max_tokens": 100},
             "upstream": {"routes": [{"model": "hedge", "upstreams": ["slow", "busy"]}]}},
        ],
    }
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from dynaseal_launcher.stack import LocalStack

    os.environ.update({"F_KEY_SLOW": "sk-slow-0101", "F_KEY_BUSY": "sk-busy-0102"})
    port = dict(zip(["slow", "busy"], free_ports(2), strict=True))
    upstreams = {name: ScriptedUpstream(port[name], name) for name in port}
    signer = SigningKey.generate("alpha-f")
    path = _config(tmp_path_factory.mktemp("fallback"), port, signer)
    cfg = load_config(path)
    local = LocalStack(cfg, path, pipeline=False)
    local.start()
    running = Stack(f"http://127.0.0.1:{cfg.gateway.ports.envoy}", upstreams, signer, redis_url(cfg))
    running.access_log = local.access_log
    try:
        yield running
    finally:
        local.stop()
        for upstream in upstreams.values():
            upstream.close()


def logged_line(stack: Stack, request_id: str) -> dict[str, Any]:
    """The access-log line of one request (Envoy flushes the log every 200 ms; bounded wait)."""
    for _ in range(100):
        for line in stack.access_log.read_bytes().splitlines():
            if request_id.encode() in line:
                return dict(json.loads(line))
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def test_a_request_a_provider_took_past_the_timeout_is_not_given_back(stack: Stack) -> None:
    """slow receives the request and generates past the first-byte timeout; busy then answers 503."""
    stack.upstreams["slow"].behaviour = Behaviour(delay_s=2)
    stack.upstreams["busy"].behaviour = Behaviour(status=503)
    key = stack.key(uses=1)
    with pytest.raises(openai.InternalServerError) as refused:
        stack.client(key).chat.completions.create(model="hedge", messages=MESSAGES, max_tokens=10)
    assert len(stack.upstreams["slow"].take()) == 1  # the provider had it: it may have generated and billed it
    assert len(stack.upstreams["busy"].take()) == 1
    state = counters(redis.Redis.from_url(stack.redis_url), "alpha", str(jwt_payload(key)["jti"]))
    assert state["uses"] == 1  # not given back
    logged = logged_line(stack, refused.value.response.headers["x-dynaseal-request-id"])
    assert (logged["overdue"], logged["given_back"], logged["upstreams_tried"]) == (True, None, "slow,busy")


def test_a_request_every_provider_refused_at_once_is_still_given_back(stack: Stack) -> None:
    stack.upstreams["slow"].behaviour = Behaviour(status=429)
    stack.upstreams["busy"].behaviour = Behaviour(status=503)
    key = stack.key(uses=1)
    with pytest.raises(openai.InternalServerError):
        stack.client(key).chat.completions.create(model="hedge", messages=MESSAGES, max_tokens=10)
    assert len(stack.upstreams["slow"].take()) == len(stack.upstreams["busy"].take()) == 1
    state = counters(redis.Redis.from_url(stack.redis_url), "alpha", str(jwt_payload(key)["jti"]))
    assert state["uses"] == 0  # no provider served it: given back


def test_a_request_with_an_overdue_try_is_billed_its_reservation() -> None:
    """The last upstream's own 503 bills nothing; after a try that timed out it bills the reservation."""
    from dynaseal.usage.events import parse_line

    line = {"request_id": "3b7c2a8e-0d1f-4e5a-9b6c-7d8e9f0a1b2c", "tenant": "alpha", "jti": "j1", "model": "hedge",
            "code": 503, "details": "via_upstream", "reserved": 100, "upstreams_tried": "slow,busy"}
    refused = parse_line(json.dumps(line))
    assert refused is not None and (refused.usage_source, refused.total_tokens) == ("none", 0)
    overdue = parse_line(json.dumps({**line, "overdue": True}))
    assert overdue is not None and (overdue.usage_source, overdue.total_tokens) == ("reserved", 100)


def test_a_served_request_after_an_overdue_try_is_billed_its_usage_and_the_reservation() -> None:
    """Two providers may have generated for one reservation: the one that timed out is billed too."""
    from dynaseal.money.pricing import Price
    from dynaseal.usage.events import parse_line

    price = Price("USD", Decimal(1), Decimal(1), Decimal(2), Decimal(2))
    line = {"request_id": "3b7c2a8e-0d1f-4e5a-9b6c-7d8e9f0a1b2c", "tenant": "alpha", "jti": "j1", "model": "hedge",
            "code": 200, "reserved": 100, "reserved_cost": 250, "upstreams_tried": "slow,oai",
            "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "price": price.encode()}
    served = parse_line(json.dumps(line))
    assert served is not None and (served.usage_source, served.total_tokens) == ("upstream", 12)
    late = parse_line(json.dumps({**line, "overdue": True}))
    assert late is not None and (late.usage_source, late.total_tokens) == ("upstream", 112)
    assert late.cost_micros == served.cost_micros + 250
