"""The one usage-record definition: authz's allow metadata, the rendered access-log format and the
event parser agree, shown by a round trip decision → log line as Envoy writes it → UsageEvent."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from google.protobuf.json_format import MessageToDict

from authz_service.envoy_adapter import allow_response, deny_response
from dynaseal.config import DynasealConfig
from dynaseal.contracts import usage_record
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.pb import UsageEvent
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision
from dynaseal.usage import events as usage_events
from dynaseal.usage.events import parse_line
from dynaseal_launcher import envoy_config

# Metadata authz sets for Envoy's filters, not for the log (the Lua filters and the body prefix).
CONTROL_KEYS = {usage_record.BODY_PREFIX, usage_record.STRIP_USAGE, usage_record.CAPTURE_CONTENT}
KEY = SigningKey.generate("rt-1")


def config(include_content: bool = False) -> DynasealConfig:
    return DynasealConfig.model_validate({"tenants": [{
        "id": "acme", "keys": [{"kid": KEY.kid, "alg": "EdDSA", "public_jwk": KEY.public_jwk()}],
        "limits": {"models": ["gpt-4o-mini"]},
        "callback": {"url": "http://127.0.0.1:1/cb", "secret_env": "RT_WEBHOOK"} if include_content else None}]})


def decide(cfg: DynasealConfig, token: str, stream: bool = False) -> Decision:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    request = AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {token}"}, orjson.dumps(body))
    return asyncio.run(Authorizer(build_registry(cfg, fetch_new_jwks=False), quota=None).decide(request))


def access_log_format(cfg: DynasealConfig, tmp_path: Path) -> dict[str, str]:
    """The json_format of the rendered Envoy config."""
    doc = yaml.safe_load(envoy_config.render(cfg, tmp_path / "access.log"))
    manager = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return dict(manager["access_log"][0]["typed_config"]["log_format"]["json_format"])


def envoy_writes(fmt: dict[str, str], metadata: dict[str, dict[str, Any]], status: int = 200) -> bytes:
    """The log line Envoy writes: each value is its command operator's, typed; absent metadata is null."""
    simple = {"%REQ(:METHOD)%": "POST", "%REQ(:PATH)%": "/v1/chat/completions", "%RESPONSE_CODE%": status,
              "%RESPONSE_FLAGS%": "-", "%RESPONSE_CODE_DETAILS%": "via_upstream", "%DURATION%": 42,
              "%COMMON_DURATION(US_TX_END:US_RX_BEG:ms)%": 40, "%RESP(CONTENT-TYPE)%": "application/json",
              "%BYTES_SENT%": 512}
    line: dict[str, Any] = {}
    for name, operator in fmt.items():
        if operator.startswith("%START_TIME("):
            line[name] = "2026-12-01T08:00:00.000Z"
        elif match := re.fullmatch(r"%DYNAMIC_METADATA\(([^:]+):([^)]+)\)%", operator):
            line[name] = metadata.get(match.group(1), {}).get(match.group(2))
        elif operator.startswith("%CEL(") and "request_id" in operator:  # authz's id, else Envoy's own
            line[name] = metadata.get("envoy.filters.http.ext_authz", {}).get("request_id", "envoy-generated-id")
        else:
            assert operator in simple, f"the round trip does not know Envoy's {operator}"
            line[name] = simple[operator]
    return orjson.dumps(line)


def authz_namespace(decision: Decision) -> dict[str, Any]:
    """The ext_authz namespace as Envoy stores it from the CheckResponse (a Struct: numbers are doubles)."""
    response = allow_response(decision) if decision.allowed else deny_response(decision)
    return MessageToDict(response.dynamic_metadata)


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip_decision_to_log_line_to_usage_event(stream: bool, tmp_path: Path) -> None:
    cfg = config()
    token = mint(KEY, tenant="acme", models=["gpt-4o-mini"], max_tokens=50, ttl=60, sub="user-7",
                 cb={"order": 17}, event_id="ev-1")
    decision = decide(cfg, token, stream)
    assert decision.allowed, decision
    usage = {"prompt_tokens": 11.0, "completion_tokens": 7.0, "total_tokens": 18.0}
    line = envoy_writes(access_log_format(cfg, tmp_path), {usage_record.AUTHZ_NAMESPACE: authz_namespace(decision),
                                                            usage_record.USAGE_NAMESPACE: usage})
    event = parse_line(line, shipped_at_ms=1)
    assert event is not None
    meta = decision.metadata
    assert (event.request_id, event.tenant, event.jti, event.event_id, event.sub) == (
        decision.request_id, "acme", decision.jti, "ev-1", "user-7")
    assert (event.model, event.stream, event.reserved) == ("gpt-4o-mini", stream, meta["reserved"])
    assert orjson.loads(event.cb_json) == {"order": 17}
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens, event.usage_source) == (
        11, 7, 18, "upstream")
    assert (event.status, event.duration_ms, event.path, event.response_flags, event.started_at) == (
        200, 42, "/v1/chat/completions", "-", "2026-12-01T08:00:00.000Z")


def test_a_refusal_logs_no_usage_event(tmp_path: Path) -> None:
    cfg = config()
    decision = decide(cfg, mint(KEY, tenant="acme", models=["other-model"], max_tokens=50, ttl=60))
    assert not decision.allowed
    line = envoy_writes(access_log_format(cfg, tmp_path), {usage_record.AUTHZ_NAMESPACE: authz_namespace(decision)},
                        status=decision.status)
    assert orjson.loads(line)["deny_code"] == decision.code
    assert parse_line(line) is None


def test_the_rendered_format_is_exactly_the_definition(tmp_path: Path) -> None:
    fmt = access_log_format(config(), tmp_path)
    assert list(fmt) == [f.name for f in usage_record.FIELDS]
    assert fmt == {f.name: f.operator for f in usage_record.FIELDS}


def test_authz_sets_exactly_the_defined_keys() -> None:
    token = mint(KEY, tenant="acme", models=["gpt-4o-mini"], max_tokens=50, ttl=60, sub="s", cb={"a": 1})
    logged = set(decide(config(), token).metadata) - CONTROL_KEYS
    # Every required key, the optional ones this key has (sub, cb; unpriced model: no price), nothing else.
    assert usage_record.REQUIRED_ALLOW_KEYS | {"sub", "cb"} <= logged <= usage_record.ALLOW_KEYS
    with pytest.raises(ValueError, match="unknown"):
        usage_record.authz_metadata(**dict.fromkeys(usage_record.REQUIRED_ALLOW_KEYS, "x"), surprise="x")
    with pytest.raises(ValueError, match="missing"):
        usage_record.authz_metadata(tenant="acme")


def test_the_parser_reads_only_defined_fields_and_fills_every_event_field() -> None:
    read = set()
    for node in ast.walk(ast.parse(Path(usage_events.__file__).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "record" \
                and isinstance(node.args[0], ast.Constant):
            read.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "record" \
                and isinstance(node.slice, ast.Constant):
            read.add(node.slice.value)
    assert read and read <= set(usage_record.BY_NAME), read - set(usage_record.BY_NAME)
    fed = {f.event for f in usage_record.FIELDS if f.event}
    # decided by the parser's rules (usage, money), not read from one field
    derived = {"usage_source", "shipped_at_ms", "cost", "currency", "cost_micros", "unpriced"}
    assert fed | derived == set(UsageEvent.DESCRIPTOR.fields_by_name)
