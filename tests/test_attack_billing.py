"""Attacks on what a request is billed: the usage rules of the access log and the counters' lifetime.

Each test is an attack that must fail; those under "findings" were open before their fix.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis
from conftest import OTHER_TENANT, verified_key
from ledger_sync import counters

from callback_consumer.settlement import SettlementBatcher
from dynaseal.config import DynasealConfig
from dynaseal.ledger import redis_keys
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import connect
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.usage.events import parse_line


def line(**fields: object) -> bytes:
    record = {"ts": "2026-01-01T00:00:00.000Z", "request_id": str(uuid.uuid4()), "method": "POST",
              "path": "/v1/chat/completions", "code": 200, "flags": "-", "details": "via_upstream",
              "tenant": "acme", "jti": "j", "event_id": "e", "model": "gpt-4o-mini", "stream": False,
              "reserved": 4000, "prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    record.update(fields)
    return orjson.dumps(record)


def test_an_upstream_error_releases_and_a_disconnect_bills_the_reservation() -> None:
    error = parse_line(line(code=500, details="via_upstream"))
    left = parse_line(line(code=0, flags="DC", details="downstream_remote_disconnect"))
    assert error is not None and (error.usage_source, error.total_tokens) == ("none", 0)
    assert left is not None and (left.usage_source, left.total_tokens) == ("reserved", 4000)


def test_a_refused_or_a_model_list_line_is_no_event() -> None:
    assert parse_line(line(deny_code="ok", code=200)) is None
    assert parse_line(line(details="ext_authz_denied", code=403)) is None
    assert parse_line(line(tenant=None)) is None


@pytest.mark.parametrize(("code", "flags", "details"), [
    # the route's idle_timeout (300 s) on a non-streaming request the upstream is still generating
    (504, "SI", "stream_idle_timeout"),
    (504, "UT", "upstream_response_timeout"),
    # the provider's load balancer drops the connection mid-generation
    (503, "UC", "upstream_reset_before_response_started{connection_termination}"),
])
def test_a_local_reply_after_the_upstream_started_bills_the_reservation(code: int, flags: str, details: str) -> None:
    event = parse_line(line(code=code, flags=flags, details=details))
    assert event is not None and event.total_tokens == 4000  # the provider billed it: never under-bill


def test_settling_never_shortens_a_long_lived_keys_counters(redis_server: str, cfg: DynasealConfig) -> None:
    lifetime = 3 * 86400  # allowed whenever a tenant sets limits.max_ttl above a day
    key = verified_key(cfg, "a", lifetime, budget=1000, uses=3)

    async def admit() -> None:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        try:
            await admit_request(quota, key, CheckedRequest("gpt-4o-mini", False, 1, 100, 0), "r-1")
        finally:
            await quota.client.aclose()

    asyncio.run(admit())
    client = redis.Redis.from_url(redis_server)
    name = redis_keys.counters(OTHER_TENANT, key.jti)
    assert client.ttl(name) > lifetime  # admit: the key's lifetime plus a day

    async def settle_like_the_consumer() -> None:
        redis_client = connect(redis_server, timeout_s=2.0)
        try:
            await SettlementBatcher(redis_client).settle(OTHER_TENANT, key.jti, "r-1", 50)
        finally:
            await redis_client.aclose()

    asyncio.run(settle_like_the_consumer())
    assert counters(client, OTHER_TENANT, key.jti)["uses"] == 1
    assert client.ttl(name) > lifetime, "the uses and spent tokens would vanish while the key is still valid"
