"""Upstreams and routes: config validation, the model splice offsets, the route choice, credentials,
the give-back token and the give-back against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from conftest import verified_key
from ledger_sync import counters, settle

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.errors import Refusal
from dynaseal.ledger.give_back import GiveBack
from dynaseal.ledger.quota import RedisQuota
from dynaseal.money.pricing import Price
from dynaseal.policy import give_back
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.routing.model_span import model_value_span
from dynaseal.routing.provider_credentials import CredentialPool
from dynaseal.routing.routes import Hop, Route, build_route_table, choose
from dynaseal_launcher import envoy_config

KEY = {"kid": "k1", "alg": "HS256", "secret_env": "T_ROUTING_SECRET"}


def config(tmp_path: Path, upstreams: list[dict[str, Any]], routes: list[dict[str, Any]],
           models: list[str] | None = None) -> Path:
    raw = {"gateway": {"upstreams": upstreams},
           "tenants": [{"id": "t1", "keys": [KEY], "limits": {"models": models or ["fast"]},
                        "upstream": {"routes": routes}}]}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


OPENAI = {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "T_OPENAI"}
ANTHROPIC = {"name": "claude", "base_url": "https://api.anthropic.com/v1", "api_key_env": "T_ANTHROPIC",
             "formats": ["messages"]}


@pytest.mark.parametrize(("upstreams", "routes", "models", "expected"), [
    ([OPENAI], [{"model": "fast", "upstreams": ["opneai"]}], None,
     "tenant t1 model fast: unknown upstream 'opneai'"),
    ([OPENAI], [{"model": "fast", "upstreams": ["openai"]}], ["fast", "smart"],
     "tenant t1 model smart: no route"),
    ([{**OPENAI, "formats": []}], [{"model": "fast", "upstreams": ["openai"]}], None,
     "tenant t1 model fast: upstream 'openai' lists no formats"),
    ([{**OPENAI, "formats": ["chat_completions", "embedding"]}], [{"model": "fast", "upstreams": ["openai"]}], None,
     "tenant t1 model fast: upstream 'openai' lists an unknown format 'embedding' (known: chat_completions, "
     "responses, messages, embeddings)"),
    ([OPENAI], [{"model": "fast", "upstreams": ["openai"], "formats": ["chat"]}], None,
     "tenant t1 model fast: its route lists an unknown format 'chat'"),
    ([OPENAI], [{"model": "fast", "upstreams": ["openai"], "formats": []}], None,
     "tenant t1 model fast: its route lists no formats"),
    ([OPENAI], [{"model": "fast", "upstreams": ["openai"], "formats": ["messages"]}], None,
     "tenant t1 model fast: no upstream of the route speaks messages (openai speaks chat_completions)"),
    ([OPENAI, ANTHROPIC], [{"model": "fast", "upstreams": ["openai", "claude"], "formats": ["chat_completions"]}],
     None, "tenant t1 model fast: upstream 'claude' does not speak chat_completions (it speaks messages)"),
    ([OPENAI, {**ANTHROPIC, "formats": ["messages", "completions"]}], [{"model": "fast", "upstreams": ["openai"]}],
     None, "gateway.upstreams claude: lists an unknown format 'completions'"),
    ([OPENAI, OPENAI], [{"model": "fast", "upstreams": ["openai"]}], None,
     "the name 'openai' is used twice"),
    ([OPENAI], [{"model": "fast", "upstreams": ["openai"]}, {"model": "fast", "upstreams": ["default"]}], None,
     "tenant t1 model fast: more than one route"),
    ([OPENAI], [{"model": "*", "upstreams": ["openai", "openai"]}], ["*"], "an upstream appears twice"),
])
def test_inconsistent_routes_are_refused_naming_tenant_and_model(
        tmp_path: Path, upstreams: list[dict[str, Any]], routes: list[dict[str, Any]], models: list[str] | None,
        expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(config(tmp_path, upstreams, routes, models))
    assert expected in str(error.value)


@pytest.mark.parametrize("bad", [{"name": "Open AI"}, {"base_url": "ftp://x"}, {"base_url": "https://x/v1?k=1"},
                                 {"formats": ["embeddings_v9"]}])
def test_malformed_upstreams_are_refused(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_config(config(tmp_path, [{**OPENAI, **bad}], [{"model": "fast", "upstreams": ["openai"]}]))


def test_a_star_route_covers_every_model_and_the_single_upstream_still_works(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, [OPENAI], [{"model": "*", "upstreams": ["openai", "default"]}],
                             ["fast", "smart"]))
    os.environ["T_OPENAI"] = "sk-openai"
    errors: list[str] = []
    table = build_route_table(cfg, errors)
    assert errors == []
    route = table.route("t1", "smart")
    assert route is not None and [h.upstream for h in route.hops] == ["openai", "default"]
    assert table.route("other", "smart") is None


def test_routing_renders_a_valid_envoy_config(tmp_path: Path) -> None:
    anthropic_like = {"name": "selfhosted", "base_url": "https://llm.internal:8443/", "tls": {"verify": False},
                      "api_key_file": str(tmp_path / "keys.txt")}
    cfg = load_config(config(tmp_path, [OPENAI, anthropic_like], [
        {"model": "fast", "upstreams": ["selfhosted", {"upstream": "openai", "model": "gpt-4o-mini"}]},
        {"model": "smart", "upstreams": ["openai"]}], ["fast", "smart"]))
    rendered = envoy_config.render(cfg, tmp_path / "access.log")
    out = tmp_path / "envoy.yaml"
    out.write_text(rendered)
    ok, output = envoy_config.validate(out)
    assert ok, output[-2000:]
    doc = yaml.safe_load(rendered)
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert clusters["route-selfhosted-openai"]["cluster_type"]["typed_config"]["clusters"] == \
        ["up_selfhosted", "up_openai"]
    tls = clusters["up_openai"]["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.openai.com" and "validation_context" in tls["common_tls_context"]
    assert "validation_context" not in clusters["up_selfhosted"]["transport_socket"]["typed_config"][
        "common_tls_context"]


@pytest.mark.parametrize("raw", [
    b'{"model":"fast"}',
    b' \n{ "messages" : [ {"role":"user","content":"\\"model\\": \\"x\\""} ] ,\t"model"\n:\n"fast" }',
    b'{"stream":true,"mod\\u0065l":"fast","n":1}',
    b'{"a":{"model":"no"},"b":[{"model":"no"}],"c":"}{][","model":"fast"}',
    b'{"x":"\\\\","model":"fast"}',
    '{"t":"caf\u00e9 \u2603","model":"fast"}'.encode(),
])
def test_the_model_span_is_the_top_level_value_exactly(raw: bytes) -> None:
    span = model_value_span(raw)
    assert span is not None
    offset, length = span
    assert raw[offset:offset + length] == b'"fast"'
    spliced = raw[:offset] + b'"gpt-4o-mini"' + raw[offset + length:]
    assert json.loads(spliced)["model"] == "gpt-4o-mini"
    assert {k: v for k, v in json.loads(spliced).items() if k != "model"} == \
        {k: v for k, v in json.loads(raw).items() if k != "model"}


def test_no_model_member_and_broken_bodies() -> None:
    assert model_value_span(b'{"messages":[]}') is None
    assert model_value_span(b"{}") is None
    for broken in (b"[1]", b'{"model"', b'{"a":[1,2', b'{"a" 1}'):
        with pytest.raises(ValueError):
            model_value_span(broken)


def test_choose_offsets_follow_the_gateways_prefix_and_credentials_alternate() -> None:
    pool = CredentialPool()
    pool._keys = ("sk-1", "sk-2")  # two keys balanced
    route = Route("route-a-b", (Hop("a", None, CredentialPool()), Hop("b", "gpt-4o-mini", pool)))
    body = b'{"model":"fast","messages":[]}'
    prefix = '"max_tokens":100,'
    first = choose(route, "fast", body, prefix)
    assert first.headers == {"x-dynaseal-route": "route-a-b"}
    assert "up_auth.a" not in first.metadata and "up_model.a" not in first.metadata
    offset, length, value = str(first.metadata["up_model.b"]).split(" ", 2)
    amended = body[:1] + prefix.encode() + body[1:]
    assert amended[int(offset):int(offset) + int(length)] == b'"fast"' and value == '"gpt-4o-mini"'
    second = choose(route, "fast", body, prefix)
    assert {first.metadata["up_auth.b"], second.metadata["up_auth.b"]} == {"Bearer sk-1", "Bearer sk-2"}


def test_a_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated monthly\nsk-old\n")
    pool = CredentialPool(file=keys)
    assert pool.next_key() == "sk-old"
    keys.write_text("sk-new\n")
    os.utime(keys, (time.time() + 5, time.time() + 5))
    pool._checked = 0.0  # the once-a-second check is due
    assert pool.next_key() == "sk-new"
    keys.unlink()
    pool._checked = 0.0
    assert pool.next_key() == "sk-new"  # unreadable: the last keys stay


def test_give_back_tokens_cannot_be_forged() -> None:
    key = b"k" * 32
    token = give_back.make_token(key, "t1", ("jti-1",), "req-1")
    assert give_back.read_token(key, token) == ("t1", ("jti-1",), "req-1")
    child = give_back.make_token(key, "t1", ("root", "mid", "leaf"), "req-1")
    assert give_back.read_token(key, child) == ("t1", ("root", "mid", "leaf"), "req-1")
    ids, _, mac = token.partition(".")
    other = give_back.make_token(key, "t1", ("jti-2",), "req-1").partition(".")[0]
    for forged in (f"{other}.{mac}", f"{ids}.{'0' * 32}", ids, "", f"{ids}.{mac}x"):
        assert give_back.read_token(key, forged) is None
    assert give_back.read_token(b"another key", token) is None


def test_give_back_returns_use_rpm_and_reservation_once(cfg: DynasealConfig, redis_server: str,
                                                        sync_redis: redis.Redis) -> None:
    price = Price("USD", Decimal(1), Decimal(1), Decimal(2), Decimal(2))
    key = replace(verified_key(cfg, "gb"), uses=1, rpm=1, budget=1000, budget_cost=5_000_000)
    request = CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=100, prompt_bound=0, price=price)

    async def scenario() -> tuple[bool, bool, bool]:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        giver = GiveBack(quota)
        try:
            await admit_request(quota, key, request, "req-1")
            given = await giver.run(key.tenant.id, (key.jti,), "req-1", key.tenant.limits)
            again = await giver.run(key.tenant.id, (key.jti,), "req-1", key.tenant.limits)
            await admit_request(quota, key, request, "req-2")  # the use and the rpm slot are back
            shared = await giver.load_key() == await GiveBack(quota).load_key()
            return given, again, shared
        finally:
            await quota.client.aclose()

    given, again, shared = asyncio.run(scenario())
    assert (given, again, shared) == (True, False, True)
    state = counters(sync_redis, key.tenant.id, key.jti)
    assert state["uses"] == 1 and state["reserved"] == 100 and state.get("reserved_cost", 0) > 0
    # The given-back request's late settlement (its event) bills nothing; the served one settles normally.
    assert settle(sync_redis, key.tenant.id, key.jti, "req-1", 0).duplicate
    settle(sync_redis, key.tenant.id, key.jti, "req-2", 40)
    state = counters(sync_redis, key.tenant.id, key.jti)
    assert (state["spent"], state["reserved"]) == (40, 0)
    # A settled request is never given back.
    assert not asyncio.run(_give_back_once(redis_server, key.tenant.id, key.jti, "req-2"))


async def _give_back_once(url: str, tenant: str, jti: str, request_id: str) -> bool:
    quota = RedisQuota.from_url(url, timeout_s=2.0)
    try:
        return await GiveBack(quota).run(tenant, (jti,), request_id, None)
    finally:
        await quota.client.aclose()


def test_envoys_own_replies_are_openai_shaped(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, [OPENAI], [{"model": "fast", "upstreams": ["openai"]}]))
    doc = yaml.safe_load(envoy_config.render(cfg, tmp_path / "access.log"))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    codes: dict[int, str] = {}
    no_filter: dict[str, Any] = {}
    for mapper in hcm["local_reply_config"]["mappers"]:
        # The OpenAI-shaped ones: every mapper but the Messages paths' (Anthropic's shape, tested with them);
        # a status alone, or with what tells Envoy's 404 (no route) from authz's.
        if "messages" in json.dumps(mapper["filter"]) or "UAEX" in json.dumps(mapper["filter"]):
            continue
        parts = mapper["filter"].get("and_filter", {}).get("filters", [mapper["filter"]])
        status = next((p["status_code_filter"] for p in parts if "status_code_filter" in p), no_filter).get(
            "comparison", {}).get("value", {})
        if "body_format_override" in mapper and status:
            codes.setdefault(status["default_value"], mapper["body_format_override"]["json_format"]["error"]["code"])
    assert codes == {503: "upstream_unavailable", 504: "upstream_timeout", 408: "request_timeout",
                     413: "request_too_large", 404: "not_found"}


def test_a_client_never_sends_the_gateways_routing_headers() -> None:
    from dynaseal.policy.authorizer import headers_to_strip

    client = {"content-type": "application/json", "x-dynaseal-route": "route-x", "x-dynaseal-try": "x",
              "x-dynaseal-give-back": "t", "x-forwarded-proto": "http"}
    stripped = headers_to_strip(client, frozenset({"x-dynaseal-route"}), swapped_credential=False)
    assert set(stripped) == {"x-dynaseal-route", "x-dynaseal-try", "x-dynaseal-give-back"}


def test_a_given_back_request_is_billed_nothing_and_names_its_upstreams() -> None:
    from dynaseal.usage.callbacks import callback_payload
    from dynaseal.usage.events import parse_line

    line = {"request_id": "3b7c2a8e-0d1f-4e5a-9b6c-7d8e9f0a1b2c", "tenant": "t1", "jti": "j1", "model": "fast",
            "code": 503, "details": "upstream_reset_before_response_started{remote_reset}", "reserved": 100,
            "upstreams_tried": "local,openai"}
    billed = parse_line(json.dumps(line))
    assert billed is not None and (billed.usage_source, billed.total_tokens) == ("reserved", 100)
    given = parse_line(json.dumps({**line, "given_back": True}))
    assert given is not None and (given.usage_source, given.total_tokens) == ("none", 0)
    payload = callback_payload(given, include_content=False)
    assert (payload["upstreams_tried"], payload["upstream"]) == (["local", "openai"], None)
    served = callback_payload(parse_line(json.dumps({**line, "code": 200, "total_tokens": 9})),  # type: ignore[arg-type]
                              include_content=False)
    assert served["upstream"] == "openai" and served["usage_source"] == "upstream"
    plain = callback_payload(parse_line(json.dumps({**line, "upstreams_tried": None})),  # type: ignore[arg-type]
                             include_content=False)
    assert "upstreams_tried" not in plain  # a tenant without routes: the callback as before


def test_give_back_returns_the_tenant_wide_rpm_slot_too(cfg: DynasealConfig, redis_server: str) -> None:
    key = verified_key(cfg, "gbt")
    limits = key.tenant.limits.model_copy(update={"tenant_rpm": 1})
    key = replace(key, tenant=replace(key.tenant, id=f"t-{key.jti}", limits=limits))
    request = CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=10, prompt_bound=0)

    async def scenario() -> list[str]:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        outcomes = []
        try:
            await admit_request(quota, key, request, "req-1")
            other = replace(key, jti=f"{key.jti}-other")
            try:
                await admit_request(quota, other, request, "req-2")
                outcomes.append("admitted")
            except Refusal as refusal:
                outcomes.append(refusal.code.value)
            await GiveBack(quota).run(key.tenant.id, (key.jti,), "req-1", limits)
            await admit_request(quota, other, request, "req-3")  # the tenant's one slot a minute is back
            outcomes.append("admitted")
            return outcomes
        finally:
            await quota.client.aclose()

    assert asyncio.run(scenario()) == ["rate_limit_exceeded", "admitted"]


def test_a_child_keys_unserved_request_is_given_back_at_every_level(cfg: DynasealConfig, redis_server: str,
                                                                    sync_redis: redis.Redis) -> None:
    """A child key spends its use at its own level and its ancestors': the give-back returns every one."""
    from test_ledger_chains import child_of, path_of

    price = Price("USD", Decimal(1), Decimal(1), Decimal(2), Decimal(2))
    root = replace(verified_key(cfg, "gb-root"), uses=1, budget=1000, budget_cost=5_000_000)
    child = child_of(root, "gb-child", uses=1, rpm=1)
    request = CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=100, prompt_bound=0, price=price)

    async def scenario() -> bool:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        try:
            await admit_request(quota, child, request, "c-1")
            given = await GiveBack(quota).run(child.tenant.id, path_of(child), "c-1", None)
            await admit_request(quota, child, request, "c-2")  # one use at each level, back and spent again
            return given
        finally:
            await quota.client.aclose()

    assert asyncio.run(scenario())
    for key in (root, child):
        state = counters(sync_redis, key.tenant.id, key.jti, path_of(key))
        assert (state["uses"], state["reserved"]) == (1, 100), key.jti
        assert state["reserved_cost"] > 0
