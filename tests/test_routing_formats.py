"""Routes per format: each endpoint goes only to the upstreams of a route that speak its API, in the
route's order; a model none of whose upstreams speaks it is refused before admission; Envoy's routes and
the per-try credential header follow the format."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import OTHER_TENANT, TenantKeys, acme_key

from dynaseal.config import load_config
from dynaseal.envoy.upstream_clusters import PATHS_OF_FORMAT
from dynaseal.errors import Refusal
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision
from dynaseal.routing.routes import build_route_table
from dynaseal_launcher import envoy_config

KEY = {"kid": "k1", "alg": "HS256", "secret_env": "T_FORMATS_SECRET"}
CLAUDE = {"name": "claude", "base_url": "https://api.anthropic.com/v1", "api_key_env": "T_FMT_CLAUDE",
          "formats": ["messages"]}
OPENAI = {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "T_FMT_OPENAI",
          "formats": ["chat_completions", "responses", "embeddings"]}
LOCAL = {"name": "local", "base_url": "http://10.0.0.5:8080/v1"}  # formats unsaid: chat completions only


def config(tmp_path: Path, routes: list[dict[str, Any]], models: list[str],
           upstreams: list[dict[str, Any]] | None = None) -> Path:
    raw = {"gateway": {"upstreams": upstreams or [CLAUDE, OPENAI, LOCAL]},
           "tenants": [{"id": "t1", "keys": [KEY], "limits": {"models": models}, "upstream": {"routes": routes}},
                       {"id": "plain", "keys": [KEY], "limits": {"models": ["fast"]}}]}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FMT_CLAUDE", "sk-ant-claude")
    monkeypatch.setenv("T_FMT_OPENAI", "sk-openai")


ROUTES: list[dict[str, Any]] = [
    {"model": "mixed", "upstreams": ["local", {"upstream": "claude", "model": "claude-sonnet-4-5"},
                                     {"upstream": "openai", "model": "gpt-4o-mini"}]},
    {"model": "fast", "upstreams": [{"upstream": "openai", "model": "gpt-4o-mini"}]},
    {"model": "*", "upstreams": ["claude", "openai"]},
]


def test_each_format_goes_to_the_routes_upstreams_that_speak_it_in_order(tmp_path: Path) -> None:
    errors: list[str] = []
    table = build_route_table(load_config(config(tmp_path, ROUTES, ["mixed", "fast", "*"])), errors)
    assert errors == []
    chains = {fmt: table.for_request("t1", "mixed", fmt) for fmt in ("chat_completions", "responses", "messages",
                                                                      "embeddings")}
    assert {fmt: [h.upstream for h in r.hops] for fmt, r in chains.items() if r} == {
        "chat_completions": ["local", "openai"], "responses": ["openai"], "messages": ["claude"],
        "embeddings": ["openai"]}
    assert {fmt: r.chain for fmt, r in chains.items() if r} == {
        "chat_completions": "route-local-openai", "responses": "route-openai", "messages": "route-claude",
        "embeddings": "route-openai"}
    # Each hop keeps its physical name whatever the format.
    assert [h.physical_model for h in chains["chat_completions"].hops] == [None, "gpt-4o-mini"]  # type: ignore[union-attr]
    assert chains["messages"].hops[0].physical_model == "claude-sonnet-4-5"  # type: ignore[union-attr]
    # The `*` route too: an unlisted model's Messages go to claude, its Responses to openai.
    assert table.for_request("t1", "anything", "messages").chain == "route-claude"  # type: ignore[union-attr]
    assert table.for_request("t1", "anything", "responses").chain == "route-openai"  # type: ignore[union-attr]
    # A tenant without routes: the gateway's own upstream, every format.
    assert table.for_request("plain", "fast", "messages") is None


def test_a_format_no_upstream_of_the_route_speaks_is_refused_and_never_falls_to_the_star_route(
        tmp_path: Path) -> None:
    table = build_route_table(load_config(config(tmp_path, ROUTES, ["mixed", "fast", "*"])), [])
    with pytest.raises(Refusal) as refused:
        table.for_request("t1", "fast", "messages")  # `*` speaks messages; fast's own route does not
    assert (refused.value.code, refused.value.param) == ("model_not_found", "model")
    assert "model 'fast'" in refused.value.message and "Messages API (/v1/messages)" in refused.value.message
    # `*` = claude then openai: chat skips claude (it does not speak chat) and goes to openai alone.
    assert table.for_request("t1", "anything", "chat_completions").chain == "route-openai"  # type: ignore[union-attr]


def test_an_explicit_format_list_restricts_the_route(tmp_path: Path) -> None:
    routes = [{"model": "fast", "upstreams": ["openai"], "formats": ["chat_completions", "responses"]}]
    table = build_route_table(load_config(config(tmp_path, routes, ["fast"])), [])
    assert table.for_request("t1", "fast", "responses").chain == "route-openai"  # type: ignore[union-attr]
    with pytest.raises(Refusal) as refused:
        table.for_request("t1", "fast", "embeddings")
    assert "Embeddings API" in refused.value.message


def test_the_config_names_tenant_and_model_for_every_format_problem_at_once(tmp_path: Path) -> None:
    from dynaseal.config import ConfigError

    routes = [{"model": "fast", "upstreams": ["openai"], "formats": ["messages", "embedding"]},
              {"model": "claude-x", "upstreams": ["claude", "local"], "formats": ["messages"]}]
    upstreams: list[dict[str, Any]] = [
        CLAUDE, {**OPENAI, "formats": ["chat_completions", "responses", "embeddings", "completions"]}, LOCAL]
    with pytest.raises(ConfigError) as error:
        load_config(config(tmp_path, routes, ["fast", "claude-x"], upstreams))
    text = str(error.value)
    assert "tenant t1 model fast: its route lists an unknown format 'embedding'" in text
    assert "tenant t1 model fast: upstream 'openai' lists an unknown format 'completions'" in text
    assert "tenant t1 model claude-x: upstream 'local' does not speak messages (it speaks chat_completions)" in text


def decide(authorizer: Authorizer, path: str, headers: dict[str, str], body: dict[str, Any]) -> Decision:
    request = AuthRequest("POST", path, {"content-type": "application/json", **headers}, json.dumps(body).encode())
    return asyncio.run(authorizer.decide(request))


@pytest.fixture
def routed(authorizer: Authorizer, tmp_path: Path) -> Authorizer:
    """The test tenant (acme) routed: gpt-4o-mini to Claude's Messages and OpenAI's other APIs; gpt-4o to
    OpenAI only."""
    routes = [{"model": "gpt-4o-mini", "upstreams": [{"upstream": "claude", "model": "claude-haiku-4-5"},
                                                     "openai"]},
              {"model": "gpt-4o", "upstreams": ["openai"]}]
    raw = {"gateway": {"upstreams": [CLAUDE, OPENAI]},
           "tenants": [{"id": OTHER_TENANT, "keys": [KEY], "limits": {"models": ["gpt-4o-mini", "gpt-4o"]},
                        "upstream": {"routes": routes}}]}
    (tmp_path / "routed.yaml").write_text(yaml.safe_dump(raw))
    table = build_route_table(load_config(tmp_path / "routed.yaml"), [])
    return Authorizer(replace(authorizer.registry, routes=table))


MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def test_a_routed_messages_request_carries_its_credential_for_x_api_key(routed: Authorizer,
                                                                         test_keys: TenantKeys) -> None:
    token = acme_key(test_keys)
    decision = decide(routed, "/v1/messages", {"x-api-key": token, "anthropic-version": "2023-06-01"}, MESSAGES)
    assert decision.allowed, decision.message
    assert decision.headers["x-dynaseal-route"] == "route-claude"
    assert decision.metadata["up_auth.claude"] == "sk-ant-claude"  # the key alone: Envoy puts it in x-api-key
    assert decision.metadata["up_auth_header"] == "x-api-key"
    assert "up_auth.openai" not in decision.metadata  # openai does not speak messages: never tried
    assert str(decision.metadata["up_model.claude"]).split(" ", 2)[2] == '"claude-haiku-4-5"'
    # No credential of the gateway's own upstream, and the client's key never goes on.
    assert "x-api-key" not in decision.headers and "authorization" not in decision.headers
    assert "x-api-key" in decision.headers_to_remove and "anthropic-version" not in decision.headers_to_remove
    counted = decide(routed, "/v1/messages/count_tokens", {"x-api-key": token, "anthropic-version": "2023-06-01"},
                     {k: v for k, v in MESSAGES.items() if k != "max_tokens"})
    assert counted.allowed and counted.headers["x-dynaseal-route"] == "route-claude"

    responses = decide(routed, "/v1/responses", {"authorization": f"Bearer {token}"},
                       {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 20})
    assert responses.allowed and responses.headers["x-dynaseal-route"] == "route-openai"
    assert responses.metadata["up_auth.openai"] == "Bearer sk-openai" and "up_auth_header" not in responses.metadata
    assert "up_model.openai" not in responses.metadata and "authorization" not in responses.headers


def test_a_model_whose_upstreams_do_not_speak_the_api_is_refused_in_that_apis_shape(
        routed: Authorizer, test_keys: TenantKeys) -> None:
    token = acme_key(test_keys, models=["gpt-4o-mini", "gpt-4o"])
    refused = decide(routed, "/v1/messages", {"x-api-key": token}, {**MESSAGES, "model": "gpt-4o"})
    assert (refused.allowed, refused.status) == (False, 404)
    body = orjson.loads(refused.error_body())
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["error"]["code"] == "model_not_found"
    assert "model 'gpt-4o'" in body["error"]["message"] and "Messages API" in body["error"]["message"]
    chat = decide(routed, "/v1/chat/completions", {"authorization": f"Bearer {token}"},
                  {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert chat.allowed and chat.headers["x-dynaseal-route"] == "route-openai"


def test_the_refusal_comes_before_admission_and_spends_nothing(routed: Authorizer, test_keys: TenantKeys) -> None:
    admitted: list[str] = []

    class CountingQuota:
        def __getattr__(self, name: str) -> Any:
            admitted.append(name)
            raise AssertionError(f"the ledger was asked ({name}) for a request no upstream can serve")

    counting = Authorizer(routed.registry, quota=CountingQuota())
    token = acme_key(test_keys, models=["gpt-4o-mini", "gpt-4o"])
    refused = decide(counting, "/v1/messages", {"x-api-key": token}, {**MESSAGES, "model": "gpt-4o"})
    assert refused.status == 404 and admitted == []


def test_envoy_routes_each_format_to_its_chain_with_the_apis_path(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, ROUTES, ["mixed", "fast", "*"]))
    rendered = envoy_config.render(cfg, tmp_path / "access.log")
    out = tmp_path / "envoy.yaml"
    out.write_text(rendered)
    ok, output = envoy_config.validate(out)
    assert ok, output[-2000:]
    doc = yaml.safe_load(rendered)
    vhost = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]
    routed = {}
    for route in vhost["routes"]:
        chain = next((h["string_match"]["exact"] for h in route["match"].get("headers", [])
                      if h["name"] == "x-dynaseal-route"), None)
        if chain is not None:
            routed[(chain, route["match"]["safe_regex"]["regex"])] = route["route"]
    assert {(c, next(f for f, r in PATHS_OF_FORMAT.items() if r == regex)) for c, regex in routed} == {
        ("route-local-openai", "chat_completions"), ("route-openai", "chat_completions"),
        ("route-openai", "responses"), ("route-openai", "embeddings"), ("route-claude", "messages")}
    assert routed[("route-claude", PATHS_OF_FORMAT["messages"])]["cluster"] == "up_claude"
    assert routed[("route-local-openai", PATHS_OF_FORMAT["chat_completions"])]["retry_policy"]["num_retries"] == 1
    for (_, regex), route in routed.items():
        assert route["regex_rewrite"] == {"pattern": {"regex": regex}, "substitution": "\\1"}


@pytest.mark.parametrize(("path", "fmt", "upstream_path"), [
    ("/v1/chat/completions", "chat_completions", "/chat/completions"),
    ("/client-side/chat/completions", "chat_completions", "/chat/completions"),
    ("/api/v1/responses", "responses", "/responses"),
    ("/v1/messages", "messages", "/messages"),
    ("/api/v1/messages/count_tokens", "messages", "/messages/count_tokens"),
    ("/v1/embeddings", "embeddings", "/embeddings"),
])
def test_each_gateway_path_is_rewritten_to_the_apis_path(path: str, fmt: str, upstream_path: str) -> None:
    matches = {f for f, regex in PATHS_OF_FORMAT.items() if re.fullmatch(regex, path)}
    assert matches == {fmt}
    assert re.sub(PATHS_OF_FORMAT[fmt], r"\1", path) == upstream_path


@pytest.mark.parametrize("path", ["/v1/messages/", "/v1/messages/count_tokens/x", "/v2/responses",
                                  "/client-side/responses", "/v1/embeddings?x=1", "/v1/chat/completions/x"])
def test_other_paths_match_no_format(path: str) -> None:
    assert not [f for f, regex in PATHS_OF_FORMAT.items() if re.fullmatch(regex, path)]


def test_every_endpoint_authz_serves_has_its_formats_envoy_route() -> None:
    """The policy's paths and Envoy's routed regexes name the same formats (no drift between the two)."""
    from dynaseal.policy.endpoints import PATHS
    from dynaseal.upstreams import FORMATS

    assert set(PATHS_OF_FORMAT) == set(FORMATS)
    for path, endpoint in PATHS.items():
        assert endpoint.format in FORMATS
        assert [f for f, regex in PATHS_OF_FORMAT.items() if re.fullmatch(regex, path)] == [endpoint.format], path
