"""Content rules through the real stack: Envoy → authz → Redis, the mock provider recording what reaches it,
and the usage pipeline (shipper → Kafka → consumer) calling the tenant back.

Every place a rule can look on chat completions is refused with 400 content_blocked naming the rule;
the provider never receives the request; the key's counters stay untouched (a single-use, 1-rpm key
still gets its one request afterwards); Envoy's access log names the rule on the refusal, and the
tenant gets a signed `content_blocked` callback naming it, without the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml
from conftest import OTHER_TENANT, TenantKeys, wait_until, write_test_config
from ledger_sync import counters
from pipeline_harness import Receiver

from dynaseal.config import load_config
from dynaseal.keys.mint import mint
from dynaseal.runtime.locations import redis_url
from dynaseal_launcher.stack import LocalStack

pytestmark = pytest.mark.integration

RULES = [
    {"builtin": "payment_card"},
    {"builtin": "private_key"},
    {"name": "internal_hosts", "literals": ["db.acme.internal"], "case_insensitive": True},
    {"name": "bomb", "patterns": ["(a+)+$"], "where": ["system"]},
]
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}



@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, test_keys: TenantKeys,
              config_path: Path, receiver: Receiver) -> Iterator[LocalStack]:
    """Redis + authz + Envoy + mock LLM + the usage pipeline for a tenant with content rules (no issuer)."""
    directory = tmp_path_factory.mktemp("content")
    path = write_test_config(directory, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw.pop("issuer")
    raw["tenants"] = [t for t in raw["tenants"] if t["id"] == OTHER_TENANT]
    raw["tenants"][0]["limits"]["content_rules"] = RULES
    # The other APIs' models too, so a rule is seen refusing on every endpoint the gateway serves.
    raw["tenants"][0]["limits"]["models"] += ["claude-sonnet-4-5", "text-embedding-3-small"]
    raw["tenants"][0]["callback"] = {"url": receiver.url, "secret_env": "DYNASEAL_DEMO_WEBHOOK_SECRET",
                                     "timeout_s": 5}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack = LocalStack(load_config(path), path, pipeline=True)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def mock_requests(own_stack: LocalStack) -> Callable[[], list[dict[str, Any]]]:
    """What the provider received since the test started."""
    url = f"http://127.0.0.1:{own_stack.cfg.local.mock_upstream_port}/_mock/requests"
    httpx.delete(url, timeout=5)
    return lambda: [r for r in httpx.get(url, timeout=5).json() if r["path"].endswith("/chat/completions")]


def post(stack: LocalStack, key: str, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 8, **extra}
    return httpx.post(f"http://127.0.0.1:{stack.cfg.gateway.ports.envoy}/v1/chat/completions",
                      headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)


def tight_key(test_keys: TenantKeys) -> str:
    """A key one refused request would exhaust: one use, one request a minute, a small budget."""
    return mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600,
                uses=1, rpm=1, budget=2000)


def jti_of(key: str) -> str:
    from conftest import jwt_payload

    return str(jwt_payload(key)["jti"])


def redis_keys_of(stack: LocalStack, jti: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url(stack.cfg))
    try:
        return list(client.scan_iter(match=f"*{jti}*"))
    finally:
        client.close()


CARD = "4111 1111 1111 1111"
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
PLACES: dict[str, tuple[dict[str, Any], str]] = {
    # where → (the request's extra members / messages, the rule that refuses it)
    "user": ({"messages": [{"role": "user", "content": f"charge {CARD}"}]}, "payment_card"),
    "user_text_part": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "text", "text": PEM}]}]}, "private_key"),
    "system": ({"messages": [{"role": "system", "content": "backend at DB.ACME.INTERNAL"},
                             {"role": "user", "content": "hi"}]}, "internal_hosts"),
    "developer": ({"messages": [{"role": "developer", "content": [{"type": "text", "text": PEM}]},
                                {"role": "user", "content": "hi"}]}, "private_key"),
    "assistant": ({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": f"your card {CARD}?"},
                                {"role": "user", "content": "yes"}]}, "payment_card"),
    "assistant_tool_call": ({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {**TOOL_CALL, "function": {"name": "lookup", "arguments": '{"host": "db.acme.\\u0069nternal"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}, "internal_hosts"),
    "tool": ({"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                           {"role": "tool", "tool_call_id": "call_1", "content": f"card on file: {CARD}"}]},
             "payment_card"),
    "tools": ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
        "name": "query", "description": "runs SQL on db.acme.internal",
        "parameters": {"type": "object", "properties": {}}}}]}, "internal_hosts"),
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_each_place_a_rule_looks_is_refused_before_anything_is_spent(
        own_stack: LocalStack, test_keys: TenantKeys, mock_requests: Callable[[], list[dict[str, Any]]],
        place: str) -> None:
    body, rule = PLACES[place]
    key = tight_key(test_keys)
    messages = body["messages"]
    extra = {k: v for k, v in body.items() if k != "messages"}
    for _ in range(3):  # more refusals than the key has uses or rpm slots
        reply = post(own_stack, key, messages, **extra)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert (error["code"], error["type"]) == ("content_blocked", "invalid_request_error")
        assert f"'{rule}'" in error["message"]
        for secret in ("4111", "PRIVATE KEY", "acme.internal", "ACME.INTERNAL"):
            assert secret not in reply.text  # the refusal never echoes what matched
        assert reply.headers["x-dynaseal-request-id"]
    assert mock_requests() == []  # the provider never received it
    assert redis_keys_of(own_stack, jti_of(key)) == []  # no use, rpm slot or reservation
    ok = post(own_stack, key, [{"role": "user", "content": "hello"}])
    assert ok.status_code == 200, ok.text  # the single use and the one rpm slot were still there
    assert len(mock_requests()) == 1


def test_the_refusal_is_in_the_access_log_with_its_rule(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = tight_key(test_keys)
    counted = blocked_count(own_stack, "payment_card")
    reply = post(own_stack, key, [{"role": "user", "content": f"pay {CARD}"}])
    assert blocked_count(own_stack, "payment_card") == counted + 1
    request_id = reply.headers["x-dynaseal-request-id"]

    def line() -> dict[str, Any] | None:
        for raw in own_stack.access_log.read_bytes().splitlines():
            record = orjson.loads(raw)
            if record.get("request_id") == request_id:
                return dict(record)
        return None

    assert wait_until(lambda: line() is not None), "the refusal was never logged"
    record = line()
    assert record is not None
    assert (record["code"], record["deny_code"], record["content_rule"], record["tenant"], record["jti"]) == (
        400, "content_blocked", "payment_card", OTHER_TENANT, jti_of(key))
    assert "4111" not in orjson.dumps(record).decode()


def test_cards_failing_luhn_pass(own_stack: LocalStack, test_keys: TenantKeys,
                                 mock_requests: Callable[[], list[dict[str, Any]]]) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    for valid in ("4111111111111111", "5555 5555 5555 4444", "3782-822463-10005"):
        assert post(own_stack, key, [{"role": "user", "content": valid}]).json()["error"]["code"] == "content_blocked"
    for invalid in ("4111111111111112", "5555 5555 5555 4445", "order 1234 5678 9012 3456"):
        assert post(own_stack, key, [{"role": "user", "content": invalid}]).status_code == 200
    assert len(mock_requests()) == 3


def test_a_backtracking_bomb_is_answered_normally(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    # (a+)+$ against a long run of a's that ends in something else: exponential for a backtracking engine.
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    run = "a" * 60_000
    reply = post(own_stack, key, [{"role": "system", "content": run + "!"}, {"role": "user", "content": "hi"}])
    assert reply.status_code == 200, reply.text
    reply = post(own_stack, key, [{"role": "system", "content": run}, {"role": "user", "content": "hi"}])
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "content_blocked")
    assert "'bomb'" in reply.json()["error"]["message"]


def test_the_tenant_is_called_back_with_the_rule_and_no_text(own_stack: LocalStack, test_keys: TenantKeys,
                                                              receiver: Receiver) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600,
               sub="user-42", event_id="order-7")
    blocked = post(own_stack, key, [{"role": "user", "content": f"my card: {CARD}"}])
    assert blocked.status_code == 400
    served = post(own_stack, key, [{"role": "user", "content": "hello"}])
    assert served.status_code == 200
    jti = jti_of(key)
    assert wait_until(lambda: len(receiver.delivered(jti)) == 2, 60), receiver.for_key(jti)
    by_id = receiver.delivered(jti)
    callback = by_id[blocked.headers["x-dynaseal-request-id"]]
    assert (callback["type"], callback["rule"], callback["event_id"], callback["sub"], callback["key_id"]) == (
        "content_blocked", "payment_card", "order-7", "user-42", jti)
    assert (callback["status"], callback["tokens"], callback["content"], callback["model"]) == (
        400, 0, "", "gpt-4o-mini")
    assert "4111" not in orjson.dumps(callback).decode()
    usage = by_id[served.headers["x-dynaseal-request-id"]]
    assert usage["type"] == "usage" and usage["tokens"] > 0
    client = redis.Redis.from_url(redis_url(own_stack.cfg))
    try:  # one use: the served request's; the blocked one was never admitted nor settled
        assert counters(client, OTHER_TENANT, jti)["uses"] == 1
    finally:
        client.close()
    assert receiver.bad_signatures == 0


def test_hostile_bodies_to_a_tenant_with_rules_never_get_a_5xx(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    head = '{"model":"gpt-4o-mini","max_tokens":8,'
    bodies = [
        head + '"messages":[{"role":"user","content":"hi"}],"tools":' + "[" * 980 + "]" * 980 + "}",
        head + '"messages":[{"role":"user","content":"\\ud800 4111 1111 1111 1111"}]}',
        head + '"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":"{not json"}}]},'
               '{"role":"user","content":"hi"}]}',
        head + '"messages":[{"role":7,"content":[1,null,{"type":"text","text":5}]}]}',
        head + '"messages":[{"role":"user","content":"' + "4" * 40_000 + '"}]}',
        head + '"messages":[{"role":"user","content":"' + "4111 " * 10_000 + '"}]}',
    ]
    with httpx.Client(timeout=30) as client:
        for raw in bodies:
            reply = client.post(f"http://127.0.0.1:{own_stack.cfg.gateway.ports.envoy}/v1/chat/completions",
                                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                                content=raw.encode())
            assert reply.status_code < 500, (reply.status_code, raw[:80], reply.text)
    # the lone surrogate does not smuggle the card after it: the body is refused before anything reads it
    refused = httpx.post(
        f"http://127.0.0.1:{own_stack.cfg.gateway.ports.envoy}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        content=bodies[1].encode(), timeout=30)
    assert refused.status_code == 400 and "surrogate" in refused.json()["error"]["message"]


def blocked_count(stack: LocalStack, rule: str) -> float:
    """authz's count of requests the tenant's rule refused (its metrics endpoint; labels in any order)."""
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.gateway.ports.authz_metrics}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("dynaseal_authz_content_blocked_total{") and f'rule="{rule}"' in line \
                and f'tenant="{OTHER_TENANT}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rejected_reloads(stack: LocalStack) -> float:
    """authz's count of config reloads it rejected (its metrics endpoint)."""
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.gateway.ports.authz_metrics}/metrics", timeout=5).text
    found = re.search(r'^dynaseal_authz_config_reloads_total\{result="rejected"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_bad_rule_on_reload_keeps_the_last_good_rules(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    path = own_stack.config_path
    original = path.read_text()
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)

    def code(text: str) -> str:
        reply = post(own_stack, key, [{"role": "user", "content": text}])
        return "ok" if reply.status_code == 200 else str(reply.json()["error"]["code"])

    try:
        raw = yaml.safe_load(original)
        raw["tenants"][0]["limits"]["content_rules"] = [{"name": "codename", "literals": ["BLUEBIRD"]}]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        assert wait_until(lambda: code("project BLUEBIRD") == "content_blocked"), "no reload on change"
        assert code(CARD) == "ok"  # the new rules replaced the old ones
        rejected = rejected_reloads(own_stack)
        raw["tenants"][0]["limits"]["content_rules"] = [{"name": "codename", "patterns": ["(?<=x)BLUE"]}]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))  # RE2 has no look-behind: refused at load
        assert wait_until(lambda: rejected_reloads(own_stack) > rejected), "the bad config was never tried"
        assert code("project BLUEBIRD") == "content_blocked"
        assert code("xBLUE") == "ok"
    finally:
        path.write_text(original)
    assert wait_until(lambda: code(CARD) == "content_blocked")


@pytest.mark.parametrize(("path", "header"), [
    ("/v1/chat/completions", "authorization"), ("/api/v1/chat/completions", "authorization"),
    ("/client-side/chat/completions", "dynasealtoken")])
def test_every_chat_route_and_streams_are_checked(own_stack: LocalStack, test_keys: TenantKeys,
                                                  mock_requests: Callable[[], list[dict[str, Any]]],
                                                  path: str, header: str) -> None:
    key = tight_key(test_keys)
    value = f"Bearer {key}" if header == "authorization" else key
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "max_tokens": 8, "stream": stream,
                "messages": [{"role": "user", "content": PEM}]}
        reply = httpx.post(f"http://127.0.0.1:{own_stack.cfg.gateway.ports.envoy}{path}", headers={header: value},
                           json=body, timeout=30)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "content_blocked"), reply.text
        assert "'private_key'" in reply.json()["error"]["message"]
    assert mock_requests() == []
    assert redis_keys_of(own_stack, jti_of(key)) == []


# Each other API's places a rule looks: (path, body, the rule that refuses it).
ENDPOINT_PLACES: dict[str, tuple[str, dict[str, Any], str]] = {
    "responses_input": ("/v1/responses", {"model": "gpt-4o-mini", "max_output_tokens": 8,
                                          "input": f"pay with {CARD}"}, "payment_card"),
    "responses_input_items": ("/v1/responses", {"model": "gpt-4o-mini", "max_output_tokens": 8, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": PEM}]}]}, "private_key"),
    "responses_instructions": ("/v1/responses", {"model": "gpt-4o-mini", "max_output_tokens": 8, "input": "hi",
                                                 "instructions": "use db.acme.internal"}, "internal_hosts"),
    "messages_system": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 8, "system": PEM,
                                         "messages": [{"role": "user", "content": "hi"}]}, "private_key"),
    "messages_content_block": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text", "text": f"card {CARD}"}]}]}, "payment_card"),
    "embeddings_input": ("/v1/embeddings", {"model": "text-embedding-3-small",
                                            "input": ["fine", "db.acme.internal"]}, "internal_hosts"),
}


@pytest.mark.parametrize("place", sorted(ENDPOINT_PLACES))
def test_every_endpoint_is_refused_before_anything_is_spent(own_stack: LocalStack, test_keys: TenantKeys,
                                                            place: str) -> None:
    path, body, rule = ENDPOINT_PLACES[place]
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=[body["model"]], max_tokens=64, ttl=600,
               uses=1, rpm=1, budget=20_000)
    mock = f"http://127.0.0.1:{own_stack.cfg.local.mock_upstream_port}/_mock/requests"
    httpx.delete(mock, timeout=5)
    envoy = f"http://127.0.0.1:{own_stack.cfg.gateway.ports.envoy}"
    for _ in range(3):
        reply = httpx.post(envoy + path, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "content_blocked" and rule in error["message"], error
        assert "4111" not in reply.text and "PRIVATE KEY" not in reply.text and "acme.internal" not in reply.text
    assert httpx.get(mock, timeout=5).json() == []  # the provider never saw it
    assert redis_keys_of(own_stack, jti_of(key)) == []  # no use, no rpm slot, no reservation
