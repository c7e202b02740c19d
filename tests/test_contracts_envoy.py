"""What Envoy and the Python side exchange is defined once (dynaseal.contracts) and rendered into the config:
the Lua filters' control keys, the usage rules that fill the record's token fields, and every error code
Envoy, authz and the issuer answer with. Each test renders the real template, parses it and compares."""

from __future__ import annotations

import ast
import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from test_usage_record import KEY, config

from dynaseal.config import DynasealConfig
from dynaseal.contracts import usage_record
from dynaseal.contracts.error_registry import (
    REGISTRY,
    SPECS,
    EnvoyReply,
    ErrorCode,
    IssuerError,
    anthropic_type,
    openai_type,
    status_for,
)
from dynaseal.envoy.render import GATEWAY_TEMPLATE, render
from dynaseal.keys.mint import mint
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import deny
from issuer_api.errors import ApiError

ISSUER = Path(__file__).resolve().parent.parent / "issuer_api"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
DECLARATION = re.compile(r'^\s*local ([A-Z_]+) = "([^"]*)"$', re.MULTILINE)


def routed_config() -> DynasealConfig:
    """A tenant routed over two named upstreams: the per-try Lua filter is rendered too."""
    return DynasealConfig.model_validate({
        "gateway": {"upstreams": [{"name": "primary", "base_url": "https://api.openai.com/v1", "api_key_env": "T_P"},
                                  {"name": "backup", "base_url": "http://10.0.0.7:8080/v1", "api_key_env": "T_B"}]},
        "tenants": [{"id": "acme", "keys": [{"kid": KEY.kid, "alg": "EdDSA", "public_jwk": KEY.public_jwk()}],
                     "limits": {"models": ["fast"]},
                     "upstream": {"routes": [{"model": "fast", "upstreams": ["primary", "backup"]}]}}]})


def rendered(cfg: DynasealConfig, tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(render(cfg, tmp_path / "access.log"))
    return doc


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def lua_sources(doc: dict[str, Any]) -> list[str]:
    return sorted({str(d["default_source_code"]["inline_string"]) for d in walk(doc) if d.get("@type") == LUA_TYPE})


def http_filters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    manager = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


# ---------------------------------------------------------------- Lua control keys


def test_both_lua_filters_declare_the_records_control_keys_and_spell_none_by_hand(tmp_path: Path) -> None:
    sources = lua_sources(rendered(routed_config(), tmp_path))
    assert len(sources) == 2  # the gateway's filter and the per-try upstream filter
    for source in sources:
        declared = dict(DECLARATION.findall(source))
        keys = {name: value for name, value in declared.items() if name in usage_record.LUA_CONTROL_KEYS}
        assert keys and keys == {name: usage_record.LUA_CONTROL_KEYS[name] for name in keys}
        assert keys["AUTHZ"] == usage_record.AUTHZ_NAMESPACE
        body = DECLARATION.sub("", source)
        for name, value in usage_record.LUA_CONTROL_KEYS.items():
            # A key is used through its constant only: its value quoted anywhere else is a second definition.
            assert f'"{value}"' not in body and f"'{value}'" not in body, (name, value)
        for name in keys:  # and every declared key is used
            assert re.search(rf"\b{name}\b", body), name


def test_the_keys_authz_sets_for_envoy_are_read_by_the_gateways_lua(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_WEBHOOK", "whsec_" + base64.b64encode(b"k" * 32).decode())
    token = mint(KEY, tenant="acme", models=["gpt-4o-mini"], max_tokens=50, ttl=60)
    # A stream without a cap or stream_options: authz has Envoy add both and strip the usage chunk; the
    # tenant's callbacks include content, so the answer is captured too.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    request = AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {token}"}, orjson.dumps(body))
    cfg = DynasealConfig.model_validate({"tenants": [{
        "id": "acme", "keys": [{"kid": KEY.kid, "alg": "EdDSA", "public_jwk": KEY.public_jwk()}],
        "limits": {"models": ["gpt-4o-mini"]},
        "callback": {"url": "http://127.0.0.1:1/cb", "secret_env": "RT_WEBHOOK", "include_content": True}}]})
    registry = build_registry(cfg, fetch_new_jwks=False)
    decision = asyncio.run(Authorizer(registry, quota=None).decide(request))
    assert decision.allowed, decision
    for_envoy = set(decision.metadata) - usage_record.ALLOW_KEYS
    assert for_envoy == {usage_record.BODY_PREFIX, usage_record.STRIP_USAGE, usage_record.CAPTURE_CONTENT}
    gateway_lua = next(s for s in lua_sources(rendered(config(), tmp_path)) if "envoy_on_response" in s)
    declared = dict(DECLARATION.findall(gateway_lua))
    assert for_envoy <= set(declared.values()), for_envoy - set(declared.values())


def strings_of(path: Path) -> list[str]:
    """The string constants of a module, docstrings and other bare-expression strings left out."""
    tree = ast.parse(path.read_text())
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare]


def test_the_renderer_and_its_template_spell_no_shared_name_by_hand() -> None:
    names = (usage_record.REQUEST_ID_HEADER, usage_record.GIVE_BACK_PATH, usage_record.GIVE_BACK_HEADER,
             usage_record.TRY_HEADER, usage_record.ROUTE_HEADER, usage_record.GATEWAY_CLUSTER,
             usage_record.USAGE_NAMESPACE, usage_record.ROUTE_NAMESPACE, usage_record.CONTENT_NAMESPACE)
    template = [line for line in GATEWAY_TEMPLATE.read_text().splitlines() if not line.lstrip().startswith("#")]
    modules = sorted(GATEWAY_TEMPLATE.parent.parent.glob("*.py"))
    assert len(modules) >= 4
    for where, texts in [("template", template), *((p.name, strings_of(p)) for p in modules)]:
        spelled = [name for name in names for text in texts if name in text]
        assert not spelled, (where, spelled)


def test_the_lua_constants_render_as_lua_string_literals() -> None:
    for name, value in usage_record.LUA_CONTROL_KEYS.items():
        # Plain printable ASCII: no quote, backslash or newline could break out of the literal.
        assert re.fullmatch(r"[A-Za-z0-9_./:-]+", value), (name, value)
    assert usage_record.lua_constants(("AUTHZ",)) == f'local AUTHZ = "{usage_record.AUTHZ_NAMESPACE}"'


# ---------------------------------------------------------------- usage rules


Rule = tuple[tuple[str, ...], str, str]


def rules_of(doc: dict[str, Any]) -> tuple[list[Rule], list[Rule]]:
    """(sse rules, json rules) as (selectors, namespace, key)."""
    filters = {f["name"]: f["typed_config"] for f in http_filters(doc)}
    sse = filters["envoy.filters.http.sse_to_metadata"]["response_rules"]["content_parser"]["typed_config"]["rules"]
    json_rules = filters["envoy.filters.http.json_to_metadata"]["response_rules"]["rules"]

    def entry(rule: dict[str, Any]) -> Rule:
        present = rule["on_present"]
        assert present["type"] == "NUMBER"
        return tuple(s["key"] for s in rule["selectors"]), present["metadata_namespace"], present["key"]
    return [entry(r["rule"]) for r in sse], [entry(r) for r in json_rules]


def test_the_rendered_usage_rules_are_the_records(tmp_path: Path) -> None:
    sse, json_rules = rules_of(rendered(config(), tmp_path))
    expected = [(r.selectors, *usage_record.usage_target(r)) for r in usage_record.USAGE_RULES]
    assert sse == expected
    assert json_rules == [e for e, r in zip(expected, usage_record.USAGE_RULES, strict=True) if r.json]


def test_every_token_field_of_the_record_is_filled_by_a_rule_and_every_rule_fills_one(tmp_path: Path) -> None:
    sse, json_rules = rules_of(rendered(config(), tmp_path))
    usage_fields = {f.metadata for f in usage_record.FIELDS
                    if f.metadata is not None and f.metadata[0] == usage_record.USAGE_NAMESPACE}
    assert usage_fields == {(ns, key) for _, ns, key in sse} == {(ns, key) for _, ns, key in json_rules}


def test_a_rule_for_a_field_the_record_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no llm\.usage field"):
        usage_record.usage_target(usage_record.UsageRule(("usage", "secret_tokens"), "secret_tokens"))
    with pytest.raises(ValueError, match=r"no llm\.usage field"):  # a record field, but not a usage count
        usage_record.usage_target(usage_record.UsageRule(("usage", "model"), "model"))


# ---------------------------------------------------------------- one error registry


def test_the_registry_holds_exactly_the_codes_of_every_answerer() -> None:
    assert len(SPECS) == len(REGISTRY)  # one entry per code
    for enum, answerer in ((ErrorCode, "authz"), (EnvoyReply, "envoy"), (IssuerError, "issuer")):
        for member in enum:
            assert answerer in REGISTRY[member.value].by, (answerer, member)
    named = {m.value for m in ErrorCode} | {m.value for m in EnvoyReply} | {m.value for m in IssuerError}
    assert set(REGISTRY) == named | {s.code for s in SPECS if s.by == frozenset({"envoy"})}


def local_replies(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(filter, json body) of each local reply mapper with a body."""
    manager = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [(m["filter"], m["body_format_override"]["json_format"])
            for m in manager["local_reply_config"]["mappers"] if "body_format_override" in m]


def test_every_code_envoy_can_answer_is_in_the_registry_with_its_status_and_type(tmp_path: Path) -> None:
    doc = rendered(routed_config(), tmp_path)
    answered = set()
    for reply_filter, body in local_replies(doc):
        anthropic = body.get("type") == "error"
        error = body["error"]
        spec = REGISTRY[error["code"]]
        assert "envoy" in spec.by, spec
        (comparison,) = [d["comparison"] for d in walk(reply_filter) if "comparison" in d]
        status = int(comparison["value"]["default_value"])
        assert spec.status == status if comparison["op"] == "EQ" else spec.status >= status, (spec, comparison)
        assert error["type"] == (anthropic_type(spec.status) if anthropic else spec.type), (spec, error)
        if not anthropic:
            assert error["param"] is None and list(error) == ["message", "type", "code", "param"]
        answered.add(spec.code)
    # Every code the registry says Envoy answers, it does answer (the Lua filter's below).
    assert answered | {ErrorCode.INVALID_REQUEST.value} == {s.code for s in SPECS if "envoy" in s.by}
    # Any other error body anywhere in the config names a registry code too.
    assert {d["code"] for d in walk(doc) if "code" in d and "message" in d} <= set(REGISTRY)


def test_the_lua_filters_own_refusal_is_a_registry_code_with_its_status(tmp_path: Path) -> None:
    gateway_lua = next(s for s in lua_sources(rendered(config(), tmp_path)) if "envoy_on_response" in s)
    (body,) = re.findall(r"^\s*local NOT_AMENDABLE = '(.*)'$", gateway_lua, re.MULTILINE)
    error = orjson.loads(body)["error"]
    spec = REGISTRY[error["code"]]
    assert (error["type"], error["message"]) == (spec.type, spec.message)
    statuses = re.findall(r'handle:respond\(\{\[":status"\] = "(\d+)"', gateway_lua)
    assert statuses and {int(s) for s in statuses} == {spec.status}


def test_authz_answers_every_code_with_the_registrys_status_and_type() -> None:
    for code in ErrorCode:
        decision = deny(code, "refused")
        error = orjson.loads(decision.error_body())["error"]
        assert (decision.status, error["type"], error["code"]) == (REGISTRY[code].status, REGISTRY[code].type, code)


# Where each issuer constructor takes its status and code: (status, or the helper's fixed one; code index, keyword).
_HELPERS = {"invalid_request": (400, 2), "unauthenticated": (401, 1), "forbidden": (403, 1)}


def issuer_calls() -> Iterator[tuple[str, int, str]]:
    """(where, status, IssuerError member name) of every error the issuer's code raises with a literal status."""
    for path in sorted(ISSUER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            name = node.func.id
            code_arg: ast.expr | None
            if name == "ApiError" and len(node.args) > 1 and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, int):
                status, code_arg = node.args[0].value, node.args[1]
            elif name in _HELPERS:
                status, index = _HELPERS[name]
                code_arg = next((k.value for k in node.keywords if k.arg == "code"),
                                node.args[index] if len(node.args) > index else None)
            else:
                continue
            if isinstance(code_arg, ast.Attribute) and isinstance(code_arg.value, ast.Name) \
                    and code_arg.value.id == "IssuerError":
                yield f"{path.name}:{node.lineno}", status, code_arg.attr


def test_the_issuer_raises_every_code_with_the_registrys_status() -> None:
    calls = list(issuer_calls())
    assert len(calls) > 20  # the scan sees the issuer's errors
    wrong = [(where, status, member) for where, status, member in calls
             if member != "HTTP_ERROR" and status != status_for(IssuerError[member], "issuer")]
    assert not wrong, wrong


def test_the_issuers_body_type_is_the_registrys() -> None:
    for code in IssuerError:
        status = status_for(code, "issuer")
        assert ApiError(status, code, "m").body()["error"]["type"] == openai_type(code, status)
    # Shared with the gateway: the same type for the same code and status.
    for code in (IssuerError.INVALID_REQUEST, IssuerError.REQUEST_TOO_LARGE, IssuerError.MODEL_NOT_ALLOWED):
        assert ApiError(REGISTRY[code].status, code, "m").body()["error"]["type"] == REGISTRY[code].type
    # RFC 9449: the issuer (a token endpoint) answers a bad proof 400, the gateway (a resource) 401.
    assert (status_for(ErrorCode.INVALID_DPOP_PROOF, "issuer"), status_for(ErrorCode.INVALID_DPOP_PROOF)) == (400, 401)
    assert ApiError(400, IssuerError.INVALID_DPOP_PROOF, "m").body()["error"]["type"] == "invalid_request_error"
